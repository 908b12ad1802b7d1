"""Selective-scan timings on a CUDA device: per-step loop vs chunked scan vs mamba-ssm's fused kernel.

    python benchmarks/bench_mamba_gpu.py      # on the GPU image; the kernel row needs mamba-ssm

Same inputs for every implementation (batch 256, length 200, d_inner 128, d_state 16); prints seconds
and speed-ups against the per-step loop measured in the same run, and the max abs difference.
"""

import time

import torch

from ple_platform.core.features import mamba as M


def _time(fn, reps=5):
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(b=256, L=200, d=128, n=16):
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device="cuda").manual_seed(0)
    dev = "cuda"
    u = torch.randn(b, L, d, device=dev, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(b, L, d, device=dev, generator=g) - 1)
    A = -torch.exp(torch.randn(d, n, device=dev, generator=g) * 0.5)
    B = torch.randn(b, L, n, device=dev, generator=g)
    C = torch.randn(b, L, n, device=dev, generator=g)
    D = torch.randn(d, device=dev, generator=g)
    t_ref, y_ref = _time(lambda: M.selective_scan_ref(u, delta, A, B, C, D))
    rows = [("per-step loop (reference)", t_ref, 0.0)]
    t_chk, y_chk = _time(lambda: M.selective_scan_chunked(u, delta, A, B, C, D))
    rows.append(("chunked log-space scan", t_chk, float((y_chk - y_ref).abs().max())))
    if M.mamba_ssm_available():
        t_k, y_k = _time(lambda: M.selective_scan_cuda(u, delta, A, B, C, D))
        rows.append(("mamba-ssm fused kernel", t_k, float((y_k - y_ref).abs().max())))
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, B={b} L={L} d_inner={d} d_state={n}")
    print("| scan | seconds | speed-up vs loop | max abs diff vs loop |\n|---|---:|---:|---:|")
    for name, t, err in rows:
        print(f"| {name} | {t:.5f} | {t_ref / t:.1f}x | {err:.2e} |")


if __name__ == "__main__":
    main()

"""Benchmark the Mamba temporal encoder (feature group 8) on CPU.

1. Selective scan, d_model 64 (d_inner 128), d_state 16, length 200: the sequential per-step loop
   (``selective_scan_ref``) vs the chunked scan (``selective_scan_chunked``) on identical inputs, outputs
   asserted equal. Batch 256 is the production shape; batches 16 and 1 show where the per-step Python
   loop's overhead dominates; forward+backward at batch 64 is the training shape.
2. ``encode`` throughput for 10k customers (full 200-event histories and mixed lengths).
3. ``fit_mamba_encoder`` cost per customer-epoch.

Prints a markdown table. Usage:
    .venv/bin/python benchmarks/bench_mamba_scan.py [--threads 1] [--customers 10000]
On a shared machine pass ``--threads 1``: OpenMP threads waiting on descheduled siblings distort timings.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ple_platform.core.features import mamba as M

L, D_MODEL, D_STATE = 200, 64, 16
D_INNER = 2 * D_MODEL


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _scan_inputs(batch: int, seed: int = 0, grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, L, D_INNER, generator=g)
    # Δ in Mamba's initial range (softplus of ~N(-4, 1): 0.005-0.1), A = S4D-real, as in a fresh block.
    delta = torch.nn.functional.softplus(torch.randn(batch, L, D_INNER, generator=g) - 4.0)
    A = -torch.arange(1, D_STATE + 1, dtype=torch.float32).repeat(D_INNER, 1)
    B = torch.randn(batch, L, D_STATE, generator=g)
    C = torch.randn(batch, L, D_STATE, generator=g)
    D = torch.ones(D_INNER)
    xs = [u, delta, A, B, C, D]
    return [x.requires_grad_(True) for x in xs] if grad else xs


def bench_scan_forward(batch: int, repeats: int) -> dict:
    xs = _scan_inputs(batch)
    with torch.no_grad():
        t_ref, y_ref = _best(lambda: M.selective_scan_ref(*xs), repeats)
        t_chk, y_chk = _best(lambda: M.selective_scan_chunked(*xs), repeats)
    err = float((y_ref - y_chk).abs().max())
    assert torch.allclose(y_ref, y_chk, atol=1e-5 * float(y_ref.abs().max()), rtol=0), err
    return {"case": f"scan forward, batch {batch}", "ref": t_ref, "chunked": t_chk, "err": err}


def bench_scan_train(batch: int, repeats: int) -> dict:
    def run(fn):
        xs = _scan_inputs(batch, grad=True)
        (fn(*xs) ** 2).mean().backward()
        return torch.cat([x.grad.flatten() for x in xs])

    t_ref, g_ref = _best(lambda: run(M.selective_scan_ref), repeats)
    t_chk, g_chk = _best(lambda: run(M.selective_scan_chunked), repeats)
    err = float((g_ref - g_chk).abs().max())
    assert torch.allclose(g_ref, g_chk, atol=1e-4 * float(g_ref.abs().max()), rtol=0), err
    return {"case": f"scan forward+backward, batch {batch}", "ref": t_ref, "chunked": t_chk, "err": err}


def _sequences(n: int, lengths: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.full((n, L, 4), -1.0, dtype=np.float32)
    pos = np.arange(L)[None, :]
    real = pos < lengths[:, None]
    out[..., 0] = np.where(real, rng.gamma(2.0, 40.0, (n, L)), -1)
    out[..., 1] = np.where(real, rng.integers(0, 106, (n, L)), -1)
    out[..., 2] = np.where(real, np.sort(rng.uniform(0, 365, (n, L)), axis=1), -1)
    out[..., 3] = np.where(real, rng.integers(0, 24, (n, L)), -1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--customers", type=int, default=10_000)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"L={L}, d_model={D_MODEL} (d_inner {D_INNER}), d_state={D_STATE}\n"
    )

    rows = [
        bench_scan_forward(256, 2),
        bench_scan_forward(16, 3),
        bench_scan_forward(1, 5),
        bench_scan_train(64, 1),
    ]

    torch.manual_seed(0)
    enc = M.MambaEncoder(106, D_MODEL, D_STATE).eval()
    # Encoder-level comparison on 1024 full-length customers, then encode() throughput (auto scan choice).
    sub = _sequences(1024, np.full(1024, L))
    t_ref, z_ref = _best(lambda: M.encode(enc, sub, batch_size=512, scan_impl="ref"), 1)
    t_chk, z_chk = _best(lambda: M.encode(enc, sub, batch_size=512, scan_impl="chunked"), 1)
    err = float(np.abs(z_ref - z_chk).max())
    rows.append({"case": "encode 1,024 customers x 200 events", "ref": t_ref, "chunked": t_chk, "err": err})
    enc.set_scan("auto")

    n = args.customers
    full = _sequences(n, np.full(n, L), seed=1)
    t_full, z = _best(lambda: M.encode(enc, full, batch_size=512), 1)
    assert z.shape == (n, 50) and np.isfinite(z).all()
    mixed_len = np.random.default_rng(2).integers(0, L + 1, n)
    mixed = _sequences(n, mixed_len, seed=2)
    t_mixed, _ = _best(lambda: M.encode(enc, mixed, batch_size=512), 1)

    fit_n = 512
    t0 = time.perf_counter()
    _, metrics = M.fit_mamba_encoder(_sequences(fit_n, np.full(fit_n, L), seed=3), seed=0, epochs=1, batch_size=256, max_customers=None)
    t_fit = time.perf_counter() - t0

    print("| case | reference loop (s) | chunked (s) | loop / chunked | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['ref']:.3f} | {r['chunked']:.3f} | {r['ref'] / r['chunked']:.2f}x | {r['err']:.1e} |")
    print()
    print("| encode / fit (default scan choice) | seconds | per 1k customers (s) |")
    print("|---|---:|---:|")
    print(f"| encode {n:,} customers x 200 events | {t_full:.1f} | {1000 * t_full / n:.2f} |")
    print(f"| encode {n:,} customers, lengths uniform 0-200 (mean {mixed_len.mean():.0f}) | {t_mixed:.1f} | {1000 * t_mixed / n:.2f} |")
    print(f"| fit: 1 epoch, {fit_n} customers x 200 events, batch 256 | {t_fit:.1f} | {1000 * t_fit / fit_n:.2f} per epoch |")
    print(f"\nfit loss (1 epoch): {metrics['loss_history']}")


if __name__ == "__main__":
    main()

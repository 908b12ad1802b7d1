"""Feature group 8 ``mamba_temporal``: a self-supervised Mamba-1 encoder over each customer's last 200
transactions (SPEC §4 row 8).

Input is the ``txn_lag_tensor`` layout: float (N, L, 4) with channels (amount, mcc_index, daygap, hour),
most recent first, padded at the end with -1 in every channel. The encoder flips it to chronological order,
so padding sits on the left and the last position is the newest transaction, and masks padded steps so
they cannot touch the state: their conv input is zero (exactly what the causal conv's own zero padding
feeds) and their step size Δ is zero (exp(0·A) = 1 keeps the state, Δ·B·x = 0 adds nothing).

The selective scan has three interchangeable implementations on the same weights:

* ``selective_scan_ref`` — the plain sequential recurrence, one Python step per time step (the reference);
* ``selective_scan_chunked`` — chunks of time steps computed at once from cumulative sums of the log
  decay, state carried across chunks; numerically equal to the reference;
* ``mamba_ssm``'s fused CUDA kernel, used when the tensors are on a GPU and ``mamba_ssm`` imports
  (it is an optional GPU extra and is only ever imported lazily).

The self-supervised objective uses no task labels: from the causal state, predict the MCC code, MCC L1
class and log-amount of (a) the next transaction and (b) randomly masked transactions, and from the
50-d customer embedding the L1 mix and mean log-amount of the masked transactions (cross-entropy + Huber).

No Dagster here: this module is pure torch/numpy and is called by ``features.build``.
"""

from __future__ import annotations

import json
import math
import struct
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ple_platform.core.features.spec import MAMBA_DIM

CONFIG_VERSION = 1
N_NUMERIC = 5  # signed log amount, log daygap, sin hour, cos hour, log inter-event gap
LOG_SCALE = 5.0  # log1p values of amounts/day gaps are O(5-10); dividing keeps the token projection well conditioned
# Largest within-chunk log-decay the chunked scan lets exp(+-S) reach: e^50 ~ 5e21 stays far from the
# float32 limit (~e^88) even after summing a chunk of terms, and from the float32 denormal range in e^-50.
MAX_LOG_RANGE = {torch.float16: 8.0, torch.bfloat16: 40.0, torch.float32: 50.0, torch.float64: 500.0}


# ---------------------------------------------------------------------------------------------------------
# Selective scan.  Layout everywhere in this module: u, delta (B, L, D); A (D, N); B, C (B, L, N); D (D,).
#   h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t       (elementwise over (D, N))
#   y_t = <C_t, h_t>_N + D * u_t
# ---------------------------------------------------------------------------------------------------------


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    return_last_state: bool = False,
):
    """Reference selective scan: the recurrence written literally, one step per time step."""
    batch, length, d_inner = u.shape
    h = u.new_zeros(batch, d_inner, A.shape[1]) if h0 is None else h0
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * A)
        h = decay * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(batch, 0, d_inner)
    if D is not None:
        y = y + u * D
    return (y, h) if return_last_state else y


def _chunk_bounds(step_bound: list[float], chunk_size: int, max_log_range: float) -> list[tuple[int, int]]:
    """Split [0, L) into chunks of at most ``chunk_size`` steps whose log decay after the first step stays
    within ``max_log_range`` (``step_bound[t]`` bounds |delta_t * A| over batch, channels and states).

    Chunks are fixed-size in the usual regime; only very large step sizes shorten them, so exp(+-S) can
    never overflow whatever Δ the model learns. A single-step chunk is always safe (its S is 0).
    """
    bounds, i, length = [], 0, len(step_bound)
    while i < length:
        j, acc = i + 1, 0.0
        while j < length and j - i < chunk_size and acc + step_bound[j] <= max_log_range:
            acc += step_bound[j]
            j += 1
        bounds.append((i, j))
        i = j
    return bounds


@lru_cache(maxsize=64)
def _tril_ones(t: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.ones(t, t, dtype=dtype, device=device).tril_()


def _scan_chunk(h, dl, du, Bc, Cc, A):
    """One chunk: h (B, D, N) entering state; dl, du (B, T, D); Bc, Cc (B, T, N). Returns (y, states)."""
    # S'_t = A * sum_{r=i+1..t} delta_r: log decay from just after the chunk's first step to step t (<= 0).
    # Anchoring after the first step (not before it) keeps single-step chunks exact for any delta.
    sp = (torch.cumsum(dl, dim=1) - dl[:, :1]).unsqueeze(-1) * A
    # h_t = exp(S'_t) * (exp(delta_i A) h_in + sum_{s<=t} exp(-S'_s) delta_s B_s u_s); exp(-S'_s) <= e^range.
    inp = (du.unsqueeze(-1) * Bc.unsqueeze(2)) * torch.exp(-sp)
    # Prefix sum over the chunk as one batched GEMM with a lower-triangular ones matrix: on CPU torch.cumsum
    # over a non-innermost dim (and its flip-cumsum-flip backward) ran ~4x slower than this.
    b, t, d, n = inp.shape
    acc = torch.matmul(_tril_ones(t, inp.dtype, inp.device), inp.reshape(b, t, d * n)).view(b, t, d, n)
    acc = acc + (torch.exp(dl[:, :1].unsqueeze(-1) * A) * h.unsqueeze(1))
    states = acc * torch.exp(sp)
    y = torch.matmul(states, Cc.unsqueeze(-1)).squeeze(-1)
    return y, states[:, -1]


class _RecomputedChunk(torch.autograd.Function):
    """A chunk that keeps only its inputs for backward and recomputes its (B, T, D, N) intermediates there.

    (Hand-rolled rather than torch.utils.checkpoint, whose first call imports torch._dynamo: seconds of
    start-up in every process that trains.)
    """

    @staticmethod
    def forward(ctx, h, dl, du, Bc, Cc, A):
        ctx.save_for_backward(h, dl, du, Bc, Cc, A)
        return _scan_chunk(h, dl, du, Bc, Cc, A)

    @staticmethod
    def backward(ctx, grad_y, grad_h):
        inputs = [t.detach().requires_grad_(True) for t in ctx.saved_tensors]
        with torch.enable_grad():
            y, h_out = _scan_chunk(*inputs)
            # Scalar surrogate with the same input gradients: torch.autograd.grad with explicit grad_outputs
            # imports torch.fx's symbolic-shapes machinery on first use (seconds).
            surrogate = (y * grad_y).sum() + (h_out * grad_h).sum()
        return torch.autograd.grad(surrogate, inputs, allow_unused=True)


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    return_last_state: bool = False,
    chunk_size: int | None = None,
    max_log_range: float | None = None,
    checkpoint_chunks: bool = True,
    block_elems: int | None = None,
):
    """Chunked selective scan, equal to ``selective_scan_ref`` up to float rounding.

    Within a chunk every step is computed at once from the cumulative sum of the log decay; the state is
    carried from chunk to chunk. Under autograd each chunk is recomputed in the backward pass
    (``checkpoint_chunks``), so training memory is one chunk's (B, T, D, N) intermediates, not the
    whole sequence's.

    On CPU one chunk's (b, T, D, N) intermediates are kept near ``block_elems`` (default 2^19 elements,
    2 MiB float32): small batches get long chunks (few Python steps), large batches are split into row
    blocks with 16-step chunks, because large fresh tensors cost page faults and DRAM traffic that made
    the unsplit scan several times slower than the sequential loop. ``chunk_size=None`` picks this;
    an explicit ``chunk_size`` caps the chunk length. Chunks are also shortened where needed so the
    within-chunk log decay stays inside ``max_log_range`` (see ``_chunk_bounds``).
    """
    batch, length, d_inner = u.shape
    d_state = A.shape[1]
    if max_log_range is None:
        max_log_range = MAX_LOG_RANGE.get(u.dtype, 50.0)
    if block_elems is None:
        block_elems = 1 << 19 if u.device.type == "cpu" else 1 << 62
    per_step = d_inner * d_state
    if chunk_size is None:
        chunk_size = max(16, min(length, 256, block_elems // max(1, batch * per_step)))
    chunk_size = max(1, chunk_size)
    rows = max(1, block_elems // (min(chunk_size, max(length, 1)) * per_step))
    recompute = checkpoint_chunks and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, h0)
    )
    du = delta * u
    a_max = A.detach().abs().amax(dim=1)
    # torch.split (not slicing) so that backward concatenates the pieces' gradients once, instead of
    # zero-filling a full-size gradient per slice (that made training ~5x slower).
    h0_blocks = torch.split(h0, rows) if h0 is not None else [None] * math.ceil(batch / rows)
    ys, hs = [], []
    blocks = zip(*(torch.split(t, rows) for t in (delta, du, B, C)), h0_blocks)
    for d_b, du_b, B_b, C_b, h in blocks:
        if h is None:
            h = u.new_zeros(d_b.shape[0], d_inner, d_state)
        with torch.no_grad():  # chunk boundaries from a bound on |delta * A| per step (see _chunk_bounds)
            step_bound = (d_b.detach().abs() * a_max).amax(dim=(0, 2)) if length else delta.new_zeros(0)
        sizes = [j - i for i, j in _chunk_bounds(step_bound.double().tolist(), chunk_size, max_log_range)]
        y_block = []
        for dl, duc, Bc, Cc in zip(*(torch.split(t, sizes, dim=1) for t in (d_b, du_b, B_b, C_b))):
            y, h = _RecomputedChunk.apply(h, dl, duc, Bc, Cc, A) if recompute else _scan_chunk(h, dl, duc, Bc, Cc, A)
            y_block.append(y)
        ys.append(torch.cat(y_block, dim=1) if y_block else u.new_zeros(h.shape[0], 0, d_inner))
        hs.append(h)
    y = torch.cat(ys, dim=0) if ys else u.new_zeros(0, length, d_inner)
    h = torch.cat(hs, dim=0) if hs else u.new_zeros(0, d_inner, d_state)
    if D is not None:
        y = y + u * D
    return (y, h) if return_last_state else y


@lru_cache(maxsize=1)
def _mamba_ssm_scan_fn():
    """``mamba_ssm``'s selective_scan_fn, or None; imported lazily because the package only exists on GPU images."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or OSError/RuntimeError from a broken CUDA extension
        return None
    return selective_scan_fn


def mamba_ssm_available() -> bool:
    """True when CUDA is usable and ``mamba_ssm``'s fused selective-scan kernel imports."""
    return torch.cuda.is_available() and _mamba_ssm_scan_fn() is not None


def selective_scan_cuda(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    return_last_state: bool = False,
):
    """``mamba_ssm``'s fused CUDA kernel in this module's (B, L, ·) layout (it wants (B, ·, L)).

    delta is passed already soft-plussed and masked, with ``delta_softplus=False``, so the kernel computes
    exactly the recurrence of ``selective_scan_ref``.
    """
    fn = _mamba_ssm_scan_fn()
    if fn is None or not u.is_cuda:
        raise RuntimeError("selective_scan_cuda needs CUDA tensors and an importable mamba_ssm")
    out = fn(
        u.transpose(1, 2).contiguous(),
        delta.transpose(1, 2).contiguous(),
        A.contiguous().float(),
        B.transpose(1, 2).contiguous(),
        C.transpose(1, 2).contiguous(),
        D=None if D is None else D.contiguous().float(),
        z=None,
        delta_bias=None,
        delta_softplus=False,
        return_last_state=return_last_state,
    )
    if return_last_state:
        y, last = out
        return y.transpose(1, 2), last
    return out.transpose(1, 2)


SCAN_IMPLS = ("auto", "ref", "chunked", "cuda")


def selective_scan(u, delta, A, B, C, D=None, impl: str = "auto", chunk_size: int | None = None):
    """Run one of the (numerically equal) scans; ``auto`` picks the fastest that fits:

    * CUDA tensors: mamba_ssm's fused kernel when it imports, else the chunked scan (a handful of large
      kernels instead of ~1000 tiny ones for the step loop);
    * CPU under autograd: the chunked scan, whose chunks are recomputed in backward (the step loop would
      keep every step's (B, D, N) state: GBs at batch 256);
    * CPU inference: the step loop. Both scans are memory-bound with the same O(B·L·D·N) elementwise
      work on CPU; the loop touches one cache-resident (B, D, N) state per step and measured faster at
      production batch sizes (see benchmarks/bench_mamba_scan.py).
    """
    if impl == "auto":
        if u.is_cuda:
            impl = "cuda" if mamba_ssm_available() else "chunked"
        else:
            needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, delta, A, B, C, D))
            impl = "chunked" if needs_grad else "ref"
    if impl == "cuda":
        return selective_scan_cuda(u, delta, A, B, C, D)
    if impl == "chunked":
        return selective_scan_chunked(u, delta, A, B, C, D, chunk_size=chunk_size)
    if impl == "ref":
        return selective_scan_ref(u, delta, A, B, C, D)
    raise ValueError(f"unknown scan impl {impl!r}; expected one of {SCAN_IMPLS}")


# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MambaConfig:
    n_mcc: int
    d_model: int = 64
    d_state: int = 16
    n_layers: int = 2
    out_dim: int = MAMBA_DIM
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0 = ceil(d_model / 16), as in Mamba
    version: int = CONFIG_VERSION

    def __post_init__(self):
        if self.dt_rank == 0:
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "MambaConfig":
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__ if k in d})


class MambaBlock(nn.Module):
    """Mamba-1 mixer: in-proj -> depthwise causal conv -> SiLU -> selective SSM (input-dependent Δ, B, C;
    D skip) -> SiLU(z) gate -> out-proj. Initialisation follows Gu & Dao (S4D-real A, log-uniform Δ)."""

    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int, dt_rank: int,
                 dt_min: float = 1e-3, dt_max: float = 0.1):
        super().__init__()
        d_inner = expand * d_model
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        nn.init.uniform_(self.dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.scan_impl = "auto"
        self.chunk_size: int | None = None  # None = chosen by selective_scan_chunked

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, d_model), mask (B, L) bool, True at real events; returns (B, L, d_model)."""
        length = x.shape[1]
        xi, z = self.in_proj(x).chunk(2, dim=-1)
        m = mask.unsqueeze(-1).to(x.dtype)
        # Zero input at padded steps == the conv's own causal zero padding, so real steps see the same window.
        xi = self.conv1d((xi * m).transpose(1, 2))[..., :length].transpose(1, 2)
        xi = F.silu(xi)
        dt, Bm, Cm = self.x_proj(xi).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # Δ = 0 at padded steps: exp(0·A) = 1 keeps the state and Δ·B·x = 0 adds nothing.
        delta = F.softplus(self.dt_proj(dt)) * m
        A = -torch.exp(self.A_log.float())
        y = selective_scan(xi, delta, A, Bm, Cm, self.D, impl=self.scan_impl, chunk_size=self.chunk_size)
        return self.out_proj(y * F.silu(z))


@dataclass
class Tokens:
    """A batch in chronological order (padding on the left), trimmed of columns that are padding for all rows."""

    numeric: torch.Tensor  # (B, L, N_NUMERIC), zero at padding
    mcc: torch.Tensor  # (B, L) long embedding row: code, n_mcc = unknown code, n_mcc + 1 = [MASK]
    mask: torch.Tensor  # (B, L) bool, True at real events
    code: torch.Tensor  # (B, L) long MCC code index, -1 at padding / unknown code (SSL targets)
    log_amount: torch.Tensor  # (B, L) signed log1p amount (SSL target)


def tokenize(seqs: torch.Tensor, n_mcc: int, trim: bool = True) -> Tokens:
    """(B, L, 4) most-recent-first, trailing -1 padding -> chronological ``Tokens``.

    A step is padding when both mcc and hour are -1: a real transaction always has an hour 0..23, while
    its mcc index can be -1 when the code is outside the hierarchy (it gets the "unknown code" row).
    """
    x = torch.flip(seqs, dims=[1])  # chronological; trailing padding becomes left padding
    if trim and x.shape[1] > 1:
        # Steps that are padding for every row cannot change anything (see module docstring): drop them.
        real_any = ~((x[..., 1] < 0) & (x[..., 3] < 0))
        cols = real_any.any(dim=0)
        first = int(cols.to(torch.int8).argmax()) if bool(cols.any()) else x.shape[1] - 1
        x = x[:, first:]
    amount, mcc, daygap, hour = x.unbind(-1)
    mask = ~((mcc < 0) & (hour < 0))
    m = mask.to(x.dtype)
    log_amount = torch.sign(amount) * torch.log1p(amount.abs())
    daygap = daygap.clamp(min=0.0)
    # Inter-event gap in days; 0 for a customer's first event (its predecessor is padding).
    gap = torch.zeros_like(daygap)
    gap[:, 1:] = ((daygap[:, :-1] - daygap[:, 1:]).clamp(min=0.0)) * (mask[:, :-1] & mask[:, 1:])
    angle = hour.clamp(min=0.0) * (2 * math.pi / 24)
    numeric = torch.stack(
        [
            log_amount / LOG_SCALE,
            torch.log1p(daygap) / LOG_SCALE,
            torch.sin(angle),
            torch.cos(angle),
            torch.log1p(gap) / LOG_SCALE,
        ],
        dim=-1,
    ) * m.unsqueeze(-1)
    known = mask & (mcc >= 0) & (mcc < n_mcc)
    code = torch.where(known, mcc, torch.full_like(mcc, -1)).long()
    row = torch.where(known, code, torch.full_like(code, n_mcc))
    return Tokens(numeric, row, mask, code, log_amount * m)


class MambaEncoder(nn.Module):
    """Transaction tokens -> N x (residual + RMSNorm + Mamba block) -> [masked mean-pool, newest state] -> Linear.

    ``forward`` takes the raw (B, L, 4) most-recent-first tensor and returns (B, out_dim). A customer with
    no transactions gets ``head.bias`` (both pooled parts are zero).
    """

    def __init__(self, n_mcc: int, d_model: int = 64, d_state: int = 16, n_layers: int = 2, out_dim: int = MAMBA_DIM,
                 d_conv: int = 4, expand: int = 2, dt_rank: int = 0):
        super().__init__()
        self.config = MambaConfig(n_mcc, d_model, d_state, n_layers, out_dim, d_conv, expand, dt_rank)
        self.n_mcc = n_mcc
        self.mcc_emb = nn.Embedding(n_mcc + 2, d_model)  # + unknown code + [MASK]
        nn.init.normal_(self.mcc_emb.weight, std=0.1)
        self.num_proj = nn.Linear(N_NUMERIC, d_model)
        self.norms = nn.ModuleList(nn.RMSNorm(d_model, eps=1e-5) for _ in range(n_layers))
        self.layers = nn.ModuleList(
            MambaBlock(d_model, d_state, d_conv, expand, self.config.dt_rank) for _ in range(n_layers)
        )
        self.norm_f = nn.RMSNorm(d_model, eps=1e-5)
        self.head = nn.Linear(2 * d_model, out_dim)

    @property
    def mask_row(self) -> int:
        return self.n_mcc + 1

    def set_scan(self, impl: str = "auto", chunk_size: int | None = None) -> "MambaEncoder":
        if impl not in SCAN_IMPLS:
            raise ValueError(f"unknown scan impl {impl!r}; expected one of {SCAN_IMPLS}")
        for layer in self.layers:
            layer.scan_impl = impl
            if chunk_size is not None:
                layer.chunk_size = chunk_size
        return self

    def hidden(self, tok: Tokens) -> torch.Tensor:
        """Causal per-step states (B, L, d_model) after the final norm; zero at padding."""
        m = tok.mask.unsqueeze(-1).to(tok.numeric.dtype)
        x = (self.num_proj(tok.numeric) + self.mcc_emb(tok.mcc)) * m
        for norm, layer in zip(self.norms, self.layers):
            x = (x + layer(norm(x), tok.mask)) * m  # keep padded steps exactly zero in the residual stream
        return self.norm_f(x) * m

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(h.dtype)
        mean = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return self.head(torch.cat([mean, h[:, -1]], dim=-1))  # last position = newest transaction

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        tok = tokenize(seqs, self.n_mcc)
        return self.pool(self.hidden(tok), tok.mask)


# ---------------------------------------------------------------------------------------------------------
# Config / persistence
# ---------------------------------------------------------------------------------------------------------


def config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Recover the architecture from tensor shapes, so a bare state dict (e.g. arrays from a fit store) loads."""
    n_layers = sum(1 for k in state_dict if k.startswith("layers.") and k.endswith(".A_log"))
    d_inner, d_state = state_dict["layers.0.A_log"].shape
    d_model = state_dict["mcc_emb.weight"].shape[1]
    return MambaConfig(
        n_mcc=int(state_dict["mcc_emb.weight"].shape[0]) - 2,
        d_model=int(d_model),
        d_state=int(d_state),
        n_layers=n_layers,
        out_dim=int(state_dict["head.weight"].shape[0]),
        d_conv=int(state_dict["layers.0.conv1d.weight"].shape[-1]),
        expand=int(d_inner) // int(d_model),
        dt_rank=int(state_dict["layers.0.dt_proj.weight"].shape[1]),
    ).to_dict()


def load_encoder(state_dict: Mapping[str, torch.Tensor | np.ndarray], config: Mapping | None = None) -> MambaEncoder:
    """Build a ``MambaEncoder`` in eval mode from a state dict (torch tensors or numpy arrays) and config."""
    sd = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v) for k, v in state_dict.items()}
    cfg = MambaConfig.from_dict(config if config is not None else config_from_state_dict(sd))
    model = MambaEncoder(cfg.n_mcc, cfg.d_model, cfg.d_state, cfg.n_layers, cfg.out_dim, cfg.d_conv, cfg.expand, cfg.dt_rank)
    model.load_state_dict(sd)
    return model.eval()


def _safetensors_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}


def save_encoder(path, state_dict: Mapping[str, torch.Tensor], config: Mapping | None = None) -> None:
    """Write weights as safetensors with the config JSON in the file's metadata."""
    from safetensors.torch import save_file

    cfg = dict(config) if config is not None else config_from_state_dict(state_dict)
    save_file(_safetensors_dict(state_dict), str(path), metadata={"config": json.dumps(cfg, sort_keys=True)})


def load_encoder_file(path) -> MambaEncoder:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        cfg = json.loads((f.metadata() or {}).get("config", "null"))
        sd = {k: f.get_tensor(k) for k in f.keys()}
    return load_encoder(sd, cfg)


def encoder_to_bytes(state_dict: Mapping[str, torch.Tensor], config: Mapping | None = None) -> bytes:
    """safetensors bytes (deterministic for equal weights and config: suitable for content hashing)."""
    from safetensors.torch import save

    cfg = dict(config) if config is not None else config_from_state_dict(state_dict)
    return save(_safetensors_dict(state_dict), metadata={"config": json.dumps(cfg, sort_keys=True)})


def encoder_from_bytes(data: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load

    (header_len,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    sd = load(data)
    cfg = json.loads(meta["config"]) if "config" in meta else config_from_state_dict(sd)
    return sd, cfg


# ---------------------------------------------------------------------------------------------------------
# Self-supervised training
# ---------------------------------------------------------------------------------------------------------


def _default_n_mcc() -> int:
    from ple_platform.core.data.taxonomy import mcc_hierarchy

    return mcc_hierarchy().n_codes


def _code_l1() -> np.ndarray:
    from ple_platform.core.data.taxonomy import mcc_hierarchy

    return mcc_hierarchy().code_l1


class _SSLHeads(nn.Module):
    """Training-only heads; discarded after fitting (the artifact is the encoder alone)."""

    def __init__(self, d_model: int, out_dim: int, n_mcc: int, n_l1: int):
        super().__init__()
        self.n_mcc, self.n_l1 = n_mcc, n_l1
        self.next = nn.Linear(d_model, n_mcc + n_l1 + 1)
        self.masked = nn.Linear(d_model, n_mcc + n_l1 + 1)
        self.customer = nn.Linear(out_dim, n_l1 + 1)


def _event_loss(logits: torch.Tensor, code: torch.Tensor, l1: torch.Tensor, log_amount: torch.Tensor, n_mcc: int, n_l1: int):
    """CE on code and L1 (ignoring unknown codes, -1) + Huber on log-amount; logits (M, n_mcc + n_l1 + 1)."""
    zero = logits.sum() * 0.0
    if logits.shape[0] == 0:
        return zero, zero, zero
    known = code >= 0
    ce_code = F.cross_entropy(logits[known, :n_mcc], code[known]) if bool(known.any()) else zero
    ce_l1 = F.cross_entropy(logits[known, n_mcc : n_mcc + n_l1], l1[known]) if bool(known.any()) else zero
    huber = F.huber_loss(logits[:, -1], log_amount, delta=1.0)
    return ce_code, ce_l1, huber


def _ssl_loss(enc: MambaEncoder, heads: _SSLHeads, seqs: torch.Tensor, code_l1: torch.Tensor, mask_prob: float,
              gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    tok = tokenize(seqs, enc.n_mcc)
    l1 = torch.where(tok.code >= 0, code_l1[tok.code.clamp(min=0)], torch.full_like(tok.code, -1))
    # Masked-event corruption: hide MCC and amount of ~mask_prob of real events (keep their timing).
    # Drawn on the CPU generator (identical masks on CPU and GPU for a seed), then moved to the data's device.
    hide = (torch.rand(tok.mask.shape, generator=gen) < mask_prob).to(tok.mask.device) & tok.mask
    numeric = tok.numeric.clone()
    numeric[..., 0] = numeric[..., 0] * (~hide)
    mcc = torch.where(hide, torch.full_like(tok.mcc, enc.mask_row), tok.mcc)
    corrupted = Tokens(numeric, mcc, tok.mask, tok.code, tok.log_amount)
    h = enc.hidden(corrupted)
    n_mcc, n_l1 = heads.n_mcc, heads.n_l1

    # Next step: causal state at t -> event t+1 (both real).
    nxt = tok.mask[:, :-1] & tok.mask[:, 1:]
    nx = _event_loss(heads.next(h[:, :-1][nxt]), tok.code[:, 1:][nxt], l1[:, 1:][nxt], tok.log_amount[:, 1:][nxt], n_mcc, n_l1)
    # Masked event: causal state at a hidden event (which saw its timing, not its content) -> its content.
    mk = _event_loss(heads.masked(h[hide]), tok.code[hide], l1[hide], tok.log_amount[hide], n_mcc, n_l1)
    # Customer embedding -> L1 mix and mean log-amount of its hidden events (trains the 50-d projection).
    z = enc.pool(h, tok.mask)
    hidden_known = hide & (tok.code >= 0)
    n_hidden = hidden_known.sum(dim=1)
    has = n_hidden > 0
    cust_ce = cust_huber = h.sum() * 0.0
    if bool(has.any()):
        out = heads.customer(z[has])
        counts = (F.one_hot(l1.clamp(min=0), n_l1).to(h.dtype) * hidden_known.unsqueeze(-1).to(h.dtype)).sum(dim=1)[has]
        mix = counts / counts.sum(dim=1, keepdim=True)
        cust_ce = -(mix * F.log_softmax(out[:, :n_l1], dim=-1)).sum(dim=1).mean()
        mean_amt = (tok.log_amount * hidden_known).sum(dim=1)[has] / n_hidden[has]
        cust_huber = F.huber_loss(out[:, -1], mean_amt, delta=1.0)
    parts = {
        "next_code_ce": nx[0], "next_l1_ce": nx[1], "next_amount_huber": nx[2],
        "masked_code_ce": mk[0], "masked_l1_ce": mk[1], "masked_amount_huber": mk[2],
        "customer_l1_ce": cust_ce, "customer_amount_huber": cust_huber,
    }
    loss = sum(parts.values())
    return loss, {k: float(v.detach()) for k, v in parts.items()}


@contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the duration of a fit, restoring the caller's global setting afterwards.

    Only switched on for accelerators: every CPU kernel this module uses is already deterministic (the
    determinism test holds without the flag), and setting it imports torch._inductor (~5 s per process).
    On CUDA, full cuBLAS determinism also needs CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment.
    """
    if not enabled:
        yield
        return
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _n_events(seqs: np.ndarray) -> np.ndarray:
    return (~((seqs[..., 1] < 0) & (seqs[..., 3] < 0))).sum(axis=1)


def _length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Batches of similar length so left-padding trims away; order within/between batches shuffled by ``rng``."""
    n = len(lengths)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    pool = batch_size * 16
    batches = []
    for s in range(0, n, pool):
        group = order[s : s + pool]
        group = group[np.argsort(lengths[group], kind="stable")]
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def fit_mamba_encoder(
    seqs: np.ndarray,
    seed: int,
    epochs: int = 3,
    batch_size: int = 256,
    max_customers: int | None = None,
    *,
    n_mcc: int | None = None,
    d_model: int = 64,
    d_state: int = 16,
    n_layers: int = 2,
    out_dim: int = MAMBA_DIM,
    lr: float = 2e-3,
    mask_prob: float = 0.15,
    code_l1: np.ndarray | None = None,
    scan_impl: str = "auto",
    device: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], dict]:
    """Fit the encoder self-supervised on (N, L, 4) transaction tensors; no task labels are read.

    Deterministic for a seed on CPU. Customers with fewer than 2 transactions carry no target and are
    skipped; ``max_customers`` subsamples the rest (seeded). Returns the encoder's state dict (CPU tensors;
    the SSL heads are dropped) and JSON-friendly metrics: per-epoch ``loss_history``, per-batch losses,
    last-epoch loss components, config and timing.
    """
    t0 = time.perf_counter()
    n_mcc = _default_n_mcc() if n_mcc is None else int(n_mcc)
    if code_l1 is None:  # L1 class of each code from the ISO 18245 hierarchy; one class for a custom vocabulary
        code_l1 = _code_l1() if n_mcc == _default_n_mcc() else np.zeros(n_mcc, dtype=np.int64)
    code_l1_np = np.asarray(code_l1, dtype=np.int64)
    n_l1 = int(code_l1_np.max()) + 1 if len(code_l1_np) else 1
    seqs = np.asarray(seqs, dtype=np.float32)
    rng = np.random.default_rng(seed)
    lengths = _n_events(seqs)
    idx = np.flatnonzero(lengths >= 2)
    if max_customers is not None and len(idx) > max_customers:
        idx = np.sort(rng.choice(idx, size=max_customers, replace=False))
    device = torch.device(device)

    # fork_rng: seeding here must not reset the caller's global RNG stream.
    with _deterministic(device.type != "cpu"), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        enc = MambaEncoder(n_mcc, d_model, d_state, n_layers, out_dim).set_scan(scan_impl).to(device)
        heads = _SSLHeads(d_model, out_dim, n_mcc, n_l1).to(device)
        code_l1_t = torch.as_tensor(code_l1_np, dtype=torch.long, device=device)
        params = list(enc.parameters()) + list(heads.parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        history, batch_losses, components = [], [], {}
        enc.train()
        for _ in range(epochs):
            sums, count, comp_sum = 0.0, 0, {}
            for b in _length_bucketed_batches(lengths[idx], batch_size, rng):
                x = torch.from_numpy(seqs[idx[b]]).to(device)
                loss, parts = _ssl_loss(enc, heads, x, code_l1_t, mask_prob, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                batch_losses.append(float(loss.detach()))
                sums += batch_losses[-1] * len(b)
                count += len(b)
                for k, v in parts.items():
                    comp_sum[k] = comp_sum.get(k, 0.0) + v * len(b)
            history.append(sums / max(count, 1))
            components = {k: v / max(count, 1) for k, v in comp_sum.items()}
        enc.eval()

    state = {k: v.detach().cpu().clone() for k, v in enc.state_dict().items()}
    metrics = {
        "loss_history": history,
        "batch_losses": batch_losses,
        "final_components": components,
        "n_train_customers": int(len(idx)),
        "n_customers_with_events": int((lengths >= 2).sum()),
        "n_params": int(sum(p.numel() for p in enc.parameters())),
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "fit_seconds": round(time.perf_counter() - t0, 3),
        "config": enc.config.to_dict(),
        "objective": "next-step + masked-event (MCC code/L1 CE, log-amount Huber) + customer-level masked L1 mix/amount",
    }
    return state, metrics


@torch.no_grad()
def encode(
    state_dict_or_model: Mapping[str, torch.Tensor] | MambaEncoder,
    seqs: np.ndarray,
    batch_size: int = 512,
    *,
    config: Mapping | None = None,
    device: str | torch.device | None = None,
    scan_impl: str | None = None,
) -> np.ndarray:
    """(N, L, 4) transactions -> (N, out_dim) float32 embeddings, in eval/no-grad mode.

    Batches are formed from customers of similar length (then restored to input order) so that left
    padding is trimmed away; memory is bounded by ``batch_size``.
    """
    model = state_dict_or_model if isinstance(state_dict_or_model, nn.Module) else load_encoder(state_dict_or_model, config)
    was_training, impls = model.training, [layer.scan_impl for layer in model.layers]
    model.eval()
    if scan_impl is not None:
        model.set_scan(scan_impl)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev)
    seqs = np.asarray(seqs, dtype=np.float32)
    out = np.zeros((len(seqs), model.config.out_dim), dtype=np.float32)
    for b in _length_bucketed_batches(_n_events(seqs), batch_size, None):
        out[b] = model(torch.from_numpy(seqs[b]).to(dev)).float().cpu().numpy()
    model.train(was_training)
    for layer, impl in zip(model.layers, impls):
        layer.scan_impl = impl
    return out

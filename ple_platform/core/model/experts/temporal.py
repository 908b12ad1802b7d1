"""Temporal ensemble expert: three sequence models over the customer's real last-200 transactions, gated.

The reference project's temporal expert was fed the 2-D routed feature slice as a length-1 "sequence"
(reference §5.2, §10.16); here every branch reads the actual event sequence ``batch["txn_seq"]``
(B, 200, 4) = (amount, mcc index, days before snapshot end, hour), most recent first, -1 padded.

Structure::

    txn_seq --newest seq_len events (default 32), tokenize (chronological, batch-trimmed, left padding)--+
        (a) Mamba branch:  ``mamba_branch="cached"`` (default): the pre-trained, self-supervised Mamba
                           encoder's output over the full 200 events, i.e. the ``mamba_temporal`` group
                           the feature asset computes once per month, projected -> d_branch;
                           ``"trainable"``: a MambaEncoder from core/features/mamba.py trained with the
                           teacher over the newest ``seq_len`` events (token embedding, residual RMSNorm
                           + MambaBlock stack, masked mean pool + newest state)                -> d_branch
        (b) patch branch:  PatchTST-style: events grouped into patches of ``patch_len`` aligned to the
                           newest event, linear patch embedding + learned position (counted from
                           the newest patch), pre-LN TransformerEncoder with key-padding mask,
                           masked mean pool                                                     -> d_branch
        (c) LTC branch:    liquid-time-constant cell (Hasani et al. 2021) integrated event by event
                           with the fused semi-implicit Euler solver; the ODE step is the real
                           time between consecutive events (days), then a free evolution from the
                           newest event to the snapshot end                                     -> d_branch
    static = routed temporal groups minus txn_lag_tensor (txn_behavior, hmm_states, mamba_temporal,
             model_derived: the lag tensor already enters as the sequence)
    gate   = softmax(MLP([static, LN(a), LN(b), LN(c)]))      (B, 3), kept in ``last_branch_weights``
    out    = MLP([sum_k gate_k * LN(branch_k), MLP(static)])  -> (B, out_dim)

Why ``cached`` by default: on CPU a trainable Mamba scan was ~80% of the expert's cost and ~27% of the whole
teacher's training step (B=256: 0.39 s of the expert's 0.46 s forward + backward), while the same architecture,
pre-trained on the sequences and applied to all 200 events rather than the newest 32, already reaches the expert as
``mamba_temporal``. Caching the encoder's outputs (the feature table) makes the branch a learned projection; the
GPU profile, where mamba_ssm's fused kernel makes the scan cheap, can train it end to end (``"trainable"``).

Padding invariance: padded steps cannot touch any branch (Mamba: zero input and zero Δ; patches: patches
are aligned to the newest event, padding events embed to exactly zero and all-padding patches are masked
keys; LTC: zero step size leaves the state bit-for-bit unchanged), so a customer's output does not depend
on how much padding the batch carries. Nothing depends on other rows (no batch norm).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ple_platform.core.features.mamba import N_NUMERIC, MambaEncoder, Tokens, tokenize
from ple_platform.core.features.spec import LAG_LENGTH
from ple_platform.core.model.batch import SEQ_KEY, Batch, Router

LAG_GROUP = "txn_lag_tensor"
MAMBA_GROUP = "mamba_temporal"  # the pre-trained encoder's per-customer output: the cached Mamba branch's input
BRANCHES = ("mamba", "patch", "ltc")
MAMBA_BRANCH_MODES = ("cached", "trainable")


def _default_n_mcc() -> int:
    from ple_platform.core.data.taxonomy import mcc_hierarchy

    return mcc_hierarchy().n_codes


def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def raw_time(seqs: torch.Tensor, tok: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw times aligned with ``tok`` (chronological, trimmed like ``tokenize``): (gap, recency).

    gap (B, L): days between each event and the previous one (0 at the first event and at padding);
    recency (B,): days from the newest event to the snapshot end (0 without events).
    """
    length = tok.mask.shape[1]
    days = torch.flip(seqs[..., 2], dims=[1])[:, seqs.shape[1] - length :].clamp(min=0.0)  # tokenize keeps the last L
    mask = tok.mask
    gap = torch.zeros_like(days)
    gap[:, 1:] = (days[:, :-1] - days[:, 1:]).clamp(min=0.0) * (mask[:, :-1] & mask[:, 1:])
    recency = days[:, -1] * mask[:, -1]
    return gap, recency


class TokenEmbed(nn.Module):
    """Per-event embedding shared by the patch and LTC branches: numeric features + MCC code row; 0 at padding."""

    def __init__(self, n_mcc: int, dim: int):
        super().__init__()
        self.num = nn.Linear(N_NUMERIC, dim)
        self.mcc = nn.Embedding(n_mcc + 2, dim)  # + unknown code + [MASK] (tokenize's row layout)
        nn.init.normal_(self.mcc.weight, std=0.1)

    def forward(self, tok: Tokens) -> torch.Tensor:
        return (self.num(tok.numeric) + self.mcc(tok.mcc)) * tok.mask.unsqueeze(-1).to(tok.numeric.dtype)


class PatchBranch(nn.Module):
    """PatchTST-style encoder: non-overlapping patches of ``patch_len`` events, newest patch = position 0."""

    def __init__(self, d_tok: int, d_model: int, patch_len: int, n_layers: int, n_heads: int, max_len: int,
                 dropout: float, out_dim: int):
        super().__init__()
        self.patch_len, self.n_heads = patch_len, n_heads
        self.max_patches = math.ceil(max_len / patch_len)
        self.embed = nn.Linear(patch_len * d_tok, d_model)
        self.pos = nn.Parameter(torch.randn(self.max_patches, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 2 * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.head = nn.Linear(d_model, out_dim)

    def forward(self, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = e.shape
        # Left-pad to a multiple of patch_len so patch boundaries are counted from the newest event: the same
        # events share a patch whatever the batch's padding.
        extra = (-length) % self.patch_len
        e = F.pad(e, (0, 0, extra, 0))
        mask = F.pad(mask, (extra, 0), value=False)
        n = e.shape[1] // self.patch_len
        if n > self.max_patches:  # more events than the contract's 200: keep the newest
            keep = self.max_patches * self.patch_len
            e, mask, n = e[:, -keep:], mask[:, -keep:], self.max_patches
        x = self.embed(e.reshape(b, n, self.patch_len * d)) + self.pos[:n].flip(0)  # pos 0 = newest patch
        real = mask.reshape(b, n, self.patch_len).any(dim=-1)
        # The newest patch always attends, so customers without events get a finite (constant) encoding.
        real[:, -1] = True
        # Key padding as a per-head attention mask: identical maths to src_key_padding_mask, but that path runs
        # torch._check_with, whose first call imports torch.fx's symbolic-shapes machinery (seconds per process).
        blocked = (~real)[:, None, None, :].expand(b, self.n_heads, n, n).reshape(b * self.n_heads, n, n)
        h = self.encoder(x, mask=blocked)
        return self.head(_masked_mean(h, real))


class LTCBranch(nn.Module):
    """Liquid-time-constant network (Hasani et al. 2021) over irregularly timed events.

    dx/dt = -(1/τ + f(x, I)) ⊙ x + f(x, I) ⊙ A,  f = σ(W_x x + W_I I + b) > 0 (the input-dependent "liquid"
    conductance). Each event is integrated over its real elapsed time Δ = gap_days + δ (δ > 0 learned, so
    same-day events still register) with ``unfolds`` fused semi-implicit Euler sub-steps

        x ← (x + h f ⊙ A) / (1 + h (1/τ + f)),   h = Δ / unfolds,

    which is stable for any step size (x' mixes x, A and 0 with weights summing to at most 1, so |x'| <= max(|x|, |A|)),
    so month-long gaps are fine.
    Padding has Δ = 0, i.e. x ← x exactly. τ is initialised log-uniformly over ``tau_range`` days so neurons
    cover same-day to quarter-long memory. After the newest event the state evolves input-free for the days
    left until the snapshot end, so recency acts through the learned dynamics.
    """

    def __init__(self, d_in: int, hidden: int, unfolds: int, out_dim: int,
                 tau_range: tuple[float, float] = (0.5, 90.0)):
        super().__init__()
        self.unfolds = unfolds
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        nn.init.normal_(self.rec.weight, std=0.5 / math.sqrt(hidden))
        self.A = nn.Parameter(torch.empty(hidden).uniform_(-1.0, 1.0))
        lo, hi = math.log(tau_range[0]), math.log(tau_range[1])
        self.log_tau = nn.Parameter(torch.linspace(lo, hi, hidden)[torch.randperm(hidden)])
        self.event_dt = nn.Parameter(torch.tensor(math.log(math.expm1(1.0))))  # softplus^-1(1 day)
        self.head = nn.Linear(3 * hidden, out_dim)

    def _evolve(self, x, drive, h, inv_tau):
        for _ in range(self.unfolds):
            f = torch.sigmoid(self.rec(x) + drive)
            x = (x + h * f * self.A) / (1.0 + h * (inv_tau + f))
        return x

    def forward(self, e: torch.Tensor, mask: torch.Tensor, gap: torch.Tensor, recency: torch.Tensor) -> torch.Tensor:
        b, length, _ = e.shape
        drive = self.inp(e)  # input projection for every step at once; only the recurrence loops
        inv_tau = torch.exp(-self.log_tau)
        step = ((F.softplus(self.event_dt) + gap) * mask.to(e.dtype) / self.unfolds).unsqueeze(-1)
        x = e.new_zeros(b, self.A.shape[0])
        states = []
        for t in range(length):
            x = self._evolve(x, drive[:, t], step[:, t], inv_tau)
            states.append(x)
        last = x
        # Free evolution (input I = 0, so the drive is the bias alone) from the newest event to the snapshot end.
        x = self._evolve(x, self.inp.bias, (recency / self.unfolds).unsqueeze(-1), inv_tau)
        mean = _masked_mean(torch.stack(states, dim=1), mask) if states else torch.zeros_like(x)
        return self.head(torch.cat([x, last, mean], dim=-1))


class TemporalEnsemble(nn.Module):
    """Gated Mamba / patch-Transformer / LTC ensemble over ``txn_seq`` plus the routed static temporal groups.

    ``forward(batch) -> (B, out_dim)``; ``last_branch_weights`` (B, 3) holds the latest gate weights in
    ``BRANCHES`` order (detached; for explanations). ``branch_outputs(batch)`` exposes the three raw branch
    encodings (used by tests and diagnostics).
    """

    def __init__(self, router: Router = Router(), out_dim: int = 64, *, n_mcc: int | None = None,
                 d_model: int = 32, d_state: int = 8, mamba_expand: int = 2, mamba_layers: int = 1,
                 patch_len: int = 10, patch_layers: int = 2, n_heads: int = 4, ltc_hidden: int = 32,
                 ltc_unfolds: int = 3, d_branch: int = 64, hidden: int = 128, dropout: float = 0.1,
                 max_len: int = LAG_LENGTH, seq_len: int | None = 32, mamba_branch: str = "cached"):
        super().__init__()
        if seq_len is not None and not 1 <= seq_len <= max_len:
            raise ValueError(f"temporal expert: seq_len must be in 1..{max_len} or None, got {seq_len}")
        if mamba_branch not in MAMBA_BRANCH_MODES:
            raise ValueError(f"temporal expert: mamba_branch must be one of {MAMBA_BRANCH_MODES}, got {mamba_branch!r}")
        self.mamba_branch = mamba_branch
        # The branches read only the newest ``seq_len`` events: the Mamba scan and the LTC loop are sequential,
        # so their cost grows with the length (200 events cost ~7x 32 on CPU), while the older events still
        # reach the expert summarised in the static groups (txn_behavior, mamba_temporal).
        self.seq_len = seq_len
        self.n_mcc = _default_n_mcc() if n_mcc is None else int(n_mcc)
        self.static_groups = tuple(g for g in router.groups_for("temporal") if g.name != LAG_GROUP)
        static_dim = sum(g.dim for g in self.static_groups)
        if mamba_branch == "trainable":
            self.mamba = MambaEncoder(self.n_mcc, d_model, d_state, mamba_layers, out_dim=d_branch, expand=mamba_expand)
        else:
            cached = [g for g in self.static_groups if g.name == MAMBA_GROUP]
            if not cached:
                raise ValueError(f"temporal expert: mamba_branch='cached' reads the {MAMBA_GROUP} group, which the "
                                 "router does not route to this expert (route it, or use mamba_branch='trainable')")
            self.mamba = nn.Sequential(nn.Linear(cached[0].dim, d_branch), nn.GELU(), nn.Linear(d_branch, d_branch))
        self.tokens = TokenEmbed(self.n_mcc, d_model)
        self.patch = PatchBranch(d_model, d_model, patch_len, patch_layers, n_heads, max_len, dropout, d_branch)
        self.ltc = LTCBranch(d_model, ltc_hidden, ltc_unfolds, d_branch)
        # Per-branch LayerNorm so the gate mixes comparably scaled encodings.
        self.branch_norms = nn.ModuleList(nn.LayerNorm(d_branch) for _ in BRANCHES)
        self.gate = nn.Sequential(nn.Linear(static_dim + len(BRANCHES) * d_branch, hidden), nn.GELU(),
                                  nn.Linear(hidden, len(BRANCHES)))
        self.static = nn.Sequential(nn.Linear(static_dim, hidden), nn.GELU(), nn.Dropout(dropout))
        self.head = nn.Sequential(nn.Linear(d_branch + hidden, hidden), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, out_dim))
        self.last_branch_weights: torch.Tensor | None = None

    def branch_outputs(self, batch: Batch) -> list[torch.Tensor]:
        seqs = batch[SEQ_KEY].float()
        if self.seq_len is not None:
            seqs = seqs[:, : self.seq_len]  # most recent first: the newest events of every row
        tok = tokenize(seqs, self.n_mcc)  # one chronological, batch-trimmed view shared by all branches
        gap, recency = raw_time(seqs, tok)
        e = self.tokens(tok)
        mamba = (self.mamba.pool(self.mamba.hidden(tok), tok.mask) if self.mamba_branch == "trainable"
                 else self.mamba(batch[MAMBA_GROUP].float()))
        return [
            mamba,
            self.patch(e, tok.mask),
            self.ltc(e, tok.mask, gap, recency),
        ]

    def forward(self, batch: Batch) -> torch.Tensor:
        static = torch.cat([batch[g.name] for g in self.static_groups], dim=1).float()
        branches = [norm(z) for norm, z in zip(self.branch_norms, self.branch_outputs(batch))]
        weights = torch.softmax(self.gate(torch.cat([static, *branches], dim=1)), dim=-1)
        self.last_branch_weights = weights.detach()
        fused = sum(weights[:, k : k + 1] * z for k, z in enumerate(branches))
        return self.head(torch.cat([fused, self.static(static)], dim=1))

    def aux_loss(self) -> torch.Tensor:
        return self.gate[0].weight.new_zeros(())

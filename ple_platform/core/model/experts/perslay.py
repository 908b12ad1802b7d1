"""PersLay expert (Carrière et al. 2020): a learnable, permutation-invariant vectorisation of each customer's
actual persistence diagrams.

The reference project's PersLay ran an MLP over 32 summary numbers that were constant or zero (reference §5.4,
§10.6); here the input is the padded point set ``batch["diagrams"]`` (B, P, 4) = (birth, death, homology dim,
kind 0 = global Rips / 1 = local cubical) with ``diagram_mask`` (B, P), plus the routed tda_global/tda_local
statistics.

PersLay(D) = ρ( op_{p ∈ D} w(p) · φ(p) ), computed separately for every diagram type t = (kind, dim):

* coordinates: the rotation (birth, death) -> (birth, persistence = death - birth), then signed log1p so Rips
  distances and log-spend levels share one scale;
* φ(p) (per-type parameters): ``n_gauss`` learned Gaussian "persistence image" pixels (centres, widths),
  ``n_hat`` rational-hat structure elements 1/(1+|p-c|₁) - 1/(1+||r|-|p-c|₁|) (Hofer et al.), and a small
  point MLP on (coords, type one-hot);
* w(p) > 0: a learned weight function (softplus MLP on coords and type), so e.g. short, noisy bars can be
  down-weighted;
* op: masked sum and masked max over the type's points (both permutation invariant), plus log(1 + count);
  empty types give zeros;
* ρ: LayerNorm over the concatenated type vectors, joined with the routed statistics, MLP -> out_dim.

Padding points are zeroed before any arithmetic, so garbage (even NaN) behind ``diagram_mask`` cannot leak.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ple_platform.core.model.batch import DIAGRAM_MASK_KEY, DIAGRAMS_KEY, Batch, Router


def _slog1p(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


class PersLay(nn.Module):
    """Learned diagram vectorisation per (kind, homology dim) + routed TDA statistics -> (B, out_dim)."""

    def __init__(self, router: Router = Router(), out_dim: int = 64, *, n_kinds: int = 2, n_dims: int = 2,
                 n_gauss: int = 16, n_hat: int = 8, n_mlp: int = 16, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.n_kinds, self.n_dims = n_kinds, n_dims
        self.n_types = t = n_kinds * n_dims
        self.router = router
        static_dim = router.input_dim("perslay")
        # Structure elements start spread over the log-scaled (birth, persistence) quadrant.
        self.gauss_centre = nn.Parameter(torch.rand(t, n_gauss, 2) * 3.0)
        self.gauss_log_sigma = nn.Parameter(torch.full((t, n_gauss), -0.5))
        self.hat_centre = nn.Parameter(torch.rand(t, n_hat, 2) * 3.0)
        self.hat_radius = nn.Parameter(torch.full((t, n_hat), 1.0))
        self.point_mlp = nn.Sequential(nn.Linear(2 + t, 32), nn.GELU(), nn.Linear(32, n_mlp))
        self.weight_mlp = nn.Sequential(nn.Linear(2 + t, 16), nn.GELU(), nn.Linear(16, 1))
        self.phi_dim = n_gauss + n_hat + n_mlp
        vec_dim = t * (2 * self.phi_dim + 1)
        self.vec_norm = nn.LayerNorm(vec_dim)
        self.rho = nn.Sequential(nn.Linear(vec_dim + static_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, out_dim))

    def _points(self, diagrams: torch.Tensor, mask: torch.Tensor):
        """Sanitised log coordinates (B, P, 2), type index (B, P) and type one-hot (B, P, T)."""
        pts = torch.where(mask.unsqueeze(-1), diagrams.float(), torch.zeros((), device=diagrams.device))
        birth, death = pts[..., 0], pts[..., 1]
        coords = torch.stack([_slog1p(birth), torch.log1p((death - birth).clamp(min=0.0))], dim=-1)
        dim = pts[..., 2].round().clamp(0, self.n_dims - 1).long()  # higher dims, if any, share the top slot
        kind = pts[..., 3].round().clamp(0, self.n_kinds - 1).long()
        typ = kind * self.n_dims + dim
        return coords, typ, F.one_hot(typ, self.n_types).to(coords.dtype)

    def phi(self, coords: torch.Tensor, typ: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Per-point transform (B, P, phi_dim), each point with its own type's structure elements."""
        diff = coords.unsqueeze(-2) - self.gauss_centre[typ]  # (B, P, G, 2)
        sigma2 = torch.exp(2 * self.gauss_log_sigma[typ])
        gauss = torch.exp(-(diff**2).sum(-1) / (2 * sigma2))
        l1 = (coords.unsqueeze(-2) - self.hat_centre[typ]).abs().sum(-1)  # (B, P, H)
        hat = 1.0 / (1.0 + l1) - 1.0 / (1.0 + (self.hat_radius[typ].abs() - l1).abs())
        mlp = self.point_mlp(torch.cat([coords, onehot], dim=-1))
        return torch.cat([gauss, hat, mlp], dim=-1)

    def weight(self, coords: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.weight_mlp(torch.cat([coords, onehot], dim=-1)))  # (B, P, 1)

    def vectorise(self, diagrams: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, P, 4) diagrams + (B, P) mask -> (B, T * (2 * phi_dim + 1)) permutation-invariant vector."""
        b = diagrams.shape[0]
        if diagrams.shape[1] == 0:  # no points in the whole batch: one masked dummy keeps the reductions defined
            diagrams, mask = diagrams.new_zeros(b, 1, 4), mask.new_zeros(b, 1)
        mask = mask.bool()
        coords, typ, onehot = self._points(diagrams, mask)
        val = self.weight(coords, onehot) * self.phi(coords, typ, onehot)  # (B, P, K)
        member = onehot * mask.unsqueeze(-1).to(onehot.dtype)  # (B, P, T): real points of each type
        total = torch.einsum("bpt,bpk->btk", member, val)
        has = member.sum(1) > 0  # (B, T)
        peak = val.unsqueeze(2).masked_fill(~member.bool().unsqueeze(-1), float("-inf")).amax(dim=1)
        peak = torch.where(has.unsqueeze(-1), peak, torch.zeros((), device=peak.device))
        count = torch.log1p(member.sum(1)).unsqueeze(-1)
        return torch.cat([total, peak, count], dim=-1).reshape(b, -1)

    def forward(self, batch: Batch) -> torch.Tensor:
        vec = self.vec_norm(self.vectorise(batch[DIAGRAMS_KEY], batch[DIAGRAM_MASK_KEY]))
        static = self.router.concat(batch, "perslay").float()
        return self.rho(torch.cat([vec, static], dim=1))

    def aux_loss(self) -> torch.Tensor:
        return self.gauss_centre.new_zeros(())

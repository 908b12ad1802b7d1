"""Causal expert: a NOTEARS-style structural layer (Zheng et al. 2018) over learned latent variables.

Structure:

* **latents** — the routed groups are projected to ``m`` variables and standardised over the batch
  (``BatchNorm1d`` without affine, running statistics at eval). Unit variance per variable is what keeps
  the structure from collapsing: ``z -> 0`` cannot make the reconstruction loss vanish.
* **structure** — a weighted adjacency ``W`` (m x m, diagonal masked to zero); the linear structural equation
  model predicts every variable from its parents only, ``z_hat = z @ W`` (column j = parents of j; no
  mixing across columns, which would let a variable see itself through another's parents).
* **structural loss** (``aux_loss``, from the latest forward): ``recon_weight * 0.5 * mean ||z - z W||^2``
  + ``alpha * h + rho / 2 * h^2 + l1 * |W|_1`` with the acyclicity ``h(W) = tr(exp(W o W)) - m``. The
  reconstruction term is what keeps ``W`` non-trivial when the variables are related (the reference's
  acyclicity + sparsity-only loss drove ``W`` to 0). It is fitted on detached latents, as NOTEARS fits a DAG
  to given data: the DAG describes the representation the task learns instead of bending it into redundant,
  trivially predictable variables.
* **augmented Lagrangian** — ``alpha``/``rho`` are buffers; ``update_lagrangian()`` (the trainer calls it
  once per epoch) multiplies ``rho`` while ``h`` does not shrink fast enough and then sets
  ``alpha += rho * h``, as NOTEARS' outer loop does.
* **output through the structure only** — the head reads the SEM's fitted values ``z_hat = z @ W`` and nothing
  else: ``MLP(z W) -> out_dim``. Latent i reaches the head only through its out-edges (``z_i W_ij`` in each
  child's fitted value; a latent without children is invisible), so removing a learned edge changes the
  prediction and with every edge removed the output no longer depends on the customer.
  (An earlier version fed ``[z, z W]``: ``z`` already carried everything and the DAG constrained nothing.) The
  task gradient reaches ``W`` through this path too, so edges that matter for the tasks are kept against the L1
  term, while the reconstruction and acyclicity terms keep ``W`` a DAG of the latents.
* **edge mask** — a persistent 0/1 buffer multiplied into ``W``: ``remove_edge(i, j)`` cuts one edge (what-if
  and the tests), ``prune(threshold)`` cuts every edge with ``|W_ij| < threshold`` (NOTEARS' post-hoc
  thresholding; not applied during training). ``adjacency()`` gives the detached masked ``W`` for explanations.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ple_platform.core.model.batch import Batch, Router


def acyclicity(w: torch.Tensor) -> torch.Tensor:
    """NOTEARS h(W) = tr(exp(W o W)) - m: zero iff the weighted graph has no directed cycle."""
    return torch.linalg.matrix_exp(w.float() * w.float()).diagonal().sum() - w.shape[0]


class CausalExpert(nn.Module):
    def __init__(
        self,
        router: Router = Router(),
        out_dim: int = 64,
        n_latent: int = 16,
        hidden_dim: int = 128,
        dropout: float = 0.1,
        w_init_scale: float = 0.1,
        recon_weight: float = 1.0,
        l1: float = 0.01,
        rho_init: float = 1.0,
        rho_factor: float = 2.0,
        rho_max: float = 1e4,
        progress_ratio: float = 0.25,
    ):
        super().__init__()
        self.router = router
        self.n_latent = n_latent
        self.recon_weight, self.l1 = recon_weight, l1
        self.rho_factor, self.rho_max, self.progress_ratio = rho_factor, rho_max, progress_ratio
        self.encoder = nn.Linear(router.input_dim("causal"), n_latent)
        self.standardise = nn.BatchNorm1d(n_latent, affine=False)
        # Random init breaks the symmetry: from W = 0 the reconstruction gradient z^T z is symmetric and
        # gradient descent would keep W symmetric, i.e. never acyclic.
        self.w = nn.Parameter(torch.randn(n_latent, n_latent) * w_init_scale)
        self.register_buffer("off_diagonal", 1.0 - torch.eye(n_latent), persistent=False)
        self.register_buffer("edge_mask", torch.ones(n_latent, n_latent))
        self.register_buffer("alpha", torch.zeros(()))
        self.register_buffer("rho", torch.tensor(float(rho_init)))
        self.register_buffer("h_prev", torch.tensor(math.inf))
        self.head = nn.Sequential(
            nn.Linear(n_latent, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)
        )
        self._aux: torch.Tensor | None = None

    def weights(self) -> torch.Tensor:
        return self.w * self.off_diagonal * self.edge_mask

    @torch.no_grad()
    def remove_edge(self, i: int, j: int) -> None:
        """Cut the edge latent i -> latent j (W[i, j] = 0 from now on, also after saving and loading)."""
        if not (0 <= i < self.n_latent and 0 <= j < self.n_latent):
            raise IndexError(f"CausalExpert.remove_edge: ({i}, {j}) outside the {self.n_latent} latents")
        self.edge_mask[i, j] = 0.0

    @torch.no_grad()
    def prune(self, threshold: float = 0.3) -> int:
        """Cut every edge with |W_ij| < ``threshold``; returns the number of edges left."""
        self.edge_mask.mul_((self.weights().abs() >= threshold).to(self.edge_mask.dtype))
        return int((self.weights() != 0).sum())

    def adjacency(self) -> torch.Tensor:
        """Detached W (m x m); W[i, j] is the effect of latent i on latent j."""
        return self.weights().detach()

    def latents(self, batch: Batch) -> torch.Tensor:
        return self.standardise(self.encoder(self.router.concat(batch, "causal")))

    def structural_loss(self, z: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        z = z.detach().float()
        recon = 0.5 * (z - z @ w).pow(2).sum(dim=1).mean() / self.n_latent
        h = acyclicity(w)
        return self.recon_weight * recon + self.alpha * h + 0.5 * self.rho * h * h + self.l1 * w.abs().sum()

    def forward(self, batch: Batch) -> torch.Tensor:
        z = self.latents(batch)
        self._aux = self.structural_loss(z)
        return self.head(self.fitted(z))

    def fitted(self, z: torch.Tensor) -> torch.Tensor:
        """The structural equations' fitted values z W: column j is latent j predicted from its parents."""
        return z @ self.weights().to(z.dtype)

    def aux_loss(self) -> torch.Tensor:
        return self._aux if self._aux is not None else self.w.new_zeros(())

    @torch.no_grad()
    def update_lagrangian(self) -> dict[str, float]:
        """One NOTEARS outer step: raise rho while h stalls (> progress_ratio * previous h), then alpha += rho h."""
        h = acyclicity(self.weights())
        if h > self.progress_ratio * self.h_prev:
            self.rho.copy_(torch.clamp(self.rho * self.rho_factor, max=self.rho_max))
        self.alpha.add_(self.rho * h)
        self.h_prev.copy_(h)
        return {"h": float(h), "alpha": float(self.alpha), "rho": float(self.rho)}

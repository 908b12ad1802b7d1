"""DeepFM expert (Guo et al. 2017) over the teacher's tabular feature groups.

Structure (all fields share one embedding size ``k``):

* **fields** — one *numeric field* per routed feature group: a linear projection of the group's numeric
  (non-categorical) columns to ``k`` (the 800-column ``txn_lag_tensor`` is one field like any other), plus
  one *categorical field* per code column of ``CATEGORICAL_COLUMNS`` found in the routed groups: an embedding
  table of ``n_buckets`` rows indexed by ``code mod n_buckets`` (code 0 = unknown has its own learned row).
  Fields come from the ``Router``, never from fixed column chunks (the reference's 20-column fallback bug).
* **first order** — one scalar per field (a ``Linear(d_g -> 1)`` per numeric group, a bias table per code).
* **FM second order** — the pairwise interactions ``sum_{i<j} v_i * v_j`` (element-wise, a ``k`` vector),
  computed in O(F k) with ``0.5 * ((sum_i v_i)^2 - sum_i v_i^2)``.
* **deep** — an MLP over the concatenated field embeddings (F * k).

Output: ``Linear([first_order (F), fm (k), deep (deep_dim)]) -> out_dim``. No structural loss.
"""

from __future__ import annotations

import torch
from torch import nn

from ple_platform.core.model.batch import Batch, Router, categorical_positions


def fm_interaction(v: torch.Tensor) -> torch.Tensor:
    """(B, F, k) field embeddings -> (B, k) sum over field pairs i<j of v_i * v_j (FM identity)."""
    return 0.5 * (v.sum(dim=1).pow(2) - v.pow(2).sum(dim=1))


class DeepFM(nn.Module):
    def __init__(
        self,
        router: Router = Router(),
        out_dim: int = 64,
        embed_dim: int = 16,
        n_buckets: int = 256,
        hidden_dims: tuple[int, ...] = (256, 128),
        deep_dim: int = 64,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.groups = router.groups_for("deepfm")
        self.n_buckets = n_buckets
        self.numeric_fields = nn.ModuleList()
        self.numeric_first = nn.ModuleList()
        self.cat_fields = nn.ModuleList()
        self.cat_first = nn.ModuleList()
        self.cat_names: list[str] = []
        for i, g in enumerate(self.groups):
            cat = categorical_positions(g)
            num = [j for j in range(g.dim) if j not in cat]
            # Index buffers follow the module across devices; the projection ignores categorical codes.
            self.register_buffer(f"num_idx_{i}", torch.tensor(num, dtype=torch.long), persistent=False)
            self.register_buffer(f"cat_idx_{i}", torch.tensor(cat, dtype=torch.long), persistent=False)
            self.numeric_fields.append(nn.Linear(len(num), embed_dim))
            self.numeric_first.append(nn.Linear(len(num), 1))
            for j in cat:
                self.cat_names.append(g.columns[j])
                self.cat_fields.append(nn.Embedding(n_buckets, embed_dim))
                self.cat_first.append(nn.Embedding(n_buckets, 1))
        for emb in self.cat_fields:
            nn.init.normal_(emb.weight, std=0.05)  # same scale as the numeric projections' outputs
        for emb in self.cat_first:
            nn.init.zeros_(emb.weight)
        self.n_fields = len(self.numeric_fields) + len(self.cat_fields)
        layers: list[nn.Module] = []
        width = self.n_fields * embed_dim
        for h in hidden_dims:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.deep = nn.Sequential(*layers, nn.Linear(width, deep_dim), nn.ReLU())
        self.head = nn.Linear(self.n_fields + embed_dim + deep_dim, out_dim)

    def _codes(self, batch: Batch) -> list[torch.Tensor]:
        out = []
        for i, g in enumerate(self.groups):
            codes = batch[g.name].index_select(1, getattr(self, f"cat_idx_{i}"))
            # Codes arrive as integer-valued floats; negatives (should not happen) fall back to "unknown".
            codes = codes.round().long().clamp(min=0) % self.n_buckets
            out.extend(codes.unbind(dim=1))
        return out

    def fields(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Field embeddings (B, F, k) and first-order terms (B, F): numeric groups first, then codes."""
        vecs, firsts = [], []
        for i, g in enumerate(self.groups):
            x = batch[g.name].index_select(1, getattr(self, f"num_idx_{i}"))
            vecs.append(self.numeric_fields[i](x))
            firsts.append(self.numeric_first[i](x))
        for code, emb, first in zip(self._codes(batch), self.cat_fields, self.cat_first, strict=True):
            vecs.append(emb(code))
            firsts.append(first(code))
        return torch.stack(vecs, dim=1), torch.cat(firsts, dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        v, first = self.fields(batch)
        deep = self.deep(v.flatten(1))
        return self.head(torch.cat([first, fm_interaction(v), deep], dim=1))

    def aux_loss(self) -> torch.Tensor:
        return self.head.weight.new_zeros(())

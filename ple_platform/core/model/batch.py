"""The input contract between the warehouse and every teacher module.

A ``Batch`` is a dict of float32 tensors with leading dimension B (customers):

* one entry per feature group name (``FEATURE_GROUPS``), shape (B, group.dim), **standardised** with a
  scaler fitted on training months (categorical code columns are left as integer-valued floats:
  ``CATEGORICAL_COLUMNS``; 0 = unknown);
* ``"txn_seq"``: (B, 200, 4) the *raw* lag tensor (amount, mcc index, days before snapshot end, hour),
  most recent first, padding = -1 in every channel (mcc index -1 and hour -1 together mark padding);
* ``"diagrams"``: (B, P, 4) persistence diagram points (birth, death, homology dim, kind: 0 = global
  Rips, 1 = local cubical), padded; ``"diagram_mask"``: (B, P) bool, True for real points;
* ``"holdings"``: (B, 24) 0/1 current holdings (product index order of ``schema.PRODUCTS``).

Every expert is an ``nn.Module`` built from a ``Router`` view of the spec, with
``forward(batch) -> (B, out_dim)`` and ``aux_loss() -> scalar tensor`` (0 unless the expert has a
structural loss, e.g. NOTEARS acyclicity + reconstruction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ple_platform.core.features.spec import CATEGORICAL_COLUMNS, EXPERTS, FEATURE_GROUPS, FeatureGroupSpec

Batch = dict[str, torch.Tensor]

SEQ_KEY, DIAGRAMS_KEY, DIAGRAM_MASK_KEY, HOLDINGS_KEY = "txn_seq", "diagrams", "diagram_mask", "holdings"


@dataclass(frozen=True)
class Router:
    """Which feature groups each expert reads, taken from the spec's ``experts`` field."""

    groups: tuple[FeatureGroupSpec, ...] = FEATURE_GROUPS

    def groups_for(self, expert: str) -> tuple[FeatureGroupSpec, ...]:
        if expert not in EXPERTS:
            raise KeyError(f"unknown expert {expert!r}; known: {EXPERTS}")
        return tuple(g for g in self.groups if expert in g.experts)

    def input_dim(self, expert: str) -> int:
        return sum(g.dim for g in self.groups_for(expert))

    def concat(self, batch: Batch, expert: str) -> torch.Tensor:
        return torch.cat([batch[g.name] for g in self.groups_for(expert)], dim=1)


def categorical_positions(group: FeatureGroupSpec) -> list[int]:
    return [i for i, c in enumerate(group.columns) if c in CATEGORICAL_COLUMNS]

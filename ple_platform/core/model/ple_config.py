"""The PLE's architecture knobs, kept apart from the torch model (core/model/ple.py) so that run configs and the
definitions can read their defaults without importing torch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from ple_platform.core.features.spec import EXPERTS
from ple_platform.core.tasks.spec import TASKS, TASKS_BY_NAME

COMPACT_GROUPS = ("demographics", "product_holdings", "txn_behavior")


@dataclass
class PLEConfig:
    expert_dim: int = 64
    n_layers: int = 3  # extraction layers (paper: 2; reference: 3); 1 = a single CGC
    task_experts: int = 1  # per task and layer
    tower_dims: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    expert_kind: Literal["heterogeneous", "mlp"] = "heterogeneous"
    experts: tuple[str, ...] = EXPERTS  # shared experts of layer 0 (a subset = ablation)
    expert_config: dict[str, dict] = field(default_factory=dict)  # per-expert constructor kwargs
    upper_shared_experts: int | None = None  # shared MLP experts in layers 1..n-1 (default: len(experts))
    mlp_hidden: tuple[int, ...] = (128,)  # hidden widths of every MLP expert
    task_input_groups: tuple[str, ...] = COMPACT_GROUPS
    tasks: tuple[str, ...] = tuple(t.name for t in TASKS)
    uncertainty: bool = True  # learned Kendall log-variances (owned by the model so checkpoints carry them)
    n_buckets: int = 64  # categorical code embedding rows (code mod n_buckets; 0 = unknown)
    cat_dim: int = 4

    def __post_init__(self) -> None:
        if self.expert_kind not in ("heterogeneous", "mlp"):
            raise ValueError(f"expert_kind must be 'heterogeneous' or 'mlp', got {self.expert_kind!r}")
        if self.n_layers < 1 or self.task_experts < 1 or not self.experts:
            raise ValueError("need n_layers >= 1, task_experts >= 1 and at least one shared expert")
        unknown = set(self.experts) - set(EXPERTS)
        if unknown:
            raise ValueError(f"unknown experts {sorted(unknown)}; known: {EXPERTS}")
        bad_tasks = [t for t in self.tasks if t not in TASKS_BY_NAME]
        if bad_tasks:
            raise ValueError(f"unknown tasks {bad_tasks}; known: {sorted(TASKS_BY_NAME)}")
        self.tower_dims, self.mlp_hidden = tuple(self.tower_dims), tuple(self.mlp_hidden)
        self.experts, self.tasks = tuple(self.experts), tuple(self.tasks)
        self.task_input_groups = tuple(self.task_input_groups)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> PLEConfig:
        return cls(**d)

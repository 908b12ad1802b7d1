"""The 13 tasks (SPEC §5): one typed list read by labels, the teacher's heads, the students and reports.

Labels of month t describe what happens between snapshot t and snapshot t+1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ple_platform.core.data.schema import PRODUCT_GROUPS

Kind = Literal["binary", "multiclass", "regression"]
NEXT_MCC_CLASSES = 50


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: Kind
    n_classes: int  # 1 for binary and regression
    description: str
    primary_metric: str  # the metric promotion and reports rank by

    @property
    def output_dim(self) -> int:
        return self.n_classes if self.kind == "multiclass" else 1


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("churn_signal", "binary", 1, "Loses a core product or turns inactive by t+1", "auc"),
    TaskSpec("product_stability", "regression", 1, "Share of products held at t still held at t+1 (0-1)", "mae"),
    TaskSpec("nba_primary", "multiclass", 1 + len(PRODUCT_GROUPS),
             "Group of the first newly acquired product at t+1 (0 = none, then " + ", ".join(PRODUCT_GROUPS) + ")", "macro_f1"),
    TaskSpec("cross_sell_count", "regression", 1, "Number of products newly acquired by t+1", "mae"),
    *(TaskSpec(f"will_acquire_{g}", "binary", 1, f"Acquires any {g} product by t+1", "auc")
      for g in ("deposits", "investments", "accounts", "lending", "payments")),
    TaskSpec("next_mcc", "multiclass", NEXT_MCC_CLASSES, "Top-spend MCC of month t+1 among the 50 most common (fitted on training months)", "macro_f1"),
    TaskSpec("mcc_diversity_trend", "regression", 1, "Distinct MCCs in t+1 minus the trailing 3-month mean", "mae"),
    TaskSpec("top_mcc_shift", "binary", 1, "Top-spend MCC of t+1 differs from that of t", "auc"),
    TaskSpec("spend_change", "regression", 1, "log((1 + spend in t+1) / (1 + spend in t))", "mae"),
)
TASKS_BY_NAME = {t.name: t for t in TASKS}
assert len(TASKS) == 13

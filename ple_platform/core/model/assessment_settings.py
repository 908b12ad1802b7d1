"""Knobs of the teacher's out-of-time assessment (core/model/assessment.py), apart from it so that run configs
read their defaults without importing torch or LightGBM."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AssessmentSettings:
    n_boot: int = 200
    lgb_num_boost_round: int = 400
    lgb_early_stopping: int = 30
    lgb_params: dict = field(default_factory=dict)  # over baselines.DEFAULT_PARAMS for every task (e.g. max_bin)
    lgb_threads: int = 2
    faithfulness_rows: int = 1024  # 1 + 7 forward passes over this many test customers
    # The no-information control: (1 + n_perm) x 8 + 7 forward passes over this many test customers.
    faithfulness_control_rows: int = 512
    faithfulness_control_perms: int = 2
    score_all_test_customers: bool = True  # False: only the teacher's training subsample of the test month
    train_vanilla: bool = True

"""Quality rules every feature group's monthly partition must meet (backing the partitioned asset checks).

Thresholds are stated here once and documented in docs/features.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ple_platform.core.features.spec import FeatureGroupSpec
from ple_platform.core.stats import PSI_ALERT, psi

MAX_NULL_RATE = 0.0  # features are never NULL: missing source values become explicit flags upstream
MAX_CONSTANT_SHARE = 0.10  # share of columns allowed to be constant beyond documented "no data" values
NO_DATA_VALUES = (0.0, -1.0)  # zero activity / lag-tensor padding
LEAKAGE_MAX_ABS_CORR = 0.95


@dataclass(frozen=True)
class QualityResult:
    name: str
    passed: bool
    description: str
    metadata: dict
    blocking: bool = True


def max_abs_corr(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """Largest |Pearson correlation| between any column of x and the vector y, and that column's index."""
    xc = x - x.mean(axis=0)
    yc = y - y.mean()
    denom = np.sqrt((xc**2).sum(axis=0) * (yc**2).sum())
    corr = np.where(denom > 0, (xc * yc[:, None]).sum(axis=0) / np.where(denom > 0, denom, 1.0), 0.0)
    j = int(np.argmax(np.abs(corr))) if corr.size else 0
    return (float(abs(corr[j])) if corr.size else 0.0), j


def evaluate(
    spec: FeatureGroupSpec,
    values: np.ndarray,
    stored_null_rate: float,
    has_source_data: np.ndarray | None,
    previous: np.ndarray | None,
    next_month_changes: np.ndarray | None,
    full_history: bool = True,
    first_month: bool = False,
) -> list[QualityResult]:
    """All rules for one partition. ``has_source_data`` marks customers with data for zero-ok groups;
    ``previous`` is last month's stored matrix; ``next_month_changes`` the number of product changes each
    customer makes between t and t+1 (None when month t+1 is not loaded yet). ``full_history`` is False in
    warm-up months with fewer stored months than the group's lookback: there, history columns are
    legitimately constant (e.g. months_observed = 1 in the first month) and only a wholly constant group fails.
    ``first_month``: no earlier month exists at all, so a history group (lookback > 1) may be wholly constant."""
    out = []
    out.append(QualityResult("null_rate", stored_null_rate <= MAX_NULL_RATE, f"Null rate of the stored partition <= {MAX_NULL_RATE:.0%}",
                             {"null_rate": stored_null_rate}))
    finite = np.isfinite(values)
    out.append(QualityResult("width_and_dtypes", values.shape[1] == spec.dim and values.dtype == np.float32,
                             f"{values.shape[1]} float32 columns expected {spec.dim}", {"width": int(values.shape[1]), "dtype": str(values.dtype)}))
    out.append(QualityResult("all_finite", bool(finite.all()), "Every value is finite", {"non_finite": int((~finite).sum())}))

    spread = values.max(axis=0) - values.min(axis=0) if len(values) else np.zeros(spec.dim)
    constant = spread == 0
    no_data_const = constant & np.isin(values[0] if len(values) else np.zeros(spec.dim), NO_DATA_VALUES)
    other_const = constant & ~no_data_const
    all_constant = bool(constant.all())
    share = float(other_const.mean())
    tolerance = MAX_CONSTANT_SHARE if full_history else 1.0
    no_history = first_month and spec.lookback_months > 1
    out.append(QualityResult(
        "no_constant_columns",
        ((not all_constant) or no_history) and share <= tolerance,
        f"Not the whole group constant; other constant columns <= {tolerance:.0%}"
        + ("" if full_history else " (warm-up month: less history than the lookback)")
        + (" (first stored month: a history group has no history yet)" if no_history else ""),
        {"constant_columns": int(constant.sum()), "no_data_constant_columns": int(no_data_const.sum()), "other_constant_share": share,
         "examples": [spec.columns[j] for j in np.flatnonzero(other_const)[:5]]},
    ))
    if has_source_data is not None:
        zero_rows = ~np.any(values != 0, axis=1)
        bad = int((zero_rows & has_source_data).sum())
        out.append(QualityResult("no_all_zero_rows_with_data", bad == 0,
                                 f"Customers with {spec.zero_ok_without} never get an all-zero row",
                                 {"offending_customers": bad, "customers_without_data": int((~has_source_data).sum())}))

    if previous is not None and len(previous) and len(values):
        psis = np.array([psi(previous[:, j], values[:, j]) for j in range(values.shape[1])])
        worst = int(np.argmax(psis))
        out.append(QualityResult("psi_drift_vs_previous_month", bool(psis.max() < PSI_ALERT),
                                 f"PSI of every column vs the previous month < {PSI_ALERT} (the platform's alert level)",
                                 {"max_psi": float(psis.max()), "worst_column": spec.columns[worst], "columns_over": int((psis >= PSI_ALERT).sum())},
                                 blocking=False))
    elif first_month:
        out.append(QualityResult("psi_drift_vs_previous_month", True, "First stored month: no previous month to compare", {"evaluated": False}, blocking=False))
    else:
        # Month t-1 exists upstream but its features are not stored (a month run out of order): say so, never pass.
        out.append(QualityResult("psi_drift_vs_previous_month", False,
                                 "Not evaluated: month t-1 of this group is not materialized (materialize it, then "
                                 "re-run this month; a backfill orders the months through the declared t-1 dependency)",
                                 {"evaluated": False}, blocking=False))

    if next_month_changes is None:
        out.append(QualityResult("leakage_guard", False, "Not evaluable yet: month t+1 is not in the warehouse (re-run once it lands)",
                                 {"evaluated": False}, blocking=False))
    else:
        corr, j = max_abs_corr(values.astype(np.float64), next_month_changes.astype(np.float64))
        out.append(QualityResult("leakage_guard", corr < LEAKAGE_MAX_ABS_CORR,  # a real failure blocks
                                 f"No column has |corr| >= {LEAKAGE_MAX_ABS_CORR} with next month's product changes",
                                 {"max_abs_corr": corr, "column": spec.columns[j], "evaluated": True}))
    return out

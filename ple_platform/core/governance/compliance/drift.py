"""Drift tables of the compliance report (SPEC §8): per column and per group of columns, PSI and KS of a current
sample against a reference sample, with the one threshold set of ``core/stats.py`` (a group's status is that of
its worst column)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ple_platform.core.stats import (
    ALERT,
    MISSING,
    N_BINS,
    PSI_ALERT,
    PSI_WARN,
    DriftInputError,
    ks,
    psi_detail,
    psi_status,
)


def _as_2d(x: Any, group: str, side: str, width: int) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] != width:
        raise DriftInputError(f"group {group!r}: the {side} data must be an (N, {width}) array for its {width} "
                              f"columns, got shape {np.shape(x)}")
    return a


def column_drift(reference: Any, current: Any, columns: Sequence[str], n_bins: int = N_BINS,
                 group: str = "columns") -> list[dict[str, Any]]:
    """Per column: ``psi``, ``ks``, ``ks_p_value``, NaN shares and status. A column with no finite value on
    either side gets ``psi = None`` and status ``"missing evidence"`` instead of an error."""
    ref = _as_2d(reference, group, "reference", len(columns))
    cur = _as_2d(current, group, "current", len(columns))
    rows = []
    for j, col in enumerate(columns):  # one loop over columns; every column is vectorised over customers
        try:
            det = psi_detail(ref[:, j], cur[:, j], n_bins)
            d, p = ks(ref[:, j], cur[:, j])
            rows.append({"column": col, "psi": det.psi, "ks": d, "ks_p_value": p, "n_bins": det.n_bins,
                         "reference_nan_share": det.reference_nan_share,
                         "current_nan_share": det.current_nan_share, "status": psi_status(det.psi)})
        except DriftInputError as e:
            rows.append({"column": col, "psi": None, "ks": None, "ks_p_value": None, "n_bins": None,
                         "reference_nan_share": float(np.isnan(ref[:, j]).mean()) if len(ref) else None,
                         "current_nan_share": float(np.isnan(cur[:, j]).mean()) if len(cur) else None,
                         "status": MISSING, "reason": str(e)})
    return rows


def drift_table(ref: Mapping[str, Any], cur: Mapping[str, Any], columns: Mapping[str, Sequence[str]],
                n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """One row per group of ``columns`` (feature groups, or e.g. ``{"predictions": task names}``):
    ``mean_psi``, ``max_psi``, ``worst_column``, ``share_psi_warn`` / ``share_psi_alert`` (share of evaluated
    columns at or above each threshold), ``max_ks`` and ``min_ks_p_value``, the largest change in NaN share,
    ``n_columns_missing`` and ``status``: alert if any column alerts; else missing evidence if a column (or the
    whole group) could not be evaluated; else warn / ok. Large inputs may be row-sampled by the caller."""
    rows = []
    for name, cols in columns.items():
        cols = tuple(cols)
        if not cols:
            raise DriftInputError(f"group {name!r} lists no columns")
        absent = [side for side, data in (("reference", ref), ("current", cur)) if data.get(name) is None]
        if absent:
            rows.append({"group": name, "n_columns": len(cols), "status": MISSING,
                         "reason": f"no {' and no '.join(absent)} data for group {name!r}"})
            continue
        per = column_drift(ref[name], cur[name], cols, n_bins, group=name)
        ok = [r for r in per if r["psi"] is not None]
        n_missing = len(per) - len(ok)
        row: dict[str, Any] = {"group": name, "n_columns": len(cols), "n_columns_missing": n_missing,
                               "n_reference": int(np.shape(ref[name])[0]), "n_current": int(np.shape(cur[name])[0])}
        if ok:
            psis = np.array([r["psi"] for r in ok])
            worst = ok[int(np.argmax(psis))]
            row.update({
                "mean_psi": float(psis.mean()), "max_psi": float(psis.max()), "worst_column": worst["column"],
                "share_psi_warn": float((psis >= PSI_WARN).mean()),
                "share_psi_alert": float((psis >= PSI_ALERT).mean()),
                "max_ks": float(max(r["ks"] for r in ok)), "min_ks_p_value": float(min(r["ks_p_value"] for r in ok)),
                "max_nan_share_change": float(max(abs(r["current_nan_share"] - r["reference_nan_share"]) for r in ok)),
            })
            status = psi_status(row["max_psi"])
            if status != ALERT and n_missing:
                status = MISSING
        else:
            status = MISSING
        row["status"] = status
        if n_missing:
            row["missing_columns"] = {r["column"]: r["reason"] for r in per if r["psi"] is None}
        rows.append(row)
    return rows

"""Distribution drift between a reference sample and a current sample (SPEC §8): PSI and two-sample KS.

PSI (population stability index) ``sum_i (c_i - r_i) ln(c_i / r_i)`` over bins whose edges are **quantiles of the
reference sample only**: ``n_bins - 1`` interior edges at the reference quantiles (deciles for ``n_bins = 10``,
taken as observed values, no interpolation), outer bins open-ended so current values outside the reference range
still land in a bin. Bins are left-closed ``[e_i, e_{i+1})``. Repeated quantiles are collapsed; an edge that is
a point mass of the reference (a repeated quantile, or >= 1/n_bins of the reference exactly at it: discrete or
constant data) also gets a bin of its own, so a move from the atom to nearby values is seen (a constant reference
at 0 has bins ``< 0``, ``{0}``, ``> 0``). Proportions are floored at ``EPS = 1e-4`` (an empty bin would make PSI
infinite). NaNs are excluded from both samples and their shares reported separately (``psi_detail``).
This replaces the reference project's equal-width bins over the combined min-max range, whose bins move with
the current sample and are dominated by outliers (reference-repo-ops §5.3, §10 item 22).

KS: ``D = max_x |F_ref(x) - F_cur(x)|`` evaluated at every observed value (vectorised ``searchsorted``), p-value
from the asymptotic Kolmogorov distribution ``Q(sqrt(n m / (n + m)) D)`` (``scipy.special.kolmogorov``). With
large samples KS flags negligible shifts as significant, so KS is reported but statuses come from PSI alone.

One threshold set, used by every drift report of the platform: PSI < ``PSI_WARN`` (0.1) ok, ``PSI_WARN`` <= PSI <
``PSI_ALERT`` (0.25) warn, PSI >= ``PSI_ALERT`` alert. A group's status is that of its worst column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import kolmogorov

PSI_WARN = 0.1
PSI_ALERT = 0.25
N_BINS = 10
EPS = 1e-4

OK = "ok"
WARN = "warn"
ALERT = "alert"
MISSING = "missing evidence"


class DriftInputError(ValueError):
    """Inputs of a drift computation are malformed or empty."""


def psi_status(value: float | None) -> str:
    """ok / warn / alert by the one threshold set; None or NaN is missing evidence."""
    if value is None or not math.isfinite(value):
        return MISSING
    return ALERT if value >= PSI_ALERT else WARN if value >= PSI_WARN else OK


@dataclass(frozen=True)
class PSIResult:
    psi: float
    n_bins: int  # after collapsing repeated edges, atoms included
    edges: tuple[float, ...]  # interior edges (reference quantiles)
    atoms: tuple[float, ...]  # edges that are point masses of the reference and have a bin of their own
    reference_share: tuple[float, ...]  # per-bin proportions before the EPS floor
    current_share: tuple[float, ...]
    n_reference: int  # finite values used
    n_current: int
    reference_nan_share: float
    current_nan_share: float

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _finite(x: Any, name: str) -> tuple[np.ndarray, float]:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise DriftInputError(f"{name} must be 1-D, got shape {a.shape}")
    ok = np.isfinite(a)
    if not ok.any():
        raise DriftInputError(f"{name} has no finite values ({len(a)} values, all NaN/inf or empty)")
    return a[ok], float(1.0 - ok.mean())


def _bin_index(x: np.ndarray, edges: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """Bin of each value: intervals ``[e_{i-1}, e_i)`` are bins 0..len(edges) (outer ones open-ended); a value
    equal to an atom edge goes to that atom's own bin after them."""
    i = np.searchsorted(edges, x, side="right")
    prev = np.maximum(i - 1, 0)
    hit = (i > 0) & atoms[prev] & (x == edges[prev])
    atom_bin = len(edges) + np.cumsum(atoms)  # atom j -> len(edges) + 1 + (number of atoms before j)
    return np.where(hit, atom_bin[prev], i)


def psi_detail(reference: Any, current: Any, n_bins: int = N_BINS) -> PSIResult:
    """PSI with reference quantile bins and the bin proportions / NaN shares behind it (module docstring)."""
    if n_bins < 2:
        raise DriftInputError(f"n_bins must be >= 2, got {n_bins}")
    ref, ref_nan = _finite(reference, "reference")
    cur, cur_nan = _finite(current, "current")
    ref_sorted = np.sort(ref)
    q = np.quantile(ref_sorted, np.linspace(0.0, 1.0, n_bins + 1)[1:-1], method="inverted_cdf")
    edges, repeats = np.unique(q, return_counts=True)
    mass = (np.searchsorted(ref_sorted, edges, side="right") - np.searchsorted(ref_sorted, edges)) / len(ref)
    atoms = (repeats > 1) | (mass >= 1.0 / n_bins)
    k = len(edges) + 1 + int(atoms.sum())
    r = np.bincount(_bin_index(ref, edges, atoms), minlength=k) / len(ref)
    c = np.bincount(_bin_index(cur, edges, atoms), minlength=k) / len(cur)
    rf, cf = np.maximum(r, EPS), np.maximum(c, EPS)
    value = float(((cf - rf) * np.log(cf / rf)).sum())
    return PSIResult(psi=value, n_bins=k, edges=tuple(map(float, edges)),
                     atoms=tuple(map(float, edges[atoms])), reference_share=tuple(map(float, r)),
                     current_share=tuple(map(float, c)), n_reference=len(ref), n_current=len(cur),
                     reference_nan_share=ref_nan, current_nan_share=cur_nan)


def psi(reference: Any, current: Any, n_bins: int = N_BINS) -> float:
    """Population stability index of ``current`` against ``reference`` (NaNs excluded; see ``psi_detail``)."""
    return psi_detail(reference, current, n_bins).psi


def ks(reference: Any, current: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic two-sided p-value (NaNs excluded)."""
    a, _ = _finite(reference, "reference")
    b, _ = _finite(current, "current")
    a, b = np.sort(a), np.sort(b)
    x = np.concatenate([a, b])  # the ECDF difference changes only at observed values
    d = float(np.abs(np.searchsorted(a, x, side="right") / len(a)
                     - np.searchsorted(b, x, side="right") / len(b)).max())
    en = len(a) * len(b) / (len(a) + len(b))
    return d, float(kolmogorov(math.sqrt(en) * d))


# ------------------------------------------------------------------------------------------------ tables


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

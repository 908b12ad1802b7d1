"""Group fairness of recommendations (SPEC §8): adverse-impact ratio, statistical parity, equal opportunity.

Protected attributes come from the ``customers`` table: ``age`` -> ``age_band`` (0-17, 18-29, 30-44, 45-59, 60+;
the 0-17 band exists because Santander data holds minors with junior accounts), ``gender`` and ``province``.
A NULL value becomes the group ``"unknown"``.

For each attribute and group g, with ``selected`` the customers the policy picks (e.g. a product recommended):

* selection rate ``r_g = P(selected | g)``; true positive rate ``TPR_g = P(selected | y = 1, g)`` when outcomes
  are given (NaN outcome = unknown, excluded from TPR only);
* the **reference** group is the evaluable group with the highest selection rate (ties: first by name);
* adverse-impact ratio ``AIR_g = r_g / r_ref`` (four-fifths rule: fail below ``air_floor`` = 0.8),
  statistical parity difference ``SPD_g = r_g - r_ref``, equal-opportunity gap ``EO_g = TPR_g - TPR_ref``.

Evidence discipline (reference-repo-ops §5.2 and §10 items 18, 21: empty groups counted as DI = 1.0 "fair", no
minimum size, no CI): a group is *evaluable* only with ``n >= min_group_size`` and a known value; smaller groups are
``"insufficient evidence"`` and never pass; ``"unknown"`` is reported (``"informational"``) but is neither the
reference nor counted in the verdict. An attribute passes only with >= 2 evaluable groups all at AIR >= floor; an
attribute whose column is absent is ``"missing evidence"``. Overall: fail > missing evidence > insufficient
evidence > pass. The verdict uses point estimates (the four-fifths rule); intervals are reported beside them.

Intervals: percentile bootstrap over customers with the reference group held fixed. Replicates are count
vectors from ``model.evaluate``'s generator (same seed -> same resampled customers as the model metrics). Each
customer falls in one (group, selected, positive) cell, so the per-group sums of a whole chunk of replicates are
one weighted ``np.bincount``: no loop over customers, and over replicates only in memory-bounded chunks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ple_platform.core.model.evaluate import _percentiles, _replicate_weights
from ple_platform.core.reporting import json_ready

AGE_BAND_EDGES = (18, 30, 45, 60)
AGE_BANDS = ("0-17", "18-29", "30-44", "45-59", "60+")
UNKNOWN = "unknown"
PROTECTED_ATTRIBUTES = ("age_band", "gender", "province")
AIR_FLOOR = 0.8
MIN_GROUP_SIZE = 50

PASS = "pass"
FAIL = "fail"
INSUFFICIENT = "insufficient evidence"
MISSING = "missing evidence"
INFORMATIONAL = "informational"
STATUS_ORDER = (FAIL, MISSING, INSUFFICIENT, PASS)  # worst first: the overall status is the worst attribute's
_TOL = 1e-12  # AIR exactly at the floor passes despite float rounding


class FairnessInputError(ValueError):
    """Inputs of a fairness computation are malformed (shape, type, value)."""


# ------------------------------------------------------------------------------------------------ attributes


def _null_mask(values: np.ndarray) -> np.ndarray:
    """True where an object/str/float array holds None, NaN or an empty string."""
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind in "iub":
        return np.zeros(len(values), bool)
    if values.dtype.kind == "U":
        return values == ""
    return np.equal(values, None) | (values != values) | np.equal(values, "")  # object: NaN != NaN


def age_band(ages: Any) -> np.ndarray:
    """Age band labels (str array) of ages in years; NULL/NaN -> ``"unknown"``. Negative ages are an error."""
    a = np.asarray(ages)
    if a.ndim != 1:
        raise FairnessInputError(f"age_band: ages must be 1-D, got shape {a.shape}")
    null = _null_mask(a)
    try:
        num = np.where(null, 0, a).astype(float)
    except (TypeError, ValueError) as e:
        raise FairnessInputError(f"age_band: ages must be numbers or NULL ({e})") from e
    bad = ~null & (num < 0)
    if bad.any():
        raise FairnessInputError(f"age_band: {int(bad.sum())} negative ages (first at row {int(np.argmax(bad))}: "
                                 f"{num[np.argmax(bad)]})")
    labels = np.array(AGE_BANDS + (UNKNOWN,))
    return labels[np.where(null, len(AGE_BANDS), np.searchsorted(AGE_BAND_EDGES, num, side="right"))]


def group_labels(values: Any, name: str = "attribute") -> np.ndarray:
    """Str labels of a categorical column; NULL/NaN/empty -> ``"unknown"``."""
    v = np.asarray(values)
    if v.ndim != 1:
        raise FairnessInputError(f"{name}: group labels must be 1-D, got shape {v.shape}")
    null = _null_mask(v)
    return np.where(null, UNKNOWN, v.astype(str))


def protected_groups(customers: Mapping[str, Any]) -> dict[str, np.ndarray | None]:
    """``{"age_band", "gender", "province"}`` group labels from ``customers`` table columns; an absent column gives
    None, which ``fairness_report`` records as ``"missing evidence"`` for that attribute."""
    age = customers.get("age")
    return {
        "age_band": None if age is None else age_band(age),
        "gender": None if customers.get("gender") is None else group_labels(customers["gender"], "gender"),
        "province": None if customers.get("province") is None else group_labels(customers["province"], "province"),
    }


def selection_from_scores(scores: Any, top_fraction: float) -> np.ndarray:
    """Customers whose score is at or above the ``ceil(top_fraction * N)``-th highest score. Ties at the cut-off
    are all selected (row order must not decide who is selected), so the share can exceed ``top_fraction``."""
    s = np.asarray(scores, dtype=float)
    if s.ndim != 1:
        raise FairnessInputError(f"selection_from_scores: scores must be 1-D, got shape {s.shape}")
    if not 0.0 < top_fraction <= 1.0:
        raise FairnessInputError(f"selection_from_scores: top_fraction must be in (0, 1], got {top_fraction}")
    if not np.isfinite(s).all():
        raise FairnessInputError(f"selection_from_scores: {int((~np.isfinite(s)).sum())} non-finite scores")
    if len(s) == 0:
        return np.zeros(0, bool)
    k = math.ceil(top_fraction * len(s))
    cutoff = np.partition(s, len(s) - k)[len(s) - k]
    return s >= cutoff


# ------------------------------------------------------------------------------------------------ results


def _num(x: float) -> float | None:
    """JSON-safe number: NaN/inf -> None."""
    return float(x) if x is not None and math.isfinite(x) else None


@dataclass(frozen=True)
class GroupFairness:
    group: str
    n: int
    n_selected: int
    selection_rate: float | None
    n_positive: int | None  # customers with y_true = 1 (None without outcomes)
    tpr: float | None
    air: float | None
    air_ci: tuple[float | None, float | None]
    spd: float | None
    spd_ci: tuple[float | None, float | None]
    eo_gap: float | None
    eo_gap_ci: tuple[float | None, float | None]
    is_reference: bool
    status: str  # pass | fail | insufficient evidence | informational


@dataclass(frozen=True)
class AttributeFairness:
    attribute: str
    status: str  # pass | fail | insufficient evidence | missing evidence
    reason: str
    reference_group: str | None
    min_air: float | None  # lowest AIR over evaluable groups
    n_evaluable: int
    groups: tuple[GroupFairness, ...] = ()


@dataclass(frozen=True)
class FairnessResult:
    status: str
    attributes: dict[str, AttributeFairness]
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists, undefined numbers are None)."""
        return json_ready({"status": self.status, "params": self.params,
                       "attributes": {a: asdict(r) for a, r in self.attributes.items()}})

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{attribute: {"status", "min_air"}}``: the fairness evidence ``promotion.decide`` consumes."""
        return {a: {"status": r.status, "min_air": r.min_air} for a, r in self.attributes.items()}


def worst_status(statuses: Sequence[str]) -> str:
    """fail > missing evidence > insufficient evidence > pass; no statuses at all is missing evidence."""
    if not statuses:
        return MISSING
    return min(statuses, key=STATUS_ORDER.index)


# ------------------------------------------------------------------------------------------------ computation


@dataclass
class _Attr:
    name: str
    labels: np.ndarray  # sorted unique group names (K,)
    cell: np.ndarray  # (N,) cell of each customer: group * 4 + selected * 2 + positive
    sums: np.ndarray  # (4, K) point sums: n, selected, positive, selected & positive
    reps: list[np.ndarray] = field(default_factory=list)  # chunks of (4, b, K)


def _group_sums(w: np.ndarray, cell: np.ndarray, k: int) -> np.ndarray:
    """(4, b, K) sums per group of n, selected, positive, selected & positive, with customer weights w (b, N).
    One weighted bincount over (replicate, group, selected, positive) cells for the whole chunk."""
    b = w.shape[0]
    keys = (np.arange(b)[:, None] * (4 * k) + cell[None, :]).ravel()
    c = np.bincount(keys, weights=w.ravel(), minlength=b * 4 * k).reshape(b, k, 2, 2)  # [b, g, sel, pos]
    return np.stack([c.sum((2, 3)), c[:, :, 1, :].sum(2), c[:, :, :, 1].sum(2), c[:, :, 1, 1]])


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast_shapes(np.shape(num), np.shape(den)), np.nan)
    return np.divide(num, den, out=out, where=np.asarray(den) > 0)


def _stats(s: np.ndarray, ref: int) -> dict[str, np.ndarray]:
    """AIR/SPD/EO per group from (4, ..., K) sums, reference group index ``ref`` fixed."""
    rate, tpr = _ratio(s[1], s[0]), _ratio(s[3], s[2])
    return {"air": _ratio(rate, rate[..., ref:ref + 1]), "spd": rate - rate[..., ref:ref + 1],
            "eo": tpr - tpr[..., ref:ref + 1], "rate": rate, "tpr": tpr}


def _validate(selected: Any, groups: Mapping[str, Any], y_true: Any, min_group_size: int, n_boot: int,
              alpha: float, air_floor: float) -> tuple[np.ndarray, np.ndarray | None]:
    sel = np.asarray(selected)
    if sel.ndim != 1:
        raise FairnessInputError(f"fairness_report: selected must be 1-D, got shape {sel.shape}")
    if sel.dtype != bool:
        if sel.dtype.kind not in "iuf" or not np.isin(sel, (0, 1)).all():
            raise FairnessInputError("fairness_report: selected must be boolean (or 0/1), "
                                     f"got dtype {sel.dtype}")
        sel = sel.astype(bool)
    n = len(sel)
    for name, g in groups.items():
        if g is not None and np.shape(g) != (n,):
            raise FairnessInputError(f"fairness_report: group column {name!r} has shape {np.shape(g)}, "
                                     f"expected ({n},) like selected")
    y = None
    if y_true is not None:
        y = np.asarray(y_true, dtype=float)
        if y.shape != (n,):
            raise FairnessInputError(f"fairness_report: y_true has shape {y.shape}, expected ({n},)")
        known = np.isfinite(y)
        if not np.isin(y[known], (0.0, 1.0)).all():
            raise FairnessInputError("fairness_report: y_true must be 0/1 with NaN for unknown outcomes")
    if min_group_size < 1:
        raise FairnessInputError(f"fairness_report: min_group_size must be >= 1, got {min_group_size}")
    if n_boot < 0:
        raise FairnessInputError(f"fairness_report: n_boot must be >= 0, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise FairnessInputError(f"fairness_report: alpha must be in (0, 1), got {alpha}")
    if not 0.0 < air_floor <= 1.0:
        raise FairnessInputError(f"fairness_report: air_floor must be in (0, 1], got {air_floor}")
    return sel, y


def _attribute_result(a: _Attr, min_group_size: int, alpha: float, air_floor: float,
                      has_y: bool) -> AttributeFairness:
    n_k = a.sums[0]
    known = a.labels != UNKNOWN
    big = known & (n_k >= min_group_size)
    rate = _ratio(a.sums[1], n_k)
    if not big.any():
        ref = None
    else:  # highest selection rate among evaluable groups; argmax keeps the first name on ties
        ref = int(np.argmax(np.where(big, rate, -np.inf)))
    ref_ok = ref is not None and rate[ref] > 0
    point = _stats(a.sums, ref if ref is not None else 0)
    reps = _stats(np.concatenate(a.reps, axis=1), ref if ref is not None else 0) if a.reps else None

    def ci(key: str, k: int) -> tuple[float | None, float | None]:
        if reps is None or not ref_ok:
            return (None, None)
        lo, hi = _percentiles(reps[key][:, k], alpha)
        return (_num(lo), _num(hi))

    groups, evaluable_air = [], []
    for k, label in enumerate(a.labels):
        air = _num(point["air"][k]) if ref_ok else None
        if label == UNKNOWN:
            status = INFORMATIONAL
        elif not big[k] or air is None:
            status = INSUFFICIENT
        else:
            status = FAIL if air < air_floor - _TOL else PASS
            evaluable_air.append(air)
        groups.append(GroupFairness(
            group=str(label), n=int(n_k[k]), n_selected=int(a.sums[1][k]), selection_rate=_num(rate[k]),
            n_positive=int(a.sums[2][k]) if has_y else None, tpr=_num(point["tpr"][k]) if has_y else None,
            air=air, air_ci=ci("air", k),
            spd=_num(point["spd"][k]) if ref is not None else None, spd_ci=ci("spd", k),
            eo_gap=_num(point["eo"][k]) if has_y and ref is not None else None,
            eo_gap_ci=ci("eo", k) if has_y else (None, None),
            is_reference=ref == k, status=status))
    n_eval = len(evaluable_air)
    min_air = min(evaluable_air) if evaluable_air else None
    fails = [g for g in groups if g.status == FAIL]
    if fails:
        worst = min(fails, key=lambda g: g.air)
        status, reason = FAIL, (f"{len(fails)} group(s) below the four-fifths floor {air_floor:g}; worst "
                                f"{worst.group!r}: selection rate {worst.selection_rate:.4f} vs reference "
                                f"{str(a.labels[ref])!r} {rate[ref]:.4f} (AIR {worst.air:.3f})")
    elif n_eval >= 2:
        status, reason = PASS, (f"all {n_eval} evaluable groups have AIR >= {air_floor:g} (lowest {min_air:.3f}, "
                                f"reference {str(a.labels[ref])!r})")
    elif ref is not None and not ref_ok:
        status, reason = INSUFFICIENT, "no customer of any evaluable group was selected: AIR is undefined"
    else:
        status, reason = INSUFFICIENT, (f"{n_eval} evaluable group(s) (known value and n >= {min_group_size}); "
                                        "at least 2 are needed")
    return AttributeFairness(attribute=a.name, status=status, reason=reason,
                             reference_group=str(a.labels[ref]) if ref is not None else None,
                             min_air=min_air, n_evaluable=n_eval, groups=tuple(groups))


def fairness_report(selected: Any, groups: Mapping[str, Any], y_true: Any = None, *,
                    min_group_size: int = MIN_GROUP_SIZE, n_boot: int = 200, seed: int = 0, alpha: float = 0.05,
                    air_floor: float = AIR_FLOOR,
                    required: Sequence[str] = PROTECTED_ATTRIBUTES) -> FairnessResult:
    """Fairness of a selection over protected attributes.

    ``selected``: (N,) bool, the customers picked. ``groups``: ``{attribute: (N,) group labels}`` (str; NULLs are
    mapped to ``"unknown"``); a None value means the column is absent. Every attribute in ``required`` that is
    absent or None is ``"missing evidence"``; extra attributes in ``groups`` are evaluated too.
    ``y_true``: (N,) 0/1 outcomes with NaN = unknown, for TPR and the equal-opportunity gap (optional).
    """
    sel, y = _validate(selected, groups, y_true, min_group_size, n_boot, alpha, air_floor)
    pos = np.zeros(len(sel)) if y is None else np.nan_to_num(y, nan=0.0)
    flags = sel.astype(np.int64) * 2 + (pos > 0)

    names = list(dict.fromkeys([*required, *groups]))
    attrs: dict[str, _Attr] = {}
    for name in names:
        if groups.get(name) is None:
            continue
        labels, codes = np.unique(group_labels(groups[name], name), return_inverse=True)
        cell = codes.ravel() * 4 + flags
        attrs[name] = _Attr(name, labels, cell, _group_sums(np.ones((1, len(sel))), cell, len(labels))[:, 0, :])
    if n_boot > 0 and len(sel) > 0 and attrs:
        for w in _replicate_weights(len(sel), n_boot, seed):  # chunks bound memory; one draw serves every attribute
            for a in attrs.values():
                a.reps.append(_group_sums(w, a.cell, len(a.labels)))

    results: dict[str, AttributeFairness] = {}
    for name in names:
        if name not in attrs:
            results[name] = AttributeFairness(attribute=name, status=MISSING, reason=(
                f"protected attribute {name!r} is not available: fairness over it cannot be evidenced"),
                reference_group=None, min_air=None, n_evaluable=0)
        else:
            results[name] = _attribute_result(attrs[name], min_group_size, alpha, air_floor, y is not None)
    params = {"n_customers": int(len(sel)), "n_selected": int(sel.sum()), "min_group_size": int(min_group_size),
              "n_boot": int(n_boot), "seed": int(seed), "alpha": float(alpha), "air_floor": float(air_floor),
              "has_outcomes": y is not None}
    return FairnessResult(status=worst_status([r.status for r in results.values()]), attributes=results,
                          params=params)

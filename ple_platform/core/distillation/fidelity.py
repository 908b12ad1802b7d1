"""Fidelity of a student to the PLE teacher: the numbers behind the blocking asset checks (SPEC §7), pure numpy.

Per task kind (defaults in ``FidelityThresholds``, ml-anchors §4 and §7):

* binary     : ``auc_gap`` = teacher AUC − student AUC on the labelled rows (<= ``max_auc_gap``);
               ``spearman`` rank correlation of the two scores over all rows (>= ``min_spearman``);
               ``topk_agreement`` = |top-k(teacher) ∩ top-k(student)| / k, k = ``top_fraction`` × N customers
               (>= ``min_topk_agreement``); ``ece`` of the student against the labels (<= ``max_ece``);
* multiclass : ``top1_agreement`` (same argmax class; replaces the AUC gap, >= ``min_top1_agreement``);
               ``spearman`` = mean over customers of the rank correlation of the two class-probability vectors;
               ``topk_agreement`` = mean over customers of the overlap of the top ``class_top_k`` classes;
               ``ece`` = top-label ECE (confidence = max probability, outcome = argmax is right);
* regression : ``mae_gap_rel`` = (student MAE − teacher MAE) / teacher MAE (<= ``max_mae_gap_rel``),
               ``spearman`` and ``topk_agreement`` as binary.

Non-degeneracy (ml-anchors §4; the reference's fidelity gate passed students of a near-constant teacher):
``teacher_std`` >= ``min_teacher_std`` — the std of the teacher's score (binary), the RMS distance of its class
vectors to their mean (multiclass), the std of its predictions relative to the labels' std (regression) — and,
binary only, ``teacher_auc`` >= ``min_teacher_auc``. A check whose number cannot be computed (e.g. no labelled
positives) fails: missing evidence is not a pass.

Ranks use average ranks for ties (as ``scipy.stats.spearmanr``); top-k ties are broken by row order, the same
for teacher and student. Missing labels (NaN, -1 for binary/multiclass) only drop rows from the label-based
numbers; agreement numbers use every row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ple_platform.core.model.evaluate import TOP_K, ece, mae, macro_f1, roc_auc
from ple_platform.core.tasks.spec import TASKS, TASKS_BY_NAME


class FidelityInputError(ValueError):
    """Bad input to a fidelity computation."""


@dataclass(frozen=True)
class FidelityThresholds:
    max_auc_gap: float = 0.03
    min_spearman: float = 0.8
    min_topk_agreement: float = 0.7
    top_fraction: float = 0.1
    max_ece: float = 0.05
    min_top1_agreement: float = 0.7
    class_top_k: int = TOP_K
    max_mae_gap_rel: float = 0.10
    min_teacher_std: float = 0.02
    min_teacher_auc: float = 0.55

    def __post_init__(self) -> None:
        problems = [f"{f.name}={getattr(self, f.name)!r} must be a finite number" for f in fields(self)
                    if not isinstance(getattr(self, f.name), (int, float)) or not math.isfinite(getattr(self, f.name))]
        if not problems:
            if not 0.0 < self.top_fraction <= 1.0:
                problems.append(f"top_fraction={self.top_fraction} must lie in (0, 1]")
            if int(self.class_top_k) < 1:
                problems.append(f"class_top_k={self.class_top_k} must be >= 1")
        if problems:
            raise FidelityInputError("FidelityThresholds: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FidelityThresholds:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FidelityInputError(f"FidelityThresholds: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**dict(d))


@dataclass(frozen=True)
class FidelityResult:
    task: str
    kind: str
    metrics: dict[str, float]
    checks: dict[str, bool]  # check name -> passed
    passed: bool
    failures: list[str] = field(default_factory=list)  # one readable sentence per failed check
    thresholds: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ building blocks


def average_ranks(x) -> np.ndarray:
    """1-based ranks with ties at their average rank, along the last axis of a (N,) or (N, M) array."""
    x = np.asarray(x, dtype=float)
    if x.ndim not in (1, 2):
        raise FidelityInputError(f"ranks need a (N,) or (N, M) array, got {x.shape}")
    x2 = x[None, :] if x.ndim == 1 else x
    n, m = x2.shape
    if m == 0:
        return np.zeros_like(x)
    order = np.argsort(x2, axis=1, kind="mergesort")
    xs = np.take_along_axis(x2, order, axis=1)
    new = np.ones_like(xs, dtype=bool)
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]  # a block of ties starts here; every row starts a block
    flat = new.ravel()
    block = np.cumsum(flat) - 1
    start = np.tile(np.arange(m), n)[flat]
    avg = start + (np.bincount(block) - 1) / 2.0 + 1.0
    ranks = np.empty_like(xs)
    np.put_along_axis(ranks, order, avg[block].reshape(n, m), axis=1)
    return ranks[0] if x.ndim == 1 else ranks


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    num = (a * b).sum(-1)
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den > 0)


def spearman(a, b) -> float:
    """Spearman rank correlation of two (N,) vectors (average ranks for ties); NaN when either is constant."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise FidelityInputError(f"spearman needs two (N,) vectors of one length, got {a.shape} and {b.shape}")
    return float(_pearson_rows(average_ranks(a), average_ranks(b)))


def topk_agreement(a, b, top_fraction: float) -> float:
    """|top-k(a) ∩ top-k(b)| / k over rows, k = max(1, round(top_fraction × N)) highest scores."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise FidelityInputError(f"top-k agreement needs two (N,) vectors of one length, got {a.shape}, {b.shape}")
    if len(a) == 0:
        return float("nan")
    k = max(1, int(round(top_fraction * len(a))))
    in_a = np.zeros(len(a), dtype=bool)
    in_b = np.zeros(len(b), dtype=bool)
    in_a[np.argsort(-a, kind="stable")[:k]] = True
    in_b[np.argsort(-b, kind="stable")[:k]] = True
    return float((in_a & in_b).sum() / k)


def _class_topk_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    k = min(k, a.shape[1])
    in_a = np.zeros(a.shape, dtype=bool)
    in_b = np.zeros(b.shape, dtype=bool)
    np.put_along_axis(in_a, np.argsort(-a, axis=1, kind="stable")[:, :k], True, axis=1)
    np.put_along_axis(in_b, np.argsort(-b, axis=1, kind="stable")[:, :k], True, axis=1)
    return float(((in_a & in_b).sum(1) / k).mean())


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


# ------------------------------------------------------------------------------------------------ checks

# name -> (metric key, comparison, threshold field, description)
_CHECKS: dict[str, dict[str, tuple[str, str, str, str]]] = {
    "binary": {
        "auc_gap": ("auc_gap", "<=", "max_auc_gap", "AUC gap to the teacher"),
        "spearman": ("spearman", ">=", "min_spearman", "Spearman rank correlation with the teacher"),
        "topk_agreement": ("topk_agreement", ">=", "min_topk_agreement", "top-k agreement with the teacher"),
        "ece": ("student_ece", "<=", "max_ece", "student ECE"),
        "teacher_std": ("teacher_std", ">=", "min_teacher_std", "teacher score std (non-degeneracy)"),
        "teacher_auc": ("teacher_auc", ">=", "min_teacher_auc", "teacher AUC (viability floor)"),
    },
    "multiclass": {
        "top1_agreement": ("top1_agreement", ">=", "min_top1_agreement", "top-1 class agreement with the teacher"),
        "spearman": ("spearman", ">=", "min_spearman", "mean Spearman rank correlation of the class scores"),
        "topk_agreement": ("topk_agreement", ">=", "min_topk_agreement", "top-k class agreement with the teacher"),
        "ece": ("student_ece", "<=", "max_ece", "student top-label ECE"),
        "teacher_std": ("teacher_std", ">=", "min_teacher_std", "teacher class-score spread (non-degeneracy)"),
    },
    "regression": {
        "mae_gap_rel": ("mae_gap_rel", "<=", "max_mae_gap_rel", "relative MAE gap to the teacher"),
        "spearman": ("spearman", ">=", "min_spearman", "Spearman rank correlation with the teacher"),
        "topk_agreement": ("topk_agreement", ">=", "min_topk_agreement", "top-k agreement with the teacher"),
        "teacher_std": ("teacher_std_rel", ">=", "min_teacher_std",
                        "teacher prediction std relative to the labels' (non-degeneracy)"),
    },
}


def _inputs(task: str, y_true, teacher_pred, student_pred) -> tuple[str, np.ndarray, np.ndarray, np.ndarray,
                                                                     np.ndarray]:
    if task not in TASKS_BY_NAME:
        raise FidelityInputError(f"unknown task {task!r}; known: {[t.name for t in TASKS]}")
    spec = TASKS_BY_NAME[task]
    y = np.asarray(y_true, dtype=float)
    t, s = np.asarray(teacher_pred, dtype=float), np.asarray(student_pred, dtype=float)
    if y.ndim != 1:
        raise FidelityInputError(f"{task}: y_true must be (N,), got {y.shape}")
    n = len(y)
    want = (n, spec.n_classes) if spec.kind == "multiclass" else (n,)
    for name, p in (("teacher_pred", t), ("student_pred", s)):
        if p.shape != want:
            raise FidelityInputError(f"{task}: {name} must be {want} for {n} labels, got {p.shape}")
        if not np.isfinite(p).all():
            raise FidelityInputError(f"{task}: {name} has {int((~np.isfinite(p)).sum())} non-finite values")
    lab = np.isfinite(y)
    if spec.kind != "regression":
        lab &= y != -1
    if spec.kind == "binary" and not np.isin(y[lab], (0.0, 1.0)).all():
        raise FidelityInputError(f"{task}: binary labels must be 0/1 (NaN or -1 = missing)")
    if spec.kind == "multiclass" and lab.any():
        yl = y[lab]
        if (yl % 1).any() or yl.min() < 0 or yl.max() >= spec.n_classes:
            raise FidelityInputError(f"{task}: class labels must be integers in [0, {spec.n_classes})")
    return spec.kind, y, t, s, lab


def _metrics(kind: str, y: np.ndarray, t: np.ndarray, s: np.ndarray, lab: np.ndarray,
             th: FidelityThresholds) -> dict[str, float]:
    yl = y[lab]
    if kind == "binary":
        t_auc, s_auc = roc_auc(yl, t[lab]), roc_auc(yl, s[lab])
        return {"teacher_auc": t_auc, "student_auc": s_auc, "auc_gap": t_auc - s_auc, "spearman": spearman(t, s),
                "topk_agreement": topk_agreement(t, s, th.top_fraction), "student_ece": ece(yl, s[lab]),
                "teacher_std": float(t.std()) if len(t) else float("nan"), "n_labelled": float(lab.sum())}
    if kind == "multiclass":
        yi = yl.astype(np.int64)
        sl = s[lab]
        correct = (sl.argmax(1) == yi).astype(float)
        spread = np.sqrt(((t - t.mean(0)) ** 2).sum(1).mean()) if len(t) else float("nan")
        return {"top1_agreement": float((t.argmax(1) == s.argmax(1)).mean()) if len(t) else float("nan"),
                "spearman": _nanmean(_pearson_rows(average_ranks(t), average_ranks(s))) if len(t) else float("nan"),
                "topk_agreement": _class_topk_agreement(t, s, int(th.class_top_k)) if len(t) else float("nan"),
                "student_ece": ece(correct, sl.max(1)) if len(yl) else float("nan"),
                "teacher_macro_f1": macro_f1(yi, t[lab]) if len(yl) else float("nan"),
                "student_macro_f1": macro_f1(yi, sl) if len(yl) else float("nan"),
                "teacher_std": float(spread), "n_labelled": float(lab.sum())}
    t_mae, s_mae = mae(yl, t[lab]), mae(yl, s[lab])
    y_std = float(yl.std()) if len(yl) else float("nan")
    return {"teacher_mae": t_mae, "student_mae": s_mae,
            "mae_gap_rel": (s_mae - t_mae) / max(t_mae, 1e-12) if math.isfinite(t_mae) else float("nan"),
            "spearman": spearman(t, s), "topk_agreement": topk_agreement(t, s, th.top_fraction),
            "teacher_std_rel": float(t.std()) / y_std if y_std > 0 else float("nan"),
            "n_labelled": float(lab.sum())}


def fidelity(task: str, y_true, teacher_pred, student_pred,
             thresholds: FidelityThresholds | None = None) -> FidelityResult:
    """The fidelity numbers and checks of one task on one month (module docstring). ``y_true``: (N,) labels
    (NaN / -1 missing); predictions in ``evaluate_predictions``' format: binary P(y=1) (N,), multiclass class
    probabilities (N, C), regression values (N,)."""
    th = thresholds or FidelityThresholds()
    kind, y, t, s, lab = _inputs(task, y_true, teacher_pred, student_pred)
    metrics = {k: float(v) for k, v in _metrics(kind, y, t, s, lab, th).items()}
    checks: dict[str, bool] = {}
    failures: list[str] = []
    for name, (key, op, limit_field, description) in _CHECKS[kind].items():
        value, limit = metrics[key], float(getattr(th, limit_field))
        ok = math.isfinite(value) and (value <= limit if op == "<=" else value >= limit)
        checks[name] = bool(ok)
        if ok:
            continue
        if not math.isfinite(value):
            failures.append(f"{task}: {description} ({key}) is not computable on this data (NaN; e.g. no labelled "
                            f"rows, a single class or constant scores) — no evidence is a failure")
        else:
            failed_op = ">" if op == "<=" else "<"
            failures.append(f"{task}: {description} ({key}) {value:.4f} {failed_op} {limit:g} ({limit_field})")
    return FidelityResult(task, kind, metrics, checks, all(checks.values()), failures, th.to_dict())

"""Evaluation of the teacher, the baselines and the students (SPEC §6, ml-anchors §7): numpy in, plain dicts out.

Per task kind (``TASKS``):

* binary      : ``auc`` (ROC, ties at half), ``pr_auc`` (average precision, sklearn's step definition),
                ``ece`` (15 equal-width bins, bin ``min(floor(15 p), 14)``), ``logloss`` and ``prevalence``
                (the positive rate = PR-AUC of a random score, so PR-AUC can be read against it);
* multiclass  : ``macro_f1`` (argmax prediction; macro over the classes present in y_true or y_pred, as
                sklearn), ``top3_acc``, ``ndcg@3`` (one relevant class: 1/log2(1 + rank)); each with its
                trivial baseline ``<metric>_majority``: every customer gets the same ranking by class frequency
                (by default the frequency in the evaluated labels, i.e. an optimistic trivial baseline; pass
                ``class_priors`` to use the training frequency). The reference never reported this baseline
                although ~60% of nba_primary is class 0 (reference-repo-model §10 item 22);
* regression  : ``mae`` and ``r2``.

Missing labels (NaN; -1 for binary/multiclass, as ``losses.label_mask``) are excluded per task. Nothing here
tunes a threshold: macro-F1 is taken at the argmax (reference item 22 tuned the F1 threshold on validation).

Confidence intervals: percentile bootstrap over customers. A replicate is a vector of resampling counts
(customer i drawn c_i times), and every metric is written as a function of the scores sorted once plus such
count weights, so the 200 replicates cost matrix products over (n_boot, N) instead of 200 re-sorts. Replicate b
is drawn from ``default_rng([seed, b])`` over the *full* customer axis before a task's missing labels are
dropped, so with the same seed every task, and every model scored on the same customers, sees the same
resampled customers: CIs of differences (``compare_predictions``) are paired.

Gate explanations: ``gate_entropy`` (normalised by log E) and ``gate_faithfulness`` (masking the top-weighted
*shared* layer-0 expert must move the task's output more than masking a random other shared expert).
``gate_faithfulness_control`` is the check that can fail: the same score with mean-ablation, against a
no-information control (the gates of other customers), reported as a margin with a bootstrap CI.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ple_platform.core.tasks.spec import TASKS, TASKS_BY_NAME

if TYPE_CHECKING:  # torch is only needed by the gate functions
    import torch

ECE_BINS = 15
TOP_K = 3
MAP_K = 7
_EPS = 1e-15

# ------------------------------------------------------------------------------------------------ helpers


def _np(x: Any) -> np.ndarray:
    """numpy view of an array-like or a (possibly CUDA / grad-carrying) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def weighted_metric(fn: Callable[..., np.ndarray]) -> Callable[..., Any]:
    """Wrap ``fn(y, p, w) -> (B,)`` (``w``: (B, n) non-negative weights, e.g. bootstrap counts) into the public
    ``metric(y, p, weights=None)``: a float without weights, a (B,) array with (B, n) weights.
    ``bootstrap_ci`` uses the weighted form of metrics marked this way."""

    @functools.wraps(fn)
    def metric(y, p, weights=None, **kw):
        y, p = _np(y), _np(p)
        if weights is None:
            return float(fn(y, p, np.ones((1, len(y))), **kw)[0])
        w = np.asarray(weights, dtype=float)
        if w.ndim == 1:
            return float(fn(y, p, w[None, :], **kw)[0])
        return fn(y, p, w, **kw)

    metric.supports_weights = True  # type: ignore[attr-defined]
    metric.weighted = fn  # type: ignore[attr-defined]
    return metric


def _ratio(num: np.ndarray, den: np.ndarray, empty: float = np.nan) -> np.ndarray:
    """num / den, ``empty`` where den <= 0."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.full(np.broadcast_shapes(num.shape, den.shape), empty)
    return np.divide(num, den, out=out, where=den > 0)


def _tie_blocks(sorted_scores: np.ndarray) -> np.ndarray:
    """Start index of each run of equal scores in a sorted vector."""
    return np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])


def _nan(w: np.ndarray) -> np.ndarray:
    return np.full(w.shape[0], np.nan)


# ------------------------------------------------------------------------------------------------ binary


def _binary_blocks(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight of each run of equal scores, scores ascending: two (B, n_blocks) arrays.
    One sort per task; the (B, n) weights are gathered once and summed per tie block only if there are ties."""
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    ws = w[:, order]
    wp = ws * (y[order] > 0.5)
    wn = ws - wp
    if len(ps) > 1 and bool((ps[1:] == ps[:-1]).any()):
        starts = _tie_blocks(ps)
        wp, wn = np.add.reduceat(wp, starts, axis=1), np.add.reduceat(wn, starts, axis=1)
    return wp, wn


def _auc_from_blocks(wp: np.ndarray, wn: np.ndarray) -> np.ndarray:
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each block (integer counts: exact)
    return _ratio((wp * (below + 0.5 * wn)).sum(1), wp.sum(1) * wn.sum(1))


def _ap_from_blocks(wp: np.ndarray, wn: np.ndarray) -> np.ndarray:
    # Threshold at block j: predicted positive = block j and every higher-scored block (suffix sums).
    ctp = np.cumsum(wp[:, ::-1], axis=1)[:, ::-1]
    cfp = np.cumsum(wn[:, ::-1], axis=1)[:, ::-1]
    precision = _ratio(ctp, ctp + cfp, empty=0.0)
    return _ratio((wp * precision).sum(1), wp.sum(1))


def _ranking_pair(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ROC AUC, average precision) from one sort and one gather."""
    if len(y) == 0:
        return _nan(w), _nan(w)
    wp, wn = _binary_blocks(y, p, w)
    return _auc_from_blocks(wp, wn), _ap_from_blocks(wp, wn)


@weighted_metric
def roc_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC AUC = P(score_pos > score_neg) + 0.5 P(tie), weighted; NaN when a class is absent."""
    if len(y) == 0:
        return _nan(w)
    return _auc_from_blocks(*_binary_blocks(y, p, w))


@weighted_metric
def pr_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision: sum over distinct thresholds of (recall increment) x precision (sklearn's
    ``average_precision_score``, no interpolation); NaN without positives."""
    if len(y) == 0:
        return _nan(w)
    return _ap_from_blocks(*_binary_blocks(y, p, w))


@weighted_metric
def ece(y: np.ndarray, p: np.ndarray, w: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Expected calibration error: sum_b (n_b / n) |mean(y)_b - mean(p)_b| over ``n_bins`` equal-width bins of
    [0, 1] (bin ``min(floor(n_bins p), n_bins - 1)``; scores are clipped to [0, 1])."""
    if len(y) == 0:
        return _nan(w)
    p = np.clip(p.astype(float), 0.0, 1.0)
    onehot = np.zeros((len(p), n_bins))
    onehot[np.arange(len(p)), np.minimum((p * n_bins).astype(int), n_bins - 1)] = 1.0
    gap = np.abs(w @ (onehot * y[:, None]) - w @ (onehot * p[:, None])).sum(1)
    return _ratio(gap, w.sum(1))


@weighted_metric
def log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(float), _EPS, 1 - _EPS)
    loss = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return _ratio(w @ loss, w.sum(1))


@weighted_metric
def prevalence(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    return _ratio(w @ (y > 0.5).astype(float), w.sum(1))


# ------------------------------------------------------------------------------------------------ multiclass


def _true_rank(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """1-based rank of the true class in each row, classes sorted by score (ties: lower class index first,
    so rank 1 is ``argmax``)."""
    n, c = probs.shape
    pt = probs[np.arange(n), y][:, None]
    return (probs > pt).sum(1) + ((probs == pt) & (np.arange(c)[None, :] < y[:, None])).sum(1) + 1


def _as_classes(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2:
        raise ValueError(f"multiclass scores must be (N, C), got shape {probs.shape}")
    y = np.asarray(y).astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise ValueError(f"class labels must lie in [0, {probs.shape[1]}), got [{y.min()}, {y.max()}]")
    return y, probs


@weighted_metric
def macro_f1(y: np.ndarray, probs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Macro-F1 of the argmax prediction over the classes present in y_true or y_pred (sklearn's default)."""
    y, probs = _as_classes(y, probs)
    if len(y) == 0:
        return _nan(w)
    n, c = probs.shape
    pred = probs.argmax(1)
    true_1h, pred_1h = np.zeros((n, c)), np.zeros((n, c))
    true_1h[np.arange(n), y] = 1.0
    pred_1h[np.arange(n), pred] = 1.0
    n_true, n_pred = w @ true_1h, w @ pred_1h
    tp = w @ (true_1h * (pred == y)[:, None])
    present = (n_true + n_pred) > 0
    f1 = np.where(present, 2 * tp / np.where(present, n_true + n_pred, 1.0), 0.0)
    return _ratio(f1.sum(1), present.sum(1).astype(float))


@weighted_metric
def top_k_accuracy(y: np.ndarray, probs: np.ndarray, w: np.ndarray, k: int = TOP_K) -> np.ndarray:
    y, probs = _as_classes(y, probs)
    if len(y) == 0:
        return _nan(w)
    return _ratio(w @ (_true_rank(y, probs) <= k).astype(float), w.sum(1))


@weighted_metric
def ndcg_at_k(y: np.ndarray, probs: np.ndarray, w: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """NDCG@k with the true class as the only relevant item (ideal DCG = 1): 1/log2(1 + rank) if rank <= k."""
    y, probs = _as_classes(y, probs)
    if len(y) == 0:
        return _nan(w)
    rank = _true_rank(y, probs)
    gain = np.where(rank <= k, 1.0 / np.log2(rank + 1.0), 0.0)
    return _ratio(w @ gain, w.sum(1))


def majority_scores(y: np.ndarray, n_classes: int, class_prior: np.ndarray | None = None) -> np.ndarray:
    """(N, C) constant scores of the trivial baseline: every customer ranks classes by their frequency."""
    y = np.asarray(y).astype(np.int64)
    prior = (np.bincount(y, minlength=n_classes).astype(float) if class_prior is None
             else np.asarray(class_prior, dtype=float))
    if prior.shape != (n_classes,):
        raise ValueError(f"class prior must have {n_classes} entries, got {prior.shape}")
    return np.broadcast_to(prior / max(prior.sum(), _EPS), (len(y), n_classes))


# ------------------------------------------------------------------------------------------------ regression


@weighted_metric
def mae(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    return _ratio(w @ np.abs(y - p), w.sum(1))


@weighted_metric
def r2(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """1 - SSE / SST (SST around the weighted mean of y); NaN when y is constant."""
    if len(y) == 0:
        return _nan(w)
    yc = y - y.mean()  # centring first keeps SST accurate for large offsets
    sw = w.sum(1)
    sst = w @ yc**2 - (w @ yc) ** 2 / np.where(sw > 0, sw, 1.0)
    sse = w @ (y - p) ** 2
    sst = np.where(sst > 1e-12 * np.maximum(w @ yc**2, _EPS), sst, 0.0)
    return 1.0 - _ratio(sse, sst)


# ------------------------------------------------------------------------------------------------ ranking


def average_precision_at_k(scores, held, acquired, k: int = MAP_K) -> tuple[np.ndarray, np.ndarray]:
    """Per-customer AP@k of the product ranking (Kaggle Santander definition) and whether the customer acquired
    anything.

    Candidates are the products *not* held at t (held ones are never recommended); relevant = acquired at t+1
    and not held at t. ``AP@k = sum_{i<=k} P(i) rel(i) / min(#relevant, k)``; 0 for a customer without any
    acquisition (``has_relevant`` False). NaN scores count as "never recommend".
    """
    s = _np(scores).astype(float)
    held, acquired = _np(held).astype(bool), _np(acquired).astype(bool)
    if not (s.shape == held.shape == acquired.shape) or s.ndim != 2:
        raise ValueError(f"scores, held, acquired must share one (N, P) shape: "
                         f"{s.shape} {held.shape} {acquired.shape}")
    k = min(k, s.shape[1])
    s = np.where(held | np.isnan(s), -np.inf, s)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    real = np.isfinite(np.take_along_axis(s, top, axis=1))  # fewer than k candidates: the rest are empty slots
    relevant = acquired & ~held
    rel = np.take_along_axis(relevant, top, axis=1) & real
    n_rel = relevant.sum(1)
    precision = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    ap = np.where(n_rel > 0, (precision * rel).sum(1) / np.maximum(np.minimum(n_rel, k), 1), 0.0)
    return ap, n_rel > 0


def map_at_k(scores, held, acquired, k: int = MAP_K, include_empty: bool = False) -> float:
    """MAP@k of the product ranking over products not held at t; relevant = newly acquired at t+1.

    By default customers without any acquisition are **excluded** (the ranking cannot be judged on them), so the
    value is comparable across months with different acquisition rates. ``include_empty=True`` gives Kaggle's
    leaderboard definition (those customers score 0): ``kaggle = excluded x share of customers with an
    acquisition`` (that share is the oracle ceiling, 0.0319 in May 2016).
    """
    ap, has = average_precision_at_k(scores, held, acquired, k)
    if include_empty:
        return float(ap.mean()) if len(ap) else float("nan")
    return float(ap[has].mean()) if has.any() else float("nan")


def map_at_k_ci(scores, held, acquired, k: int = MAP_K, include_empty: bool = False, n_boot: int = 200,
                seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """``map_at_k`` with a percentile bootstrap CI over customers (paired with ``evaluate_predictions`` for the
    same seed and customer order)."""
    ap, has = average_precision_at_k(scores, held, acquired, k)
    keep = np.ones_like(has) if include_empty else has
    fn = mae.weighted  # mean |AP - 0| = mean AP
    return _ci({"map": fn}, ap, np.zeros_like(ap), keep, n_boot, seed, alpha)["map"]


# ------------------------------------------------------------------------------------------------ bootstrap


def _replicate_indices(n: int, b: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, b]).integers(0, n, n)


def _replicate_weights(n: int, n_boot: int, seed: int, max_elems: int = 4_000_000) -> Iterator[np.ndarray]:
    """Chunks of (b, n) resampling counts; replicate b depends only on (seed, b, n)."""
    chunk = max(1, min(n_boot, max_elems // max(n, 1)))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        w = np.empty((stop - start, n))
        for i, b in enumerate(range(start, stop)):
            w[i] = np.bincount(_replicate_indices(n, b, seed), minlength=n)
        yield w


def _percentiles(reps: np.ndarray, alpha: float) -> tuple[float, float]:
    reps = reps[np.isfinite(reps)]
    if len(reps) == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


MetricFns = Mapping[Any, Callable]  # name -> fn(y, p, w) -> (B,); or a tuple of names -> fn returning a tuple


def _eval_fns(fns: MetricFns, y: np.ndarray, p: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, fn in fns.items():
        if isinstance(key, tuple):
            out.update(zip(key, fn(y, p, w), strict=True))
        else:
            out[key] = fn(y, p, w)
    return out


Job = tuple[MetricFns, np.ndarray, np.ndarray, np.ndarray]  # (fns, y, p, keep) over one customer axis


def _replicates_many(jobs: Sequence[Job], n_boot: int, seed: int) -> list[dict[str, tuple[float, np.ndarray]]]:
    """For each job: {metric: (point value on the rows ``keep``, (n_boot,) replicate values)}. Replicates resample
    the full row axis (before ``keep``), and jobs over the same number of rows share them (module docstring)."""
    results: list[dict[str, tuple[float, np.ndarray]]] = [{} for _ in jobs]
    by_n: dict[int, list[int]] = {}
    for j, (_, y, _, _) in enumerate(jobs):
        by_n.setdefault(len(y), []).append(j)
    for n, members in by_n.items():
        kept = {j: (jobs[j][1][jobs[j][3]], jobs[j][2][jobs[j][3]], bool(jobs[j][3].all())) for j in members}
        reps: dict[int, dict[str, list[np.ndarray]]] = {j: {} for j in members}
        if n_boot > 0:
            for w in _replicate_weights(n, n_boot, seed):
                for j in members:
                    yk, pk, full = kept[j]
                    for name, v in _eval_fns(jobs[j][0], yk, pk, w if full else w[:, jobs[j][3]]).items():
                        reps[j].setdefault(name, []).append(v)
        for j in members:
            yk, pk, _ = kept[j]
            point = _eval_fns(jobs[j][0], yk, pk, np.ones((1, len(yk))))
            results[j] = {name: (float(v[0]), np.concatenate(reps[j][name]) if n_boot > 0 else np.empty(0))
                          for name, v in point.items()}
    return results


def _replicates(fns: MetricFns, y: np.ndarray, p: np.ndarray, keep: np.ndarray, n_boot: int,
                seed: int) -> dict[str, tuple[float, np.ndarray]]:
    return _replicates_many([(fns, y, p, keep)], n_boot, seed)[0]


def _ci(fns, y, p, keep, n_boot, seed, alpha) -> dict[str, dict[str, float]]:
    out = {}
    for name, (value, reps) in _replicates(fns, y, p, keep, n_boot, seed).items():
        lo, hi = _percentiles(reps, alpha) if math.isfinite(value) else (float("nan"), float("nan"))
        out[name] = {"value": value, "lo": lo, "hi": hi}
    return out


def bootstrap_ci(metric_fn: Callable, y, p, n_boot: int = 200, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, float]:
    """``{"value", "lo", "hi"}``: the metric on all rows and the (alpha/2, 1 - alpha/2) percentiles of it over
    ``n_boot`` resamples of the rows (customers) with replacement. Rows with a NaN label are dropped.

    Metrics of this module (``weighted_metric``) run vectorised on resampling counts; any other
    ``metric_fn(y, p) -> float`` is called once per replicate on the same resamples (identical result)."""
    y, p = _np(y), _np(p)
    if y.ndim == 1 and np.issubdtype(y.dtype, np.floating):
        ok = np.isfinite(y)
        y, p = y[ok], p[ok]
    if getattr(metric_fn, "supports_weights", False):
        return _ci({"m": metric_fn.weighted}, y, p, np.ones(len(y), bool), n_boot, seed, alpha)["m"]
    value = float(metric_fn(y, p))
    reps = np.array([metric_fn(y[idx], p[idx]) for idx in (_replicate_indices(len(y), b, seed)
                                                            for b in range(n_boot))], dtype=float)
    lo, hi = _percentiles(reps, alpha) if math.isfinite(value) else (float("nan"), float("nan"))
    return {"value": value, "lo": lo, "hi": hi}


# ------------------------------------------------------------------------------------------------ per task


def _task_inputs(task: str, y, p) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    spec = TASKS_BY_NAME[task]
    y = _np(y).astype(float).ravel()
    p = _np(p).astype(float)
    keep = np.isfinite(y)
    if spec.kind != "regression":
        keep &= y != -1
    if spec.kind == "multiclass":
        if p.ndim != 2 or p.shape[1] != spec.n_classes:
            raise ValueError(f"{task}: expected (N, {spec.n_classes}) class scores, got {p.shape}")
        y = np.where(keep, y, 0.0)
    else:
        p = p.reshape(len(p), -1)
        if p.shape[1] != 1:
            raise ValueError(f"{task}: expected (N,) scores, got {p.shape}")
        p = p[:, 0]
    if len(p) != len(y):
        raise ValueError(f"{task}: {len(y)} labels but {len(p)} predictions")
    return spec.kind, y, p, keep


def _task_fns(kind: str, y: np.ndarray, keep: np.ndarray, n_classes: int, k: int, n_bins: int,
              class_prior: np.ndarray | None) -> dict[Any, Callable]:
    if kind == "binary":
        return {("auc", "pr_auc"): _ranking_pair,
                "ece": functools.partial(ece.weighted, n_bins=n_bins), "logloss": log_loss.weighted,
                "prevalence": prevalence.weighted}
    if kind == "regression":
        return {"mae": mae.weighted, "r2": r2.weighted}
    base = majority_scores(y[keep], n_classes, class_prior)[:1]  # one row; broadcast below
    fns: dict[str, Callable] = {
        "macro_f1": macro_f1.weighted,
        f"top{k}_acc": functools.partial(top_k_accuracy.weighted, k=k),
        f"ndcg@{k}": functools.partial(ndcg_at_k.weighted, k=k),
    }

    def on_majority(fn: Callable) -> Callable:
        return lambda yy, _p, w: fn(yy, np.broadcast_to(base, (len(yy), n_classes)), w)

    for name, fn in list(fns.items()):
        fns[f"{name}_majority"] = on_majority(fn)
    return fns


def task_replicates(labels: Mapping[str, Any], preds: Mapping[str, Any], n_boot: int = 200, seed: int = 0,
                    k: int = TOP_K, n_bins: int = ECE_BINS,
                    class_priors: Mapping[str, Any] | None = None) -> dict[str, dict[str, tuple[float, np.ndarray]]]:
    """{task: {metric: (value, (n_boot,) replicate values)}} for the tasks present in both dicts, in ``TASKS``
    order; replicate b of every task (and of every call with the same seed and N) resamples the same customers."""
    unknown = set(preds) - set(TASKS_BY_NAME)
    if unknown:
        raise KeyError(f"unknown tasks {sorted(unknown)}")
    names, jobs = [], []
    for spec in TASKS:
        if spec.name not in preds or spec.name not in labels:
            continue
        kind, y, p, keep = _task_inputs(spec.name, labels[spec.name], preds[spec.name])
        prior = None if class_priors is None or spec.name not in class_priors else _np(class_priors[spec.name])
        names.append(spec.name)
        jobs.append((_task_fns(kind, y, keep, spec.n_classes, k, n_bins, prior), y, p, keep))
    return dict(zip(names, _replicates_many(jobs, n_boot, seed), strict=True))


def evaluate_predictions(labels: Mapping[str, Any], preds: Mapping[str, Any], n_boot: int = 200, seed: int = 0,
                         alpha: float = 0.05, k: int = TOP_K, n_bins: int = ECE_BINS,
                         class_priors: Mapping[str, Any] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{task: {metric: {"value", "lo", "hi"}}} for every task in both ``labels`` and ``preds``.

    ``preds[task]``: binary -> P(y=1) (N,); multiclass -> class probabilities (N, C) (any scores ranking the
    classes work for F1/top-k/NDCG); regression -> values (N,). ``labels[task]``: (N,) with NaN (or -1 for
    binary/multiclass) where missing. ``n_boot=0``: point values only (lo = hi = NaN).
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for task, metrics in task_replicates(labels, preds, n_boot, seed, k, n_bins, class_priors).items():
        out[task] = {}
        for name, (value, reps) in metrics.items():
            lo, hi = _percentiles(reps, alpha) if math.isfinite(value) else (float("nan"), float("nan"))
            out[task][name] = {"value": value, "lo": lo, "hi": hi}
    return out


def mean_binary_auc(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> float:
    """Mean ``auc`` value over the binary tasks of an ``evaluate_predictions`` result (NaN AUCs skipped)."""
    vals = [m["auc"]["value"] for t, m in results.items()
            if t in TASKS_BY_NAME and TASKS_BY_NAME[t].kind == "binary" and "auc" in m]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def compare_predictions(labels: Mapping[str, Any], preds_a: Mapping[str, Any], preds_b: Mapping[str, Any],
                        n_boot: int = 200, seed: int = 0, alpha: float = 0.05,
                        **kw) -> dict[str, dict[str, dict[str, float]]]:
    """Paired bootstrap of A − B on the same customers: {task: {metric: {"value", "lo", "hi"}}} plus
    ``"mean_binary_auc": {"auc": ...}`` (the ml-anchors criterion: B6 − B2 mean binary AUC, CI excluding 0)."""
    ra = task_replicates(labels, preds_a, n_boot, seed, **kw)
    rb = task_replicates(labels, preds_b, n_boot, seed, **kw)
    out: dict[str, dict[str, dict[str, float]]] = {}
    auc_pts, auc_reps = [], []
    for task in ra.keys() & rb.keys():
        out[task] = {}
        for name, (va, xa) in ra[task].items():
            vb, xb = rb[task][name]
            value = va - vb
            lo, hi = _percentiles(xa - xb, alpha) if math.isfinite(value) else (float("nan"), float("nan"))
            out[task][name] = {"value": value, "lo": lo, "hi": hi}
        if TASKS_BY_NAME[task].kind == "binary" and math.isfinite(out[task]["auc"]["value"]):
            auc_pts.append(out[task]["auc"]["value"])
            auc_reps.append(ra[task]["auc"][1] - rb[task]["auc"][1])
    if auc_pts:
        value = float(np.mean(auc_pts))
        lo, hi = _percentiles(np.mean(auc_reps, axis=0), alpha) if n_boot > 0 else (float("nan"), float("nan"))
        out["mean_binary_auc"] = {"auc": {"value": value, "lo": lo, "hi": hi}}
    return {t: out[t] for t in [*(s.name for s in TASKS), "mean_binary_auc"] if t in out}


# ------------------------------------------------------------------------------------------------ gates


def gate_entropy(gates) -> float:
    """Mean over customers of the gate entropy H(w) / log(E) (0 = one expert, 1 = uniform) of (N, E) weights."""
    w = _np(gates).astype(float)
    if w.ndim != 2:
        raise ValueError(f"gates must be (N, E), got {w.shape}")
    if w.shape[1] < 2 or w.shape[0] == 0:
        return 0.0 if w.shape[0] else float("nan")
    h = -(w * np.log(np.clip(w, 1e-12, None))).sum(1)
    return float(h.mean() / math.log(w.shape[1]))


def gate_entropies(gates: Mapping[str, Any]) -> dict[str, float]:
    """``gate_entropy`` of each task of ``ModelOutput.gates``."""
    return {t: gate_entropy(g) for t, g in gates.items()}


def _forward_with_masks(model, batch) -> tuple[Any, dict[str, dict[str, torch.Tensor]]]:
    """Base forward and one forward per masked shared expert, in eval mode without grad (mode restored)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            base = model(batch)
            masked = {}
            for name in model.expert_names:
                with model.mask_expert(name):
                    masked[name] = model(batch).outputs
    finally:
        model.train(was_training)
    return base, masked


def _faithfulness(model, base, masked, task: str, n_random: int | None, seed: int, labels) -> dict[str, Any]:
    import torch

    spec = TASKS_BY_NAME[task]
    names = tuple(model.expert_names)
    n_shared = len(names)
    if tuple(model.gate_columns(task)[:n_shared]) != names:
        raise RuntimeError("gate columns must start with the shared experts")
    gates = base.gates[task][:, :n_shared].float().cpu().numpy()
    n = gates.shape[0]

    def score(out: torch.Tensor, cls: np.ndarray | None) -> np.ndarray:
        out = out.float().cpu()
        if spec.kind != "multiclass":
            return out.numpy().astype(float)
        logp = torch.log_softmax(out, dim=-1).numpy().astype(float)
        return logp[np.arange(len(logp)), cls]

    cls = None
    if spec.kind == "multiclass":
        cls = base.outputs[task].float().argmax(-1).cpu().numpy()
        if labels is not None and task in labels:
            y = _np(labels[task]).astype(float).ravel()
            ok = np.isfinite(y) & (y >= 0) & (y < spec.n_classes)
            cls = np.where(ok, np.where(ok, y, 0).astype(np.int64), cls)
    s0 = score(base.outputs[task], cls)
    delta = np.stack([np.abs(score(masked[e][task], cls) - s0) for e in names], axis=1)  # (N, n_shared)
    top = gates.argmax(1)
    d_top = delta[np.arange(n), top]
    result: dict[str, Any] = {"n_customers": int(n), "n_shared": n_shared,
                              "top_expert_share": {e: float((top == i).mean()) for i, e in enumerate(names)}}
    if n_shared < 2 or n == 0:
        return {"share": float("nan"), "mean_delta_top": float(d_top.mean()) if n else float("nan"),
                "mean_delta_random": float("nan"), **result}
    if n_random is None:  # exact expectation over a uniformly random other shared expert
        other = np.ones_like(delta, dtype=bool)
        other[np.arange(n), top] = False
        wins = ((d_top[:, None] > delta) & other).sum(1) / (n_shared - 1)
        d_rand = (delta * other).sum(1) / (n_shared - 1)
    else:
        rng = np.random.default_rng(seed)
        r = rng.integers(0, n_shared - 1, size=(n, n_random))
        r = r + (r >= top[:, None])  # skip the top expert
        dr = np.take_along_axis(delta, r, axis=1)
        wins, d_rand = (d_top[:, None] > dr).mean(1), dr.mean(1)
    return {"share": float(wins.mean()), "mean_delta_top": float(d_top.mean()),
            "mean_delta_random": float(d_rand.mean()), **result}


def gate_faithfulness(model, batch, task: str, n_random: int | None = None, seed: int = 0,
                      labels: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Does the layer-0 gate point at the expert that matters? For each customer, the top-weighted **shared**
    expert (the task's own experts are never candidates) and a random other shared expert are masked in turn
    (``model.mask_expert``: their normalised output zeroed, gate weights kept); the customer counts when the top
    one moves the task's output more (strictly).

    The moved quantity: the raw logit (binary), the value (regression), for multiclass the log-probability of
    the true class (``labels[task]`` where labelled) or else of the unmasked argmax class — log-softmax rather
    than the raw logit, because a common shift of all logits changes nothing.

    ``n_random=None`` (default) averages over *every* other shared expert (the exact expectation over the random
    draw: no sampling noise); an integer draws that many random experts per customer with ``seed``.
    Returns ``share`` (fraction of customers, ml-anchors target >= 0.8), ``mean_delta_top``,
    ``mean_delta_random``, ``top_expert_share`` (how often each expert is the top one), ``n_customers``.
    Eval mode and no grad inside; the model's mode is restored.
    """
    base, masked = _forward_with_masks(model, batch)
    return _faithfulness(model, base, masked, task, n_random, seed, labels)


def gate_faithfulness_all(model, batch, tasks: Sequence[str] | None = None, n_random: int | None = None,
                          seed: int = 0, labels: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``gate_faithfulness`` of every task (default: the model's), sharing the 1 + n_shared forward passes."""
    base, masked = _forward_with_masks(model, batch)
    tasks = tuple(tasks) if tasks is not None else tuple(base.gates)
    return {t: _faithfulness(model, base, masked, t, n_random, seed, labels) for t in tasks}


# ------------------------------------------------------------------------------------------------ gate control

FAITHFULNESS_GOAL_MARGIN = 0.15  # issue: margin over the no-information control >= 0.15 on most tasks


@contextlib.contextmanager
def _permuted_task_gates(model, perm: np.ndarray | None) -> Iterator[None]:
    """Inside the block every layer-0 task gate of customer i is the gate of customer ``perm[i]`` (the logits
    are permuted before the softmax, so the mixture itself uses the permuted weights)."""
    if perm is None:
        yield
        return
    import torch

    idx = torch.as_tensor(perm, dtype=torch.long)
    hooks = [g.register_forward_hook(lambda _m, _i, out: out.index_select(0, idx.to(out.device)))
             for g in model.gates0.task_gates.values()]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _forward_with_mean_ablation(model, batch, perm: np.ndarray | None = None):
    """Base forward and one forward per shared layer-0 expert whose normalised output is replaced by its mean
    over the batch (the expert keeps its average contribution and loses only what it says about *this*
    customer; zeroing would also remove a constant offset the towers were trained around). ``perm``: run both
    with the task gates permuted across customers (``_permuted_task_gates``)."""
    import torch

    norms = model.gates0.shared_norms
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _permuted_task_gates(model, perm):
            base = model(batch)
            ablated = {}
            for i, name in enumerate(model.expert_names):
                hook = norms[i].register_forward_hook(lambda _m, _i, out: out.mean(0, keepdim=True).expand_as(out))
                try:
                    ablated[name] = model(batch).outputs
                finally:
                    hook.remove()
    finally:
        model.train(was_training)
    return base, ablated


def _moved(model, base, ablated, task: str, labels) -> np.ndarray:
    """(N, n_shared) |change| of the task's output when each shared expert is ablated (see gate_faithfulness)."""
    import torch

    spec = TASKS_BY_NAME[task]
    cls = None
    if spec.kind == "multiclass":
        cls = base.outputs[task].float().argmax(-1).cpu().numpy()
        if labels is not None and task in labels:
            y = _np(labels[task]).astype(float).ravel()
            ok = np.isfinite(y) & (y >= 0) & (y < spec.n_classes)
            cls = np.where(ok, np.where(ok, y, 0).astype(np.int64), cls)

    def score(out: torch.Tensor) -> np.ndarray:
        out = out.float().cpu()
        if spec.kind != "multiclass":
            return out.numpy().astype(float)
        logp = torch.log_softmax(out, dim=-1).numpy().astype(float)
        return logp[np.arange(len(logp)), cls]

    s0 = score(base.outputs[task])
    return np.stack([np.abs(score(ablated[e][task]) - s0) for e in model.expert_names], axis=1)


def _wins(delta: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Per customer: share of the other shared experts whose ablation moves the output strictly less than
    ablating the ``chosen`` one (the exact expectation over a uniformly random other expert)."""
    n, e = delta.shape
    d_c = delta[np.arange(n), chosen]
    other = np.ones_like(delta, dtype=bool)
    other[np.arange(n), chosen] = False
    return ((d_c[:, None] > delta) & other).sum(1) / (e - 1)


def gate_faithfulness_control(model, batch, tasks: Sequence[str] | None = None, n_perm: int = 4,
                              n_boot: int = 200, seed: int = 0, alpha: float = 0.05,
                              labels: Mapping[str, Any] | None = None,
                              goal: float = FAITHFULNESS_GOAL_MARGIN) -> dict[str, dict[str, Any]]:
    """Gate faithfulness against a no-information control, per task: the check that uninformative gates fail.

    ``score``: every shared layer-0 expert is **mean-ablated** in turn (its normalised output replaced by the
    batch mean, gate weights kept) and a customer counts by the share of other shared experts whose ablation
    moves the task's output (as ``gate_faithfulness``) strictly less than ablating the customer's top-gated one.

    Because the layer mixes experts by the gate weights, the top-weighted expert moves the output most *by
    construction* whenever the gates vary, informative or not (random gates score ~0.7). The **control** removes
    the information and keeps the construction: the same model run with the task gates permuted across
    customers (``n_perm`` permutations; each customer mixed and scored with another customer's gate row, so the
    same gate distribution, sharpness and experts). Gates are faithful when routing *this* customer to *this*
    expert matters: ``margin = score - control``, with a percentile bootstrap CI over customers (paired).

    Returns per task ``score``, ``control``, ``margin`` ({"value", "lo", "hi"}), ``significant`` (CI above 0),
    ``meets_goal`` (margin >= ``goal``), ``passes`` (both), ``zero_mask_share`` (the zero-masking share of
    ``gate_faithfulness``, which has no control), ``top_expert_share``, ``n_customers``. Costs
    (1 + n_perm) x (1 + n_shared) + n_shared forward passes; eval mode and no grad inside, mode restored.
    """
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    base, ablated = _forward_with_mean_ablation(model, batch)
    _, zeroed = _forward_with_masks(model, batch)
    names = tuple(model.expert_names)
    n_shared = len(names)
    tasks = tuple(tasks) if tasks is not None else tuple(base.gates)
    for task in tasks:
        if tuple(model.gate_columns(task)[:n_shared]) != names:
            raise RuntimeError("gate columns must start with the shared experts")
    gates = {t: base.gates[t][:, :n_shared].float().cpu().numpy() for t in tasks}
    n = next(iter(gates.values())).shape[0] if gates else 0
    rng = np.random.default_rng(seed)
    control_runs = ([_forward_with_mean_ablation(model, batch, rng.permutation(n)) for _ in range(n_perm)]
                    if n_shared >= 2 and n >= 2 else [])
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        top = gates[task].argmax(1)
        res: dict[str, Any] = {"n_customers": int(n), "n_shared": n_shared, "n_perm": n_perm, "goal": goal,
                               "top_expert_share": {e: float((top == i).mean()) if n else float("nan")
                                                    for i, e in enumerate(names)}}
        if not control_runs:
            nan = {"value": float("nan"), "lo": float("nan"), "hi": float("nan")}
            out[task] = {**res, "score": float("nan"), "control": float("nan"), "margin": nan,
                         "zero_mask_share": float("nan"), "significant": False, "meets_goal": False,
                         "passes": False}
            continue
        real = _wins(_moved(model, base, ablated, task, labels), top)
        control = np.mean([_wins(_moved(model, b, a, task, labels),
                                 b.gates[task][:, :n_shared].float().cpu().numpy().argmax(1))
                           for b, a in control_runs], axis=0)
        diff = real - control
        if n_boot > 0:
            reps = np.concatenate([w @ diff / w.sum(1) for w in _replicate_weights(n, n_boot, seed)])
            lo, hi = _percentiles(reps, alpha)
        else:
            lo, hi = float("nan"), float("nan")
        margin = {"value": float(diff.mean()), "lo": lo, "hi": hi}
        significant = bool(math.isfinite(lo) and lo > 0)
        meets = bool(margin["value"] >= goal)
        out[task] = {**res, "score": float(real.mean()), "control": float(control.mean()), "margin": margin,
                     "zero_mask_share": float(_wins(_moved(model, base, zeroed, task, labels), top).mean()),
                     "significant": significant, "meets_goal": meets, "passes": significant and meets}
    return out

"""The 13 LightGBM students (SPEC §7): distillation of the PLE teacher, a hard-label twin, and evidence-based routing.

Recipe per task, identical for both forms so the comparison is fair:

1. **Targets.** DISTILL blends the hard label with the teacher's tempered prediction on the same row;
   DIRECT uses the hard labels only (the B2 anchor of ml-anchors §7, with the same selection and calibration).

   * binary     : soft = sigmoid(logit(p) / T); target = alpha * y + (1 - alpha) * soft, LightGBM
                  ``objective="cross_entropy"`` (labels in [0, 1]);
   * multiclass : soft = softmax(log p / T). LightGBM has no soft-label multiclass objective, so each row is
                  expanded into its hard class (weight alpha) plus the teacher's top ``soft_top_classes`` classes
                  (weight (1 - alpha) x the soft probability renormalised over those classes) and trained with
                  ``objective="multiclass"`` on the sample weights;
   * regression : target = alpha * y + (1 - alpha) * teacher (T does not apply), Huber as the baseline.

   Rows without a hard label keep the soft target only, with weight (1 - alpha) (every row a teacher scored still
   teaches; at alpha = 1 they drop out). Labelled rows weigh 1 in total.
2. **Gain-based feature selection.** A first booster (``selection_rounds``, early-stopped) on all columns; the
   smallest set of columns covering ``gain_share`` of its total gain, clamped to [min_features, max_features]
   and never including a column without gain, is kept in feature order.
3. **Refit** on those columns, early-stopped on the validation month against the **hard** labels
   (binary_logloss / multi_logloss / l1, as the baselines).
4. **Calibration** (binary): Platt scaling of the logit of the raw score, fitted on the validation month by
   Newton steps, with Platt's prior-corrected targets (no infinite slope on separable data).

Artefact: the booster in LightGBM's text format at its best iteration (``model_str``) and its SHA-256 (of the
UTF-8 bytes, as ``storage.sha256_bytes``); loading checks the hash (reference-repo-ops §10 item 26: unverified
model files were loaded). ``Student.to_dict`` is the JSON-able metadata stored next to the text.

Routing (``route``) is decided on the **validation** month, never the test month: DISTILL iff the teacher has an
edge over DIRECT on the task's primary metric and the student keeps at least ``keep_share`` of it
(ml-anchors §7 "value of the students"); otherwise DIRECT. MAE is sign-flipped so "higher is better" throughout.

Binning: ``FeatureBins`` bins the training and validation matrices once over all columns; the selection fits of
any number of tasks (and of both forms) train on row subsets of it, as the baselines do. The refit bins the
selected columns only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from ple_platform.core.model.baselines import _labelled, predict_lightgbm, task_params
from ple_platform.core.model.evaluate import evaluate_predictions
from ple_platform.core.storage import sha256_bytes
from ple_platform.core.tasks.spec import TASKS, TASKS_BY_NAME

if TYPE_CHECKING:  # imported where used: lightgbm pulls scipy and scikit-learn (seconds at import)
    import lightgbm as lgb

log = logging.getLogger(__name__)

Route = Literal["DISTILL", "DIRECT"]
BIAS = "<bias>"  # name of the bias column of ``Contributions``
_EPS = 1e-7  # probability clip before a logit (logit within about +-16)
# Set by the recipe itself; overriding them would break the comparison with the baselines or the determinism.
_RESERVED_PARAMS = frozenset({"objective", "metric", "num_class", "seed", "num_threads", "deterministic",
                              "force_col_wise", "alpha"})
_LOWER_IS_BETTER = frozenset({"mae", "ece", "logloss"})
_BAD_NAME_CHARS = set('[]{}:,"')  # LightGBM refuses JSON special characters in feature names
# Parameters fixed when a Dataset is binned (``min_data_in_leaf`` through ``feature_pre_filter``); fits sharing
# ``FeatureBins`` must agree on these, and may differ in the rest (e.g. ``baselines.MANY_CLASS_OVERRIDES``).
_DATASET_KEYS = ("max_bin", "max_bin_by_feature", "min_data_in_bin", "bin_construct_sample_cnt", "data_random_seed",
                 "seed", "use_missing", "zero_as_missing", "feature_pre_filter", "min_data_in_leaf", "linear_tree",
                 "categorical_feature", "forcedbins_filename")


class StudentInputError(ValueError):
    """Bad input to student training, routing or prediction."""


class StudentIntegrityError(ValueError):
    """A model text whose SHA-256 differs from the recorded one."""


# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class StudentConfig:
    """Hyper-parameters of one student fit. ``params`` override ``baselines.DEFAULT_PARAMS`` (training and
    binning parameters, e.g. ``num_leaves``, ``max_bin``); the objective, metric, seed and threads are set by
    the recipe."""

    temperature: float = 2.0
    alpha: float = 0.5  # weight of the hard label in the blend
    gain_share: float = 0.95
    min_features: int = 32
    max_features: int = 400
    # The recipe the platform runs (launchpad and direct calls alike); early stopping ends most fits well before.
    selection_rounds: int = 60
    num_boost_round: int = 400
    early_stopping_rounds: int = 30
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    num_threads: int = 2
    soft_top_classes: int = 5
    calibrate: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", dict(self.params))
        problems = []
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            problems.append(f"temperature={self.temperature} must be a finite number > 0")
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(f"alpha={self.alpha} must lie in [0, 1]")
        if not 0.0 < self.gain_share <= 1.0:
            problems.append(f"gain_share={self.gain_share} must lie in (0, 1]")
        if not 1 <= self.min_features <= self.max_features:
            problems.append(f"need 1 <= min_features ({self.min_features}) <= max_features ({self.max_features})")
        for name in ("selection_rounds", "num_boost_round", "early_stopping_rounds", "num_threads",
                     "soft_top_classes"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        reserved = sorted(_RESERVED_PARAMS & set(self.params))
        if reserved:
            problems.append(f"params may not set {reserved} (fixed by the student recipe)")
        if problems:
            raise StudentInputError("StudentConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["params"] = dict(self.params)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudentConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise StudentInputError(f"StudentConfig: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**dict(d))


# ------------------------------------------------------------------------------------------------ targets


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _spec(task: str):
    try:
        return TASKS_BY_NAME[task]
    except KeyError:
        raise StudentInputError(f"unknown task {task!r}; known: {[t.name for t in TASKS]}") from None


def _teacher(task: str, pred, n: int, where: str) -> np.ndarray:
    """Teacher predictions of ``task`` checked against the task kind and row count: (N,) or (N, C)."""
    spec = _spec(task)
    p = np.asarray(pred, dtype=float)
    if spec.kind == "multiclass":
        if p.shape != (n, spec.n_classes):
            raise StudentInputError(f"{task}: {where} must be ({n}, {spec.n_classes}) class probabilities, "
                                    f"got {p.shape}")
    else:
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
        if p.shape != (n,):
            raise StudentInputError(f"{task}: {where} must be ({n},), got {p.shape}")
    bad = ~np.isfinite(p)
    if bad.any():
        raise StudentInputError(f"{task}: {where} has {int(bad.sum())} non-finite values (the teacher scores "
                                f"every row)")
    if spec.kind == "binary" and (p.min(initial=0.0) < 0 or p.max(initial=0.0) > 1):
        raise StudentInputError(f"{task}: {where} must be probabilities in [0, 1]")
    if spec.kind == "multiclass" and len(p):
        off = np.abs(p.sum(1) - 1.0).max()
        if p.min() < 0 or off > 1e-3:
            raise StudentInputError(f"{task}: {where} rows must be class probabilities (>= 0, summing to 1; "
                                    f"worst row sum is off by {off:.3g}) — logits passed by mistake?")
    return p


def soft_targets(task: str, teacher_pred, temperature: float) -> np.ndarray:
    """Tempered teacher predictions: binary sigmoid(logit(p) / T) (N,); multiclass softmax(log p / T) (N, C);
    regression the teacher's values (N,) (a temperature has no meaning there). T -> inf gives 0.5 / uniform."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise StudentInputError(f"{task}: temperature={temperature} must be a finite number > 0")
    n = np.shape(teacher_pred)[0] if np.ndim(teacher_pred) else 0  # a scalar fails the shape check below
    p = _teacher(task, teacher_pred, n, "teacher predictions")
    kind = TASKS_BY_NAME[task].kind
    if kind == "binary":
        return _sigmoid(_logit(p) / temperature)
    if kind == "multiclass":
        z = np.log(np.clip(p, 1e-12, None)) / temperature
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)
    return p.copy()


@dataclass(frozen=True)
class BlendedTargets:
    """Training rows of one fit: ``rows`` index the training matrix (sorted; repeated for expanded multiclass
    rows), ``label`` and ``weight`` (None = all 1) align with ``rows``."""

    rows: np.ndarray
    label: np.ndarray
    weight: np.ndarray | None
    n_labelled: int  # customers with a hard label
    n_soft_only: int  # customers taught by the teacher alone (no hard label, alpha < 1)


def blend_targets(task: str, y_train, teacher_train, config: StudentConfig) -> BlendedTargets:
    """DISTILL targets (module docstring, step 1). ``y_train``: (N,) with NaN (or -1 for binary/multiclass)
    where the hard label is missing; ``teacher_train``: the teacher's predictions on the same N rows."""
    spec = _spec(task)
    y = np.asarray(y_train, dtype=float).ravel()
    n = len(y)
    teacher = _teacher(task, teacher_train, n, "teacher_train")
    soft = soft_targets(task, teacher, config.temperature)
    idx, yl = _labelled(task, y)
    a = config.alpha
    if spec.kind == "multiclass":
        m = min(config.soft_top_classes, spec.n_classes)
        top = np.argsort(-soft, axis=1, kind="stable")[:, :m]  # stable: ties resolved by class index
        q = np.take_along_axis(soft, top, axis=1)
        q /= q.sum(1, keepdims=True)
        rows = np.concatenate([idx, np.repeat(np.arange(n), m)])
        label = np.concatenate([yl, top.ravel().astype(float)])
        weight = np.concatenate([np.full(len(idx), a), (1.0 - a) * q.ravel()])
        order = np.argsort(rows, kind="stable")  # per row: the hard class first, then the soft ones
        rows, label, weight = rows[order], label[order], weight[order]
    else:
        has = np.zeros(n, dtype=bool)
        has[idx] = True
        hard = np.zeros(n)
        hard[idx] = yl
        rows = np.arange(n)
        label = np.where(has, a * hard + (1.0 - a) * soft, soft)
        weight = np.where(has, 1.0, 1.0 - a)
    keep = weight > 0
    n_soft_only = 0 if a >= 1.0 else n - len(idx)
    return BlendedTargets(rows[keep], label[keep], weight[keep], len(idx), n_soft_only)


def hard_targets(task: str, y_train) -> BlendedTargets:
    """DIRECT targets: the labelled rows and their hard labels."""
    _spec(task)
    idx, yl = _labelled(task, y_train)
    return BlendedTargets(idx, yl, None, len(idx), 0)


# ------------------------------------------------------------------------------------------------ selection


def select_by_gain(gain, gain_share: float, min_features: int, max_features: int) -> np.ndarray:
    """Sorted column indices of the smallest set of columns covering ``gain_share`` of the total gain, clamped
    to [min_features, max_features]; a column without gain is never kept (it was never split on). Ties in gain:
    lower column index first. No gain at all (a booster without splits): the first ``min_features`` columns."""
    g = np.asarray(gain, dtype=float)
    if g.ndim != 1 or len(g) == 0 or not np.isfinite(g).all() or (g < 0).any():
        raise StudentInputError(f"gain must be a non-empty (F,) vector of finite values >= 0, got {g.shape}")
    order = np.argsort(-g, kind="stable")
    total = g.sum()
    if total <= 0:
        return np.arange(min(min_features, len(g)))
    cum = np.cumsum(g[order]) / total
    k = int(np.searchsorted(cum, gain_share - 1e-12)) + 1
    k = min(max(k, min_features), max_features, int((g > 0).sum()))
    return np.sort(order[:max(k, 1)])


# ------------------------------------------------------------------------------------------------ calibration


@dataclass(frozen=True)
class PlattCalibration:
    """p = sigmoid(a * logit(raw) + b); identity is a = 1, b = 0."""

    a: float
    b: float
    n: int  # validation rows it was fitted on
    note: str = ""

    def apply(self, raw) -> np.ndarray:
        return _sigmoid(self.a * _logit(raw) + self.b)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_platt(raw, y, max_iter: int = 100, tol: float = 1e-10) -> PlattCalibration:
    """Platt scaling fitted by damped Newton steps on the mean log loss. Targets are Platt's prior-corrected
    ones, (n+ + 1) / (n+ + 2) and 1 / (n- + 2), so separable data gives a finite slope. A slope <= 0 would
    reverse the ranking: the identity is kept instead and ``note`` says so."""
    raw = np.asarray(raw, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if raw.shape != y.shape or len(y) == 0:
        raise StudentInputError(f"Platt scaling needs equally long non-empty scores and labels, got {raw.shape} "
                                f"and {y.shape}")
    if not np.isin(y, (0.0, 1.0)).all() or not np.isfinite(raw).all():
        raise StudentInputError("Platt scaling needs finite scores and 0/1 labels")
    z = _logit(raw)
    n_pos = float(y.sum())
    n_neg = len(y) - n_pos
    t = np.where(y > 0.5, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    X = np.stack([z, np.ones_like(z)], axis=1)

    def loss(theta: np.ndarray) -> float:
        u = X @ theta
        return float(np.mean(np.logaddexp(0.0, u) - t * u))

    theta = np.array([1.0, 0.0])
    current = loss(theta)
    for _ in range(max_iter):
        s = _sigmoid(X @ theta)
        grad = X.T @ (s - t) / len(z)
        hess = (X * (s * (1 - s))[:, None]).T @ X / len(z) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6 and loss(theta - scale * step) > current:  # backtracking keeps the loss monotone
            scale /= 2
        theta = theta - scale * step
        current = loss(theta)
        if np.abs(scale * step).max() < tol:
            break
    a, b = float(theta[0]), float(theta[1])
    if a <= 0:
        return PlattCalibration(1.0, 0.0, len(y), note=f"fitted slope {a:.4g} <= 0 would reverse the ranking; "
                                                        f"identity kept")
    return PlattCalibration(a, b, len(y))


# ------------------------------------------------------------------------------------------------ binning


def _matrix(X, name: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise StudentInputError(f"{name} must be a numeric (N, F) matrix, got shape {X.shape} dtype {X.dtype}")
    return X


def _names(feature_names: Sequence[str], n_columns: int, where: str) -> tuple[str, ...]:
    names = tuple(str(n) for n in feature_names)
    if len(names) != n_columns:
        raise StudentInputError(f"{where}: {len(names)} feature names for {n_columns} columns")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:5]
        raise StudentInputError(f"{where}: duplicate feature names {dup}")
    bad = [n for n in names if not n or _BAD_NAME_CHARS & set(n)]
    if bad:
        raise StudentInputError(f"{where}: LightGBM cannot store feature names {bad[:5]} (empty or with one of "
                                f"{''.join(sorted(_BAD_NAME_CHARS))})")
    return names


def _dataset_params(config: StudentConfig) -> dict[str, Any]:
    # Binning needs no label or objective; any task's parameter dict carries the dataset-level keys.
    return task_params(TASKS[0].name, config.params, config.seed, config.num_threads)


def _dataset(X: np.ndarray, names: Sequence[str], params: Mapping[str, Any],
             reference: lgb.Dataset | None = None) -> lgb.Dataset:
    import lightgbm as lgb

    return lgb.Dataset(X, label=np.zeros(len(X)), params=dict(params), feature_name=list(names),
                       reference=reference, free_raw_data=True).construct()


@dataclass
class FeatureBins:
    """The training and validation matrices binned once over all columns (validation with the training bin
    mappers). Pass one instance to every ``train_*`` call of a month to bin once instead of once per fit; the
    configs must agree on the dataset-level parameters (binning, ``seed``, ``min_data_in_leaf``)."""

    train: lgb.Dataset
    val: lgb.Dataset
    feature_names: tuple[str, ...]
    n_train: int
    n_val: int
    params: dict[str, Any]

    @classmethod
    def build(cls, X_train, X_val, feature_names: Sequence[str], config: StudentConfig) -> FeatureBins:
        X_train, X_val = _matrix(X_train, "X_train"), _matrix(X_val, "X_val")
        if X_train.shape[1] != X_val.shape[1]:
            raise StudentInputError(f"X_train {X_train.shape} and X_val {X_val.shape} must have the same columns")
        names = _names(feature_names, X_train.shape[1], "feature_names")
        params = _dataset_params(config)
        train = _dataset(X_train, names, params)
        val = _dataset(X_val, names, params, reference=train)
        return cls(train, val, names, len(X_train), len(X_val), params)

    def check(self, X_train: np.ndarray, X_val: np.ndarray, names: tuple[str, ...], config: StudentConfig) -> None:
        if (self.n_train, self.n_val) != (len(X_train), len(X_val)) or self.feature_names != names:
            raise StudentInputError("FeatureBins were built from other matrices (rows or feature names differ)")
        mine, theirs = _dataset_params(config), self.params
        differ = [k for k in _DATASET_KEYS if mine.get(k) != theirs.get(k)]
        if differ:
            raise StudentInputError(f"FeatureBins were built with other dataset-level LightGBM params than this "
                                    f"StudentConfig: {differ}")


# ------------------------------------------------------------------------------------------------ the student


@dataclass(frozen=True)
class Contributions:
    """TreeSHAP contributions (``pred_contrib``) of a student: ``values`` (N, k + 1), columns = the student's
    features then ``BIAS``; each row sums to the raw score — log-odds before calibration (binary), the class's
    raw score (multiclass, ``class_index`` per row), the prediction (regression)."""

    values: np.ndarray
    columns: tuple[str, ...]
    class_index: np.ndarray | None = None


@dataclass(frozen=True)
class Student:
    """One served per-task LightGBM (either form). ``model_str`` is LightGBM's text format at the best
    iteration; ``model_sha256`` its SHA-256; ``features`` the columns it reads, in the order it reads them."""

    task: str
    kind: str
    route: Route
    model_str: str = field(repr=False)
    model_sha256: str
    features: tuple[str, ...]
    calibration: PlattCalibration | None
    config: StudentConfig
    best_iteration: int
    metrics: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def model_bytes(self) -> bytes:
        return self.model_str.encode("utf-8")

    def booster(self) -> lgb.Booster:
        """The booster, loaded once from ``model_str`` after checking its hash."""
        if "booster" not in self._cache:
            sha = sha256_bytes(self.model_bytes)
            if sha != self.model_sha256:
                raise StudentIntegrityError(f"{self.task}: model text sha256 {sha[:12]}… differs from the "
                                            f"recorded {self.model_sha256[:12]}…; refusing to load it")
            import lightgbm as lgb

            self._cache["booster"] = lgb.Booster(model_str=self.model_str)
        return self._cache["booster"]

    def _columns(self, X_full, feature_names: Sequence[str]) -> np.ndarray:
        X = np.asarray(X_full)
        names = tuple(feature_names)
        if X.ndim != 2 or X.shape[1] != len(names):
            raise StudentInputError(f"{self.task}: X must be (N, {len(names)}) in the order of feature_names, "
                                    f"got {X.shape}")
        cols = self._cache.get(("cols", names))
        if cols is None:
            pos = {n: i for i, n in enumerate(names)}
            missing = [n for n in self.features if n not in pos]
            if missing:
                raise StudentInputError(f"{self.task}: X lacks {len(missing)} of the student's features, e.g. "
                                        f"{missing[:5]}")
            cols = np.array([pos[n] for n in self.features], dtype=np.int64)
            self._cache[("cols", names)] = cols
        return X[:, cols]

    def _raw(self, Xs: np.ndarray) -> np.ndarray:
        return predict_lightgbm({self.task: self.booster()}, Xs, num_threads=self.config.num_threads)[self.task]

    def predict(self, X_full, feature_names: Sequence[str]) -> np.ndarray:
        """binary: calibrated P(y=1) (N,); multiclass: class probabilities (N, C); regression: values (N,).
        ``X_full`` holds all features (columns in the order of ``feature_names``); the student picks its own."""
        raw = self._raw(self._columns(X_full, feature_names))
        if self.kind == "binary" and self.calibration is not None:
            return self.calibration.apply(raw)
        return raw

    def predict_contrib(self, X_full, feature_names: Sequence[str], class_index=None) -> Contributions:
        """Per-row TreeSHAP over the student's features. Multiclass: of ``class_index`` (an int or (N,) ints),
        by default of each row's predicted class."""
        Xs = self._columns(X_full, feature_names)
        contrib = np.asarray(self.booster().predict(Xs, pred_contrib=True, num_threads=self.config.num_threads))
        k1 = len(self.features) + 1
        columns = (*self.features, BIAS)
        if self.kind != "multiclass":
            return Contributions(contrib.reshape(len(Xs), k1), columns)
        n_classes = TASKS_BY_NAME[self.task].n_classes
        contrib = contrib.reshape(len(Xs), n_classes, k1)
        if class_index is None:
            cls = self._raw(Xs).argmax(1)
        else:
            cls = np.broadcast_to(np.asarray(class_index), (len(Xs),)).astype(np.int64)
            if len(cls) and (cls.min() < 0 or cls.max() >= n_classes):
                raise StudentInputError(f"{self.task}: class_index must lie in [0, {n_classes})")
        return Contributions(contrib[np.arange(len(Xs)), cls], columns, cls)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able metadata (everything but the model text, which is stored as is next to it)."""
        return {"task": self.task, "kind": self.kind, "route": self.route, "model_sha256": self.model_sha256,
                "features": list(self.features), "n_features": len(self.features),
                "calibration": self.calibration.to_dict() if self.calibration else None,
                "config": self.config.to_dict(), "best_iteration": self.best_iteration, "metrics": self.metrics,
                "selection": self.selection}

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], model_str: str) -> Student:
        """Inverse of ``to_dict``; the model text must hash to ``meta["model_sha256"]``."""
        sha = sha256_bytes(model_str.encode("utf-8"))
        if sha != meta["model_sha256"]:
            raise StudentIntegrityError(f"{meta.get('task')}: model text sha256 {sha[:12]}… differs from the "
                                        f"recorded {str(meta['model_sha256'])[:12]}…")
        cal = meta.get("calibration")
        return cls(task=meta["task"], kind=meta["kind"], route=meta["route"], model_str=model_str,
                   model_sha256=sha, features=tuple(meta["features"]),
                   calibration=PlattCalibration(**cal) if cal else None,
                   config=StudentConfig.from_dict(meta["config"]), best_iteration=int(meta["best_iteration"]),
                   metrics=dict(meta.get("metrics", {})), selection=dict(meta.get("selection", {})))


# ------------------------------------------------------------------------------------------------ training


def _params(task: str, route: Route, config: StudentConfig) -> dict[str, Any]:
    soft_binary = route == "DISTILL" and TASKS_BY_NAME[task].kind == "binary"
    overrides = {"objective": "cross_entropy", "metric": "binary_logloss"} if soft_binary else None
    return task_params(task, config.params, config.seed, config.num_threads, overrides)


def _best(booster: lgb.Booster) -> int:
    return booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()


def _fit(params: dict[str, Any], train_parent: lgb.Dataset, val_parent: lgb.Dataset, targets: BlendedTargets,
         iv: np.ndarray, yv: np.ndarray, rounds: int, early_stopping_rounds: int) -> lgb.Booster:
    import lightgbm as lgb

    train = train_parent.subset(targets.rows, params=params).construct()
    train.set_label(targets.label)  # after construct: a subset copies its parent's placeholder labels when built
    if targets.weight is not None:
        train.set_weight(targets.weight)
    val = val_parent.subset(iv, params=params).construct()
    val.set_label(yv)  # early stopping always watches the hard labels
    val.reference = train  # same bin mappers as the parent; avoids a re-bin in lgb.train
    return lgb.train(params, train, num_boost_round=rounds, valid_sets=[val], valid_names=["val"],
                     callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)])


def _train(task: str, route: Route, targets: BlendedTargets, X_train, X_val, y_val, feature_names,
           config: StudentConfig, bins: FeatureBins | None, n_boot: int) -> Student:
    spec = _spec(task)
    X_train, X_val = _matrix(X_train, "X_train"), _matrix(X_val, "X_val")
    if X_train.shape[1] != X_val.shape[1]:
        raise StudentInputError(f"{task}: X_train {X_train.shape} and X_val {X_val.shape} must have the same "
                                f"columns")
    names = _names(feature_names, X_train.shape[1], f"{task}: feature_names")
    y_val = np.asarray(y_val, dtype=float).ravel()
    if len(y_val) != len(X_val):
        raise StudentInputError(f"{task}: {len(y_val)} validation labels for {len(X_val)} validation rows")
    iv, yv = _labelled(task, y_val)
    if len(targets.rows) == 0 or len(iv) == 0:
        raise StudentInputError(f"{task}: {len(targets.rows)} training rows and {len(iv)} labelled validation "
                                f"rows (early stopping and calibration need the validation month's labels)")
    if bins is None:
        bins = FeatureBins.build(X_train, X_val, names, config)
    else:
        bins.check(X_train, X_val, names, config)
    params = _params(task, route, config)
    start = time.perf_counter()

    first = _fit(params, bins.train, bins.val, targets, iv, yv, config.selection_rounds,
                 config.early_stopping_rounds)
    gain = np.asarray(first.feature_importance(importance_type="gain", iteration=_best(first)), dtype=float)
    cols = select_by_gain(gain, config.gain_share, config.min_features, config.max_features)
    chosen = tuple(names[i] for i in cols)

    ds_params = _dataset_params(config)
    train_sel = _dataset(X_train[:, cols], chosen, ds_params)
    val_sel = _dataset(X_val[:, cols], chosen, ds_params, reference=train_sel)
    booster = _fit(params, train_sel, val_sel, targets, iv, yv, config.num_boost_round,
                   config.early_stopping_rounds)
    best = _best(booster)
    model_str = booster.model_to_string(num_iteration=best)
    fit_seconds = time.perf_counter() - start

    calibration = None
    if spec.kind == "binary":
        raw_val = booster.predict(X_val[iv][:, cols], num_iteration=best, num_threads=config.num_threads)
        calibration = fit_platt(raw_val, yv) if config.calibrate else None
    total = gain.sum()
    selection = {"n_candidates": len(names), "n_selected": len(cols),
                 "gain_share_covered": float(gain[cols].sum() / total) if total > 0 else float("nan"),
                 "selection_best_iteration": _best(first)}
    metric = params["metric"]
    training = {"n_rows": len(targets.rows), "n_labelled": targets.n_labelled, "n_soft_only": targets.n_soft_only,
                "n_val_labelled": len(iv), "fit_seconds": round(fit_seconds, 3),
                "val_" + metric: float(booster.best_score["val"][metric])}
    student = Student(task=task, kind=spec.kind, route=route, model_str=model_str,
                      model_sha256=sha256_bytes(model_str.encode("utf-8")), features=chosen,
                      calibration=calibration, config=config, best_iteration=best,
                      metrics={"training": training}, selection=selection)
    val_pred = student.predict(X_val, names)
    student.metrics["validation"] = evaluate_predictions({task: y_val}, {task: val_pred}, n_boot=n_boot,
                                                         seed=config.seed)[task]
    log.info("student %s %s: %d/%d features, %d/%d rounds, val %s=%.4f, %.1fs", task, route, len(cols),
             len(names), best, config.num_boost_round, metric, training["val_" + metric], fit_seconds)
    return student


def train_student(task: str, X_train, y_train, teacher_train, X_val, y_val, teacher_val,
                  feature_names: Sequence[str], config: StudentConfig | None = None, *,
                  bins: FeatureBins | None = None, n_boot: int = 0) -> Student:
    """The DISTILL form: blended hard/soft targets (``blend_targets``), selection, refit, calibration.

    ``X_*``: (N, F) in the order of ``feature_names``; ``y_*``: (N,) hard labels (NaN / -1 = missing);
    ``teacher_*``: the teacher's predictions on the same rows ((N,) or (N, C) probabilities). ``teacher_val`` is
    checked for shape only: early stopping and calibration use the validation month's hard labels.
    ``metrics["validation"]``: ``evaluate_predictions`` of the student on the validation month."""
    config = config or StudentConfig()
    y_train = np.asarray(y_train, dtype=float).ravel()
    if len(y_train) != len(np.asarray(X_train)):
        raise StudentInputError(f"{task}: {len(y_train)} training labels for {len(np.asarray(X_train))} rows")
    _teacher(task, teacher_val, len(np.asarray(X_val)), "teacher_val")
    targets = blend_targets(task, y_train, teacher_train, config)
    return _train(task, "DISTILL", targets, X_train, X_val, y_val, feature_names, config, bins, n_boot)


def train_direct(task: str, X_train, y_train, X_val, y_val, feature_names: Sequence[str],
                 config: StudentConfig | None = None, *, bins: FeatureBins | None = None,
                 n_boot: int = 0) -> Student:
    """The DIRECT form: hard labels only (unlabelled rows dropped), the same selection, refit and calibration
    as ``train_student`` (temperature and alpha do not apply)."""
    config = config or StudentConfig()
    y_train = np.asarray(y_train, dtype=float).ravel()
    if len(y_train) != len(np.asarray(X_train)):
        raise StudentInputError(f"{task}: {len(y_train)} training labels for {len(np.asarray(X_train))} rows")
    return _train(task, "DIRECT", hard_targets(task, y_train), X_train, X_val, y_val, feature_names, config, bins,
                  n_boot)


# ------------------------------------------------------------------------------------------------ routing


@dataclass(frozen=True)
class RoutingDecision:
    """DISTILL or DIRECT for one task, with the validation numbers it rests on. ``teacher_edge`` and
    ``student_edge`` are over DIRECT, sign-normalised so that positive means better (MAE flipped)."""

    task: str
    route: Route
    metric: str
    higher_is_better: bool
    teacher: float
    direct: float
    student: float
    teacher_edge: float
    student_edge: float
    keep_share: float
    reason: str

    @property
    def kept_share(self) -> float:
        """Share of the teacher's edge the student keeps (NaN without a positive edge)."""
        return self.student_edge / self.teacher_edge if self.teacher_edge > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kept_share": self.kept_share}


def teacher_has_edge(task: str, teacher_val_metric: float, direct_val_metric: float,
                     metric: str | None = None) -> bool:
    """Whether the teacher beats the direct LightGBM on the validation metric (finite numbers, sign-normalised):
    without that edge ``route`` says DIRECT whatever a distilled student scores."""
    metric = metric or _spec(task).primary_metric
    t, d = float(teacher_val_metric), float(direct_val_metric)
    sign = -1.0 if metric in _LOWER_IS_BETTER else 1.0
    return math.isfinite(t) and math.isfinite(d) and sign * (t - d) > 0


def route(task: str, teacher_val_metric: float, direct_val_metric: float, student_val_metric: float | None,
          keep_share: float = 0.5, metric: str | None = None) -> RoutingDecision:
    """DISTILL iff teacher_edge > 0 and student − direct >= keep_share × teacher_edge (validation month, primary
    metric of the task unless ``metric`` is given); otherwise DIRECT. A non-finite number is no evidence: DIRECT.
    ``student_val_metric=None``: the distilled form was not trained, allowed only where the teacher has no edge."""
    spec = _spec(task)
    if not 0.0 <= keep_share <= 1.0:
        raise StudentInputError(f"{task}: keep_share={keep_share} must lie in [0, 1]")
    metric = metric or spec.primary_metric
    higher = metric not in _LOWER_IS_BETTER
    sign = 1.0 if higher else -1.0
    trained = student_val_metric is not None
    t, d = float(teacher_val_metric), float(direct_val_metric)
    s = float(student_val_metric) if trained else float("nan")
    t_edge, s_edge = sign * (t - d), sign * (s - d)
    nums = (f"teacher {t:.4f}, direct {d:.4f}, " + (f"student {s:.4f}" if trained else "student not trained")
            + ("" if higher else "; lower is better, so edges are sign-flipped"))
    candidates = (("teacher", t), ("direct", d)) + ((("student", s),) if trained else ())
    bad = [n for n, v in candidates if not math.isfinite(v)]
    if bad:
        chosen: Route = "DIRECT"
        reason = f"insufficient evidence: validation {metric} is not finite for {', '.join(bad)} ({nums})"
    elif t_edge <= 0:
        chosen = "DIRECT"
        reason = (f"the teacher has no edge over the direct LightGBM on validation {metric} ({nums}; "
                  f"edge {t_edge:+.4f} <= 0)")
    elif not trained:
        raise StudentInputError(f"{task}: the teacher has an edge on validation {metric} ({nums}), so routing needs "
                                "the distilled student's validation metric")
    elif s_edge >= keep_share * t_edge:
        chosen = "DISTILL"
        reason = (f"the student keeps {s_edge / t_edge:.0%} of the teacher's edge on validation {metric} ({nums}; "
                  f"student - direct {s_edge:+.4f} >= {keep_share:.2f} x edge {t_edge:+.4f})")
    else:
        chosen = "DIRECT"
        reason = (f"the student keeps only {s_edge / t_edge:.0%} of the teacher's edge on validation {metric} "
                  f"({nums}; student - direct {s_edge:+.4f} < {keep_share:.2f} x edge {t_edge:+.4f})")
    return RoutingDecision(task, chosen, metric, higher, t, d, s, t_edge, s_edge, keep_share,
                           f"{task}: {chosen} — {reason}.")


class TaskStudents(NamedTuple):
    """What ``fit_task_students`` returns: the routed student (its ``metrics["routing"]`` holds the decision),
    the decision, and the validation metrics of the teacher, the distilled and the direct student."""

    student: Student
    decision: RoutingDecision
    validation: dict[str, dict[str, dict[str, float]]]


def fit_task_students(task: str, X_train, y_train, teacher_train, X_val, y_val, teacher_val,
                      feature_names: Sequence[str], config: StudentConfig | None = None, *,
                      keep_share: float = 0.5, n_boot: int = 200, bins: FeatureBins | None = None,
                      force_route: Route | None = None, validation_fidelity=None) -> TaskStudents:
    """Train the direct form of one task and, where the teacher has a validation edge over it (or DISTILL is forced),
    the distilled form; evaluate them and the teacher on the validation month (``evaluate_predictions`` with
    ``n_boot`` bootstrap replicates, paired by seed) and route on the primary metric. ``validation["distill"]`` is
    ``None`` when the distilled form was not trained.

    ``force_route`` (ablations, fidelity drills) overrides the evidence; the decision keeps the evidence's numbers
    and says that the route was forced. ``validation_fidelity`` (``FidelityThresholds``): a DISTILL verdict also
    needs the distilled student to be faithful to the teacher on the validation month — a student that keeps the
    edge without ranking like its teacher is not a distillation, so the task goes DIRECT (the test-month check
    then confirms fidelity out of time)."""
    config = config or StudentConfig()
    X_train, X_val = _matrix(X_train, "X_train"), _matrix(X_val, "X_val")
    if bins is None:
        bins = FeatureBins.build(X_train, X_val, feature_names, config)  # shared by both forms
    direct = train_direct(task, X_train, y_train, X_val, y_val, feature_names, config, bins=bins, n_boot=n_boot)
    teacher = _teacher(task, teacher_val, len(X_val), "teacher_val")
    metric = TASKS_BY_NAME[task].primary_metric
    validation = {
        "teacher": evaluate_predictions({task: y_val}, {task: teacher}, n_boot=n_boot, seed=config.seed)[task],
        "direct": direct.metrics["validation"],
    }
    t_val, d_val = validation["teacher"][metric]["value"], validation["direct"][metric]["value"]
    # Without a teacher edge the route is DIRECT whatever a distilled student would score: not training it halves
    # the task's cost (every task of a month where the teacher trails LightGBM). Forcing DISTILL still trains it.
    distilled = None
    if force_route == "DISTILL" or teacher_has_edge(task, t_val, d_val, metric):
        distilled = train_student(task, X_train, y_train, teacher_train, X_val, y_val, teacher_val, feature_names,
                                  config, bins=bins, n_boot=n_boot)
    validation["distill"] = distilled.metrics["validation"] if distilled is not None else None
    decision = route(task, t_val, d_val, None if distilled is None else validation["distill"][metric]["value"],
                     keep_share=keep_share, metric=metric)
    if validation_fidelity is not None and decision.route == "DISTILL" and force_route is None:
        from ple_platform.core.distillation.fidelity import fidelity

        fid = fidelity(task, y_val, teacher, distilled.predict(X_val, feature_names), validation_fidelity)
        if not fid.passed:
            decision = replace(decision, route="DIRECT", reason=(
                f"{task}: DIRECT — the distilled student keeps the edge but is not faithful to the teacher on the "
                f"validation month ({'; '.join(fid.failures)}); the evidence said {decision.reason}"))
    if force_route is not None and force_route != decision.route:
        if force_route not in ("DISTILL", "DIRECT"):
            raise StudentInputError(f"{task}: force_route must be DISTILL or DIRECT, got {force_route!r}")
        decision = replace(decision, route=force_route,
                           reason=f"{task}: {force_route} — forced by configuration; the evidence said {decision.reason}")
    chosen = distilled if decision.route == "DISTILL" else direct
    chosen = replace(chosen, metrics={**chosen.metrics, "routing": decision.to_dict()})
    log.info("%s", decision.reason)
    return TaskStudents(chosen, decision, validation)

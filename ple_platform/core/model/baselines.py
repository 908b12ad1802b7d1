"""B2 of the benchmark protocol (ml-anchors §7): one LightGBM per task on the same feature matrix as the teacher
— the anchor the PLE teacher has to beat.

* binary     : ``objective=binary``, early-stopped on validation ``binary_logloss``;
* multiclass : ``objective=multiclass`` with ``num_class`` from ``TASKS`` (absent classes still get a column),
               early-stopped on ``multi_logloss``;
* regression : ``objective=huber`` with ``alpha=1.0`` (LightGBM's Huber delta = the teacher's ``huber_delta``, so
               both optimise the same loss), early-stopped on ``l1`` (MAE is the tasks' primary metric).

Rows whose label is missing (NaN, or -1 for binary/multiclass) are dropped per task. Early stopping watches the
validation month only (``lgb.early_stopping``); the returned booster predicts with its best iteration.
Deterministic for a seed: ``deterministic=True``, ``force_col_wise=True``, ``seed`` (which derives the bagging,
feature-fraction and data seeds) and a fixed ``num_threads``.

Binning is done once: the training matrix is turned into one LightGBM ``Dataset`` (bin edges from all training
rows, which uses no label) and each task trains on a ``subset`` of its labelled rows; the validation matrix is
binned once with the training bin mappers. This saves 12 of 13 binning passes (~6 s each on 20k x 1,211, 2 cores).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ple_platform.core.progress import milestone
from ple_platform.core.tasks.spec import TASKS, TASKS_BY_NAME

if TYPE_CHECKING:  # imported where used: lightgbm pulls scipy and scikit-learn (seconds at import)
    import lightgbm as lgb

log = logging.getLogger(__name__)

DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,  # without it bagging_fraction is inert (reference item 23)
    "lambda_l2": 1.0,
    "max_bin": 255,
    "verbose": -1,
}
# A cheaper recipe for many-class tasks (fewer, larger steps on fewer features); opt-in, see the docstring of
# ``train_lightgbm_baselines``.
MANY_CLASS_OVERRIDES: dict[str, Any] = {"learning_rate": 0.1, "num_leaves": 31, "feature_fraction": 0.25}
HUBER_DELTA = 1.0
NUM_BOOST_ROUND = 1000
EARLY_STOPPING_ROUNDS = 50

_OBJECTIVES: dict[str, dict[str, Any]] = {
    "binary": {"objective": "binary", "metric": "binary_logloss"},
    "multiclass": {"objective": "multiclass", "metric": "multi_logloss"},
    "regression": {"objective": "huber", "alpha": HUBER_DELTA, "metric": "l1"},
}


def task_params(task: str, params: Mapping[str, Any] | None = None, seed: int = 0,
                num_threads: int = 2, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full LightGBM parameter dict of one task: defaults, objective, ``params``, then this task's
    ``overrides``."""
    spec = TASKS_BY_NAME[task]
    out = {**DEFAULT_PARAMS, **_OBJECTIVES[spec.kind]}
    if spec.kind == "multiclass":
        out["num_class"] = spec.n_classes
    out.update({"seed": seed, "deterministic": True, "force_col_wise": True, "num_threads": num_threads})
    out.update(params or {})
    out.update(overrides or {})
    return out


def _labelled(task: str, y) -> tuple[np.ndarray, np.ndarray]:
    """(row indices with a label, their labels) of one task."""
    spec = TASKS_BY_NAME[task]
    y = np.asarray(y, dtype=float).ravel()
    ok = np.isfinite(y)
    if spec.kind != "regression":
        ok &= y != -1
    idx = np.flatnonzero(ok)
    y = y[idx]
    if spec.kind == "binary" and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{task}: binary labels must be 0/1")
    if spec.kind == "multiclass" and len(y) and (y.min() < 0 or y.max() >= spec.n_classes or (y % 1).any()):
        raise ValueError(f"{task}: class labels must be integers in [0, {spec.n_classes})")
    return idx, y


def train_lightgbm_baselines(X_train, y_train: Mapping[str, Any], X_val, y_val: Mapping[str, Any],
                             params: Mapping[str, Any] | None = None, seed: int = 0, *,
                             tasks: Sequence[str] | None = None, num_boost_round: int = NUM_BOOST_ROUND,
                             early_stopping_rounds: int = EARLY_STOPPING_ROUNDS, num_threads: int = 2,
                             feature_names: Sequence[str] | None = None,
                             categorical_feature: Sequence[int] | str = "auto",
                             task_overrides: Mapping[str, Mapping[str, Any]] | None = None,
                             ) -> dict[str, lgb.Booster]:
    """One early-stopped LightGBM per task (default: every task of ``y_train``, in ``TASKS`` order).

    ``X_train`` / ``X_val``: (N, F) float matrices with the same columns (NaN = missing feature). ``y_*``:
    {task: (N,)} labels (NaN = missing). ``params`` override ``DEFAULT_PARAMS`` for every task,
    ``task_overrides[task]`` for one task (training parameters only: the binned matrix is shared, so dataset
    parameters such as ``max_bin`` must go in ``params``). Each booster has ``best_iteration`` (1-based; rounds
    kept), ``best_score`` and an attribute ``fit_seconds``.

    Cost: a multiclass task grows ``num_class`` trees per round, so next_mcc (50 classes) costs ~50 binary tasks
    per round; on 2 cores consider ``task_overrides={"next_mcc": MANY_CLASS_OVERRIDES}``.
    """
    X_train, X_val = np.asarray(X_train), np.asarray(X_val)
    if X_train.ndim != 2 or X_val.ndim != 2 or X_train.shape[1] != X_val.shape[1]:
        raise ValueError(f"X_train {X_train.shape} and X_val {X_val.shape} must be (N, F) with the same F")
    names = [t.name for t in TASKS if t.name in y_train] if tasks is None else list(tasks)
    unknown = [t for t in names if t not in TASKS_BY_NAME]
    if unknown:
        raise KeyError(f"unknown tasks {unknown}")
    if not names:
        return {}
    stray = set(task_overrides or {}) - set(names)
    if stray:
        raise KeyError(f"task_overrides for tasks not trained: {sorted(stray)}")
    # Dataset-level params (binning, pre-filter) must be identical for every task sharing the binned matrix.
    ds_params = task_params(names[0], params, seed, num_threads)
    ds_kw = dict(feature_name=list(feature_names) if feature_names is not None else "auto",
                 categorical_feature=categorical_feature)
    import lightgbm as lgb

    full_train = lgb.Dataset(X_train, label=np.zeros(len(X_train)), params=ds_params, free_raw_data=True,
                             **ds_kw).construct()
    full_val = lgb.Dataset(X_val, label=np.zeros(len(X_val)), reference=full_train, params=ds_params,
                           free_raw_data=True, **ds_kw).construct()
    models: dict[str, lgb.Booster] = {}
    for task in names:
        if task not in y_val:
            raise KeyError(f"{task}: no validation labels (early stopping needs the validation month)")
        it, yt = _labelled(task, y_train[task])
        iv, yv = _labelled(task, y_val[task])
        if len(np.ravel(y_train[task])) != len(X_train) or len(np.ravel(y_val[task])) != len(X_val):
            raise ValueError(f"{task}: labels and feature matrices differ in length")
        if len(it) == 0 or len(iv) == 0:
            raise ValueError(f"{task}: {len(it)} labelled training rows, {len(iv)} labelled validation rows")
        p = task_params(task, params, seed, num_threads, (task_overrides or {}).get(task))
        start = time.perf_counter()
        train = full_train.subset(it, params=p).construct()
        train.set_label(yt)  # after construct: a subset copies its parent's (placeholder) labels when built
        val = full_val.subset(iv, params=p).construct()
        val.set_label(yv)
        val.reference = train  # share bin mappers (same as the parent's); avoids a re-bin in lgb.train
        booster = lgb.train(p, train, num_boost_round=num_boost_round, valid_sets=[val], valid_names=["val"],
                            callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)])
        booster.fit_seconds = time.perf_counter() - start
        models[task] = booster
        log.info("lightgbm %s: %d/%d rounds, val %s, %.1fs", task, booster.best_iteration, num_boost_round,
                 dict(booster.best_score.get("val", {})), booster.fit_seconds)
        milestone("lightgbm baselines", task, len(names), rounds=booster.best_iteration,
                  seconds=f"{booster.fit_seconds:.1f}")
    return models


def predict_lightgbm(models: Mapping[str, lgb.Booster], X, num_threads: int = 2) -> dict[str, np.ndarray]:
    """{task: predictions} in ``evaluate_predictions``' format: binary P(y=1) (N,), multiclass class
    probabilities (N, C), regression values (N,); each booster at its best iteration."""
    X = np.asarray(X)
    out = {}
    for task, booster in models.items():
        best = booster.best_iteration if booster.best_iteration and booster.best_iteration > 0 else None
        pred = np.asarray(booster.predict(X, num_iteration=best, num_threads=num_threads))
        out[task] = pred if TASKS_BY_NAME[task].kind == "multiclass" else pred.reshape(len(X))
    return out

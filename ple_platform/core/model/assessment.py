"""Out-of-time assessment of a teacher checkpoint against two baselines on the same split (issue: teacher
evaluation; ml-anchors §7 protocol).

Models, all scored on the test month t-1 of the checkpoint's split, on the same customers (by default every
customer of that month, not only the teacher's training subsample):

* ``teacher``      the checkpoint (7 heterogeneous experts);
* ``lightgbm``     one early-stopped LightGBM per task on the same 1,211 raw feature columns, trained on the
                   teacher's training rows, early-stopped on its validation month (``baselines.py``);
* ``vanilla_ple``  the same PLE with every shared expert an MLP over all groups (``expert_kind="mlp"``), trained
                   with the teacher's settings and seed — isolates what the heterogeneous experts add.

Metrics per task come with percentile-bootstrap CIs; differences teacher − baseline use *paired* replicates
(same resampled customers). MAP@7 ranks the 24 products from the task predictions (``model.products``,
product priors fitted on the training rows only). Gate entropy and gate faithfulness are computed on the
teacher's test-month gates. Nothing here is tuned on the test month: every fit and early stop sees training and
validation months only.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ple_platform.core.data.schema import PRODUCT_NAMES, add_months
from ple_platform.core.model.baselines import MANY_CLASS_OVERRIDES, predict_lightgbm, train_lightgbm_baselines
from ple_platform.core.model.assessment_settings import AssessmentSettings  # noqa: F401  (re-exported)
from ple_platform.core.model.data import MonthData
from ple_platform.core.reporting import md_table
from ple_platform.core.model.evaluate import (
    compare_predictions,
    evaluate_predictions,
    gate_entropies,
    gate_faithfulness_all,
    gate_faithfulness_control,
    map_at_k_ci,
    mean_binary_auc,
)
from ple_platform.core.model.inference import load_checkpoint_data, predict_month
from ple_platform.core.model.teacher import TeacherSettings, fit_teacher, load_teacher
from ple_platform.core.model.products import fit_product_priors, product_scores
from ple_platform.core.runtime import compute_threads
from ple_platform.core.tasks.spec import TASKS, TASKS_BY_NAME
from ple_platform.core.tasks.split import TimeSplit

MODELS = ("teacher", "lightgbm", "vanilla_ple")
GOAL_MEAN_AUC_MARGIN = 0.005  # issue #4: teacher >= baseline + 0.005 mean binary AUC
GOAL_TASK_TOLERANCE = 0.005  # ... and no task worse than baseline - 0.005


def next_holdings(con: duckdb.DuckDBPyConnection, md: MonthData) -> np.ndarray:
    """(N, 24) 0/1 holdings at month+1 of every row of ``md`` (NaN where the customer is absent at t+1)."""
    out = np.full((md.n_rows, len(PRODUCT_NAMES)), np.nan)
    cols = ", ".join(f'h."{p}"' for p in PRODUCT_NAMES)
    for m in md.month_list:
        rows = np.flatnonzero(md.months == np.datetime64(m, "D"))
        ids = pa.table({"customer_id": pa.array(md.customer_ids[rows].tolist(), pa.string()),
                        "i": pa.array(np.arange(len(rows)))})
        con.register("_assess_ids", ids)
        try:
            res = con.execute(
                f"SELECT r.i, {cols} FROM _assess_ids r JOIN raw.holdings h "
                "ON h.customer_id = r.customer_id AND h.month = ?", [add_months(m, 1)]
            ).fetchnumpy()
        finally:
            con.unregister("_assess_ids")
        idx = rows[res["i"].astype(np.int64)]
        out[idx] = np.stack([np.asarray(res[p], dtype=float) for p in PRODUCT_NAMES], axis=1)
    return out


def acquisitions(held_t: np.ndarray, held_t1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows known at t+1, with held-at-t and acquired-by-t+1 masks."""
    known = np.isfinite(held_t1).all(1) & np.isfinite(held_t).all(1)
    h0 = np.nan_to_num(held_t) > 0.5
    h1 = np.nan_to_num(held_t1) > 0.5
    return known, h0, h1 & ~h0


def _labels(md: MonthData) -> dict[str, np.ndarray]:
    if md.labels is None:
        raise ValueError("assessment needs labelled months (train, validation and test)")
    return md.labels


def _lightgbm(raw: dict[str, MonthData], settings: AssessmentSettings, seed: int) -> tuple[dict, float]:
    start = time.perf_counter()
    models = train_lightgbm_baselines(
        raw["train"].matrix(), _labels(raw["train"]), raw["validation"].matrix(), _labels(raw["validation"]),
        params=settings.lgb_params, seed=seed, num_boost_round=settings.lgb_num_boost_round,
        early_stopping_rounds=settings.lgb_early_stopping,
        num_threads=settings.lgb_threads, task_overrides={"next_mcc": MANY_CLASS_OVERRIDES},
    )
    preds = predict_lightgbm(models, raw["test"].matrix(), num_threads=settings.lgb_threads)
    return preds, time.perf_counter() - start


def _vanilla(con, split: TimeSplit, teacher_settings: TeacherSettings, scaled_test: MonthData,
             workdir: Path) -> tuple[dict, dict]:
    settings = TeacherSettings(**{**asdict(teacher_settings), "expert_kind": "mlp"})
    result = fit_teacher(con, split.model_month, split.train[0], settings, workdir / "vanilla_ple",
                         progress_label="vanilla PLE")
    model, _ = load_teacher(result.checkpoint)
    preds = predict_month(model, scaled_test).preds
    return preds, {"train_seconds": result.seconds, "samples_per_second": result.samples_per_second,
                   "epochs_run": len(result.history["epochs"])}


def assess_teacher(con: duckdb.DuckDBPyConnection, checkpoint: bytes, workdir: Path,
                   settings: AssessmentSettings = AssessmentSettings()) -> dict:
    """Evaluate a teacher checkpoint and its two baselines out of time; a JSON-ready dict (see module doc)."""
    data = load_checkpoint_data(con, checkpoint, all_customers=("test",) if settings.score_all_test_customers else ())
    model, split, teacher_settings, raw = data.model, data.split, data.settings, data.raw
    test = raw["test"]
    labels = _labels(test)
    scaled_test = data.scaled("test")

    timings: dict[str, float] = {}
    start = time.perf_counter()
    teacher = predict_month(model, scaled_test)
    timings["teacher_predict_seconds"] = time.perf_counter() - start
    preds = {"teacher": teacher.preds}
    preds["lightgbm"], timings["lightgbm_fit_seconds"] = _lightgbm(raw, settings, teacher_settings.seed)
    vanilla_info: dict = {}
    if settings.train_vanilla:
        preds["vanilla_ple"], vanilla_info = _vanilla(con, split, teacher_settings, scaled_test, workdir)

    seed, n_boot = teacher_settings.seed, settings.n_boot
    metrics = {name: evaluate_predictions(labels, p, n_boot=n_boot, seed=seed) for name, p in preds.items()}
    diffs = {f"teacher_minus_{name}": compare_predictions(labels, preds["teacher"], p, n_boot=n_boot, seed=seed)
             for name, p in preds.items() if name != "teacher"}

    # Product ranking: priors from the training rows, MAP@7 on test customers who acquired something.
    known_tr, held_tr, acq_tr = acquisitions(raw["train"].holdings, next_holdings(con, raw["train"]))
    priors = fit_product_priors(held_tr[known_tr], (held_tr | acq_tr)[known_tr])
    known, held, acquired = acquisitions(test.holdings, next_holdings(con, test))
    map7 = {}
    for name, p in preds.items():
        scores = product_scores({t: np.asarray(v)[known] for t, v in p.items()}, priors)
        map7[name] = map_at_k_ci(scores, held[known], acquired[known], n_boot=n_boot, seed=seed)

    rows = np.arange(min(settings.faithfulness_rows, scaled_test.n_rows))
    with compute_threads():
        faith = gate_faithfulness_all(model, scaled_test.to_batch(rows), labels=scaled_test.label_tensors(rows))
        crows = rows[: settings.faithfulness_control_rows]
        control = gate_faithfulness_control(model, scaled_test.to_batch(crows), n_perm=settings.faithfulness_control_perms,
                                            n_boot=settings.n_boot, seed=seed, labels=scaled_test.label_tensors(crows))
    return {
        "model_month": split.model_month.isoformat(),
        "split": split.as_dict(),
        "n_test_customers": int(test.n_rows),
        "n_train_rows": int(raw["train"].n_rows),
        "metrics": metrics,
        "mean_binary_auc": {name: mean_binary_auc(m) for name, m in metrics.items()},
        "differences": diffs,
        "map_at_7": map7,
        "gate_entropy": gate_entropies(teacher.gates),
        "gate_faithfulness": faith,
        "gate_faithfulness_control": control,
        "goal": goal_check(metrics, diffs.get("teacher_minus_lightgbm", {})),
        "timings": timings,
        "vanilla_ple": vanilla_info,
        "code_version": data.code_version,
    }


def goal_check(metrics: dict, diff_vs_lgbm: dict) -> dict:
    """Issue #4's quality goal on binary AUC: mean teacher − LightGBM ≥ 0.005, no task below −0.005."""
    mean = diff_vs_lgbm.get("mean_binary_auc", {}).get("auc", {})
    per_task = {t: d["auc"]["value"] for t, d in diff_vs_lgbm.items()
                if t in TASKS_BY_NAME and TASKS_BY_NAME[t].kind == "binary" and "auc" in d}
    worst = min(per_task.items(), key=lambda kv: kv[1]) if per_task else (None, float("nan"))
    met = bool(mean and mean["value"] >= GOAL_MEAN_AUC_MARGIN
               and all(v >= -GOAL_TASK_TOLERANCE for v in per_task.values()))
    return {"met": met, "mean_auc_diff": mean.get("value", float("nan")), "mean_auc_diff_ci": [mean.get("lo"), mean.get("hi")],
            "worst_task": worst[0], "worst_task_diff": worst[1]}


def _fmt(m: dict | None) -> str:
    if not m or not math.isfinite(m.get("value", float("nan"))):
        return "–"
    lo, hi = m.get("lo", float("nan")), m.get("hi", float("nan"))
    ci = f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"{m['value']:.3f}{ci}"


def results_markdown(result: dict) -> str:
    """Per-task primary metric of every model (95% CI), then mean binary AUC and MAP@7."""
    models = [m for m in MODELS if m in result["metrics"]]
    diff = result["differences"].get("teacher_minus_lightgbm", {})
    rows = [(spec.name, spec.primary_metric,
             *(_fmt(result["metrics"][m].get(spec.name, {}).get(spec.primary_metric)) for m in models),
             _fmt(diff.get(spec.name, {}).get(spec.primary_metric))) for spec in TASKS]
    rows.append(("**mean binary AUC**", "auc", *(f"{result['mean_binary_auc'][m]:.4f}" for m in models),
                 _fmt(diff.get("mean_binary_auc", {}).get("auc"))))
    rows.append(("**MAP@7** (products)", "map", *(_fmt(result["map_at_7"].get(m)) for m in models), ""))
    return md_table(["task", "metric", *models, "teacher − lightgbm"], rows)


def gates_markdown(result: dict) -> str:
    """Per task: gate entropy, the zero-masking share (no control: random gates score ~0.7), the margin over the
    no-information control with its CI, and whether the gates pass (CI above 0 and margin >= the goal)."""
    rows = []
    controls = result.get("gate_faithfulness_control", {})
    for task, ent in result["gate_entropy"].items():
        f = result["gate_faithfulness"].get(task, {})
        c = controls.get(task, {})
        m = c.get("margin", {})
        margin = (f"{m['value']:+.3f} [{m['lo']:+.3f}, {m['hi']:+.3f}]" if m else "–")
        verdict = "yes" if c.get("passes") else "no" if c else "–"
        top = max(f.get("top_expert_share", {"–": 0}).items(), key=lambda kv: kv[1])
        rows.append((task, f"{ent:.3f}", f"{f.get('share', float('nan')):.2f}", margin, verdict,
                     f"{top[0]} ({top[1]:.0%})"))
    return md_table(["task", "gate entropy", "zero-masking share", "margin over control [95% CI]", "gates explain",
                     "top expert (most often)"], rows)

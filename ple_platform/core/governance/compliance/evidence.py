"""The evidence behind a month's compliance report, gathered from what the platform actually stored.

``collect_evidence`` fills ``report.ReportEvidence`` from real evidence only: fairness of the month's
recommendations, feature and prediction drift against the bundle's training / test months, calibration on the
test month, the teacher's gate profile, data hashes, audit verification, registry decisions / approvals /
history, the serving controls measured by the recommendation batch, the safety gate's figures on its labelled
set (scored now) with the month's gate verdicts from the audit log, and the month's ops/audit reviews if stored. Whatever is not measured stays None and
the report reads "missing evidence". If the recommendations table changed since the batch was written (its
content hash differs from the summary's), the batch's counts are not evidence and are left out.
"""

from __future__ import annotations

import json
from datetime import date

import duckdb
import numpy as np
import pyarrow as pa

from ple_platform.core.data.schema import RAW_TABLES
from ple_platform.core.distillation.bundle import distillation_dataset_key, load_bundle_students, predict_bundle
from ple_platform.core.distillation.dataset import DistillationData
from ple_platform.core.features.spec import FEATURE_GROUPS, all_columns
from ple_platform.core.governance.compliance import report as rpt
from ple_platform.core.governance.audit.log import AuditLog
from ple_platform.core.governance.compliance.drift import drift_table
from ple_platform.core.governance.compliance.evidence_settings import EvidenceSettings  # noqa: F401  (re-exported)
from ple_platform.core.governance.compliance.fairness import fairness_report, protected_groups
from ple_platform.core.governance.promotion.registry import Registry
from ple_platform.core.governance.review.agents import review_key
from ple_platform.core.model.data import LABEL_TABLE, load_month, month_customer_ids
from ple_platform.core.recommend.monthly import TABLE, registered_teacher, summary_key, training_months
from ple_platform.core.reasons_llm.evaluation import evaluate as evaluate_gate
from ple_platform.core.serving.evidence import rewrite_verdicts, serving_control_evidence
from ple_platform.core.storage import ArtifactStore
from ple_platform.core.tasks.spec import TASKS, TASKS_BY_NAME
from ple_platform.core.warehouse import customer_attributes, partition_content_hash

MAX_DRIFT_ROWS = 20_000

CALIBRATION_BINS = 10


class EvidenceError(ValueError):
    """The report cannot be built for this month (no recommendation batch to report on)."""


def prediction_columns(task: str) -> list[str]:
    spec = TASKS_BY_NAME[task]
    return [f"{task}_p{k}" for k in range(spec.n_classes)] if spec.kind == "multiclass" else [task]


def _as2d(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return p if p.ndim == 2 else p[:, None]


def calibration_bins(p: np.ndarray, y: np.ndarray, n_bins: int = CALIBRATION_BINS) -> list[dict]:
    """Equal-width reliability bins of binary predictions on labelled rows (empty bins left out)."""
    ok = np.isfinite(y)
    p, y = np.clip(np.asarray(p, float)[ok], 0, 1), np.asarray(y, float)[ok]
    b = np.minimum((p * n_bins).astype(int), n_bins - 1)
    cnt = np.bincount(b, minlength=n_bins)
    sp, sy = np.bincount(b, p, n_bins), np.bincount(b, y, n_bins)
    return [{"mean_predicted": float(sp[i] / cnt[i]), "observed_rate": float(sy[i] / cnt[i]), "count": int(cnt[i])}
            for i in np.flatnonzero(cnt)]


def month_labels(con: duckdb.DuckDBPyConnection, month: date, ids: np.ndarray) -> dict[str, np.ndarray] | None:
    """The month's task labels in ``ids`` order (NaN where absent); None when the month has no labels."""
    try:
        (n,) = con.execute(f"SELECT count(*) FROM {LABEL_TABLE} WHERE month = ?", [month]).fetchall()[0]
    except duckdb.CatalogException:
        return None
    if not n:
        return None
    con.register("_lab_ids", pa.table({"customer_id": pa.array(ids.tolist(), pa.string()),
                                       "i": pa.array(np.arange(len(ids)))}))
    try:
        cols = ", ".join(f'CAST(l."{t.name}" AS DOUBLE) AS "{t.name}"' for t in TASKS)
        rows = con.execute(f"SELECT r.i, {cols} FROM _lab_ids r LEFT JOIN {LABEL_TABLE} l ON l.customer_id = "
                           "r.customer_id AND l.month = ? ORDER BY r.i", [month]).fetchnumpy()
    finally:
        con.unregister("_lab_ids")
    return {t.name: np.asarray(rows[t.name], dtype=float) for t in TASKS}


def recommendation_fairness(con: duckdb.DuckDBPyConnection, month: date, n_boot: int,
                            min_group_size: int) -> dict | None:
    """Per acquisition task: selected = the customer got a product of that task in their top 7, over every
    customer scored at ``month``; outcome labels of the month are used when stored."""
    (n_recs,) = con.execute(f"SELECT count(*) FROM {TABLE} WHERE month = ?", [month]).fetchall()[0]
    if not n_recs:
        return None
    ids = month_customer_ids(con, month)
    groups = protected_groups(customer_attributes(con, month, ids))
    recs = con.execute(f"SELECT DISTINCT customer_id, task FROM {TABLE} WHERE month = ?", [month]).fetchnumpy()
    rec_ids, rec_tasks = np.asarray(recs["customer_id"], dtype=object), np.asarray(recs["task"], dtype=object)
    labels = month_labels(con, month, ids)
    out = {}
    for t in TASKS:
        if t.name.startswith("will_acquire_"):
            selected = np.isin(ids, rec_ids[rec_tasks == t.name])
            out[t.name] = fairness_report(selected, groups, None if labels is None else labels[t.name],
                                          min_group_size=min_group_size, n_boot=n_boot).to_dict()
    return out


def collect_evidence(con: duckdb.DuckDBPyConnection, store: ArtifactStore, registry: Registry, audit: AuditLog,
                     month: date, settings: EvidenceSettings, run_id: str | None = None) -> rpt.ReportEvidence:
    """Everything the compliance report of ``month`` states, measured now (see module doc)."""
    if not store.exists(summary_key(month)):
        raise EvidenceError(f"no recommendations for {month:%Y-%m}: materialize recommendations first")
    summary = json.loads(store.get(summary_key(month)))
    bundle = registry.get(summary["version"])
    served = summary["content_hash"] == partition_content_hash(con, TABLE, month)

    students = load_bundle_students(store, bundle)
    names = all_columns()
    md = load_month(con, month, labels=False, max_customers=MAX_DRIFT_ROWS)
    X = md.matrix()
    train = training_months(con, bundle, registered_teacher(con, store, bundle), MAX_DRIFT_ROWS)
    cols = {g.name: list(g.columns) for g in FEATURE_GROUPS}
    drift_features = drift_table({g: train.group(g) for g in cols}, {g: md.group(g) for g in cols}, cols)

    test = DistillationData.from_bytes(store.get(distillation_dataset_key(bundle.model_month))).parts["test"]
    pred_t, pred_test = predict_bundle(students, X, names), predict_bundle(students, test.X, names)
    pcols = {t: prediction_columns(t) for t in students}
    drift_predictions = drift_table({t: _as2d(pred_test[t]) for t in pcols}, {t: _as2d(pred_t[t]) for t in pcols},
                                    pcols)
    calibration = {t: calibration_bins(pred_test[t], test.labels[t]) for t, s in students.items()
                   if s.kind == "binary" and np.isfinite(test.labels[t]).any()}

    fairness = recommendation_fairness(con, month, settings.n_boot, settings.min_group_size) if served else None

    raw_counts, raw_hashes = {}, {}
    for table in RAW_TABLES:
        (n,) = con.execute(f"SELECT count(*) FROM raw.{table} WHERE month = ?", [month]).fetchall()[0]
        raw_counts[f"raw.{table}"] = int(n)
        raw_hashes[f"raw.{table}/{month.isoformat()}"] = partition_content_hash(con, f"raw.{table}", month)
    raw_counts[TABLE] = int(summary["rows"]) if served else None

    verify = audit.verify()
    decisions = registry.decisions(bundle.version)
    approvals = [{"version": a.version, "approver": a.approver, "approved_at": a.approved_at.isoformat(),
                  "evidence_sha256": a.evidence_sha256, "note": a.note} for a in registry.approvals(bundle.version)]
    history = [{"version": h.version, "promoted_at": h.promoted_at.isoformat(), "kind": h.kind.value,
                "previous_version": h.previous_version, "decision_id": h.decision_id}
               for h in registry.champion_history()]
    d = decisions[-1] if decisions else None
    run_ids = {"model_bundle": bundle.run_id, "recommendations": summary.get("run_id"), "compliance_report": run_id}
    return rpt.ReportEvidence(
        month=month.isoformat(), model_version=bundle.version, bundle_sha256=bundle.bundle_sha256,
        teacher={"code_version": bundle.code_version, "checkpoint_sha256": bundle.teacher_sha256,
                 "train_months": [m.isoformat() for m in bundle.train_months],
                 "validation_month": bundle.validation_month.isoformat(), "test_month": bundle.test_month.isoformat()},
        students={t: {"route": getattr(a.route, "value", a.route), "sha256": a.sha256,
                      "n_features": a.metrics.get("n_features"), "fidelity_passed": a.metrics.get("fidelity_passed")}
                  for t, a in bundle.students.items()},
        task_metrics={t: a.metrics["test"] for t, a in bundle.students.items() if a.metrics.get("test")} or None,
        fairness=fairness or None,
        drift_features=drift_features, drift_predictions=drift_predictions, calibration=calibration or None,
        gate_profile=summary.get("gate_profile") if served else None,
        data={"source": settings.landing_kind, "row_counts": raw_counts, "raw_hashes": raw_hashes,
              "feature_hashes": dict(bundle.feature_hashes),
              "pseudonymisation": {"enabled": True,  # raw ingest always pseudonymises customer ids
                                   "key_source": settings.pseudonymisation_key_source}},
        audit={"verify": {"ok": verify.ok, "n_entries": verify.n_entries,
                          "first_broken_seq": verify.first_broken_seq, "reason": verify.reason},
               "n_entries": verify.n_entries, "key_source": settings.audit_key_source},
        approvals=approvals or None,
        decision=None if d is None else {"outcome": d.outcome.value, "reasons": list(d.reasons),
                                         "evidence_sha256": d.evidence_sha256, "version": d.version,
                                         "champion_version": d.champion_version},
        champion_history=history or None,
        lineage={"run_ids": {k: v for k, v in run_ids.items() if v}},
        serving_controls={"suitability_rule_active": True,
                          "blocked_investment_recs": int(summary["blocked_investment_pairs"]),
                          **serving_control_evidence(audit)} if served else None,
        explanations={"n_reasons": summary["n_reasons"], "n_grounded": summary["n_grounded"],
                      "languages": summary["languages"],
                      **({"gate_citation": summary["gate_citation"]} if "gate_citation" in summary else {})}
        if served else None,
        human_oversight={"approval_required": settings.require_approval},
        # Scored now on the running rules (2-4 s), never a figure carried over from other code.
        reason_gate={"evaluation": evaluate_gate(), "month_verdicts": rewrite_verdicts(audit, month.isoformat())},
        reviews=month_reviews(store, month),
    )


def month_reviews(store: ArtifactStore, month: date) -> dict | None:
    """The month's stored ops/audit review JSON (written by those assets), or None when neither exists."""
    out = {}
    for kind in ("ops", "audit"):
        key = review_key(month.isoformat(), kind)
        if store.exists(key):
            out[kind] = json.loads(store.get(key))
    return out or None

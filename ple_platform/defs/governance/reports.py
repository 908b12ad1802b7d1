"""Monthly outputs of the serving champion (group ``governance``): ``recommendations`` and ``compliance_report``.

* ``recommendations`` (monthly): the champion bundle scores every customer of month t from the raw warehouse
  features; products are ranked by ``ranking.product_scores`` (priors fitted on the bundle's training months'
  holdings t -> t+1, with ``assessment.next_holdings``/``_acquired``), filtered by suitability
  (``ranking.eligibility``: no investment product without a profile) and held products, top 7 per customer.
  Each recommendation gets L1 reasons in English and Korean (``reasons.explain_batch``) from the TreeSHAP of the
  student that scored its product (one ``predict_contrib`` per task over the customers who got a product of that
  task) and the teacher's shared gate weights of that task (the registered teacher checkpoint, month t scaled with
  its own scaler).

  **Protected attributes are never quoted as a reason.** The contributions of age, age band, gender and province
  columns (``PROTECTED_COLUMNS``) are zeroed before reasons are selected: telling a customer "because of your
  gender/age/province" would state a protected characteristic as the ground of a financial offer (Korean Financial
  Consumer Protection Act unfair-discrimination rule, AI Basic Act high-impact duties; GDPR/EU AI Act special
  care), and the helper that wrote ``reasons.py`` flagged that its selector would otherwise pick them. The scores
  themselves are unchanged; fairness of the outcome is monitored in the compliance report instead.

  Output: ``governance.recommendations`` in the warehouse, the month's rows replaced atomically
  (``warehouse.replace_partition``); ids are ``sha256(version|month|customer|rank)[:20]`` (DuckDB, vectorised).
  One ``recommendation`` audit entry per month batch (never per row) with the partition's content hash, and a
  small summary (reason counts, grounding, suitability blocks, gate profile) at
  ``recommendations/<month>/summary.json`` in the artifact store for the report.

* ``compliance_report`` (monthly): ``report.ReportEvidence`` filled from real evidence only (fairness of the
  month's recommendations, feature and prediction drift against the bundle's training/test months, calibration on
  the test month, gate profile, data hashes, audit verification, registry decisions/approvals/history, serving
  controls measured by ``recommendations``); everything else stays None and reads "missing evidence". JSON + HTML
  go to the artifact store (``reports/<month>/``) and to ``<PLE_DATA_DIR>/reports/`` for a user to open.
"""

import json
import os
from datetime import date

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa

from ple_platform.core.data.schema import PRODUCT_NAMES, PRODUCTS, RAW_TABLES
from ple_platform.core.distillation.bundle import distillation_dataset_key, load_bundle_students, predict_bundle
from ple_platform.core.distillation.dataset import DistillationData
from ple_platform.core.features.spec import FEATURE_GROUPS, all_columns
from ple_platform.core.governance import report as rpt
from ple_platform.core.governance.audit_log import AuditEvent, AuditIntegrityError
from ple_platform.core.governance.drift import drift_table
from ple_platform.core.governance.fairness import fairness_report, protected_groups
from ple_platform.core.governance.registry import ModelBundle
from ple_platform.core.governance.pseudonymise import KEY_ENV_VAR
from ple_platform.core.model.assessment import _acquired, next_holdings
from ple_platform.core.model.data import LABEL_TABLE, MonthData, load_month, load_months, month_customer_ids
from ple_platform.core.model.inference import CheckpointData, load_checkpoint_data, predict_month
from ple_platform.core.recommend import ranking, reasons
from ple_platform.core.settings import Settings
from ple_platform.core.storage import sha256_bytes
from ple_platform.core.tasks.spec import TASKS, TASKS_BY_NAME
from ple_platform.core.warehouse import customer_attributes, partition_content_hash, replace_partition
from ple_platform.defs.partitions import MONTHLY
from ple_platform.defs.raw.assets import WAREHOUSE_POOL
from ple_platform.defs.resources import ArtifactStoreResource, GovernanceResource, WarehouseResource
from ple_platform.defs.training.assets import teacher_checkpoint_key

TABLE = "governance.recommendations"
TOP_K = 7
TOP_REASONS = 3
LANGS = ("en", "ko")
# Feature columns that encode a protected attribute (age, age band, gender, province, moving province).
PROTECTED_COLUMNS = frozenset({"age", "age_band_code", "gender_code", "province_code", "province_changed"})
PROTECTED_CONCEPTS = frozenset({"age", "gender", "province", "moved"})
MAX_DRIFT_ROWS = 20_000
CALIBRATION_BINS = 10

_DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    recommendation_id VARCHAR NOT NULL, month DATE NOT NULL, customer_id VARCHAR NOT NULL, rank INTEGER NOT NULL,
    product VARCHAR NOT NULL, score DOUBLE NOT NULL, task VARCHAR NOT NULL, task_scores JSON NOT NULL,
    reason_en VARCHAR NOT NULL, reason_ko VARCHAR NOT NULL, reason_features JSON NOT NULL,
    bundle_version VARCHAR NOT NULL, bundle_sha256 VARCHAR NOT NULL)"""


def summary_key(month: date) -> str:
    return f"recommendations/{month.isoformat()}/summary.json"


def report_key(month: date, name: str) -> str:
    return f"reports/{month.isoformat()}/{name}"


# ------------------------------------------------------------------------------------------------ helpers


def _teacher(con: duckdb.DuckDBPyConnection, store, bundle: ModelBundle) -> CheckpointData:
    """The registered teacher (content-addressed checkpoint, hash checked), without loading its months."""
    key = teacher_checkpoint_key(bundle.model_month, bundle.teacher_sha256)
    if not store.exists(key):
        raise dg.Failure(description=f"teacher checkpoint {key} of {bundle.version} is missing from the store")
    checkpoint = store.get(key)
    if sha256_bytes(checkpoint) != bundle.teacher_sha256:
        raise dg.Failure(description=f"teacher checkpoint {key} differs from the registered sha256 of "
                                     f"{bundle.version}; refusing to use it")
    return load_checkpoint_data(con, checkpoint, parts=())


def _training_months(con, bundle: ModelBundle, cd: CheckpointData, max_rows: int | None = None) -> MonthData:
    per_month = cd.settings.max_customers_per_month
    if max_rows is not None:
        cap = max(1, max_rows // len(bundle.train_months))
        per_month = min(per_month, cap) if per_month else cap
    return load_months(con, list(bundle.train_months), labels=False, max_customers=per_month,
                       sample_seed=cd.settings.seed)


def fit_priors(con, train: MonthData) -> ranking.ProductPriors:
    """Within-group acquisition shares from the bundle's training months (t -> t+1 holdings)."""
    known, held, acquired = _acquired(train.holdings, next_holdings(con, train))
    if not known.any():
        raise dg.Failure(description="no training-month customer is observed at t+1: cannot fit product priors")
    return ranking.fit_product_priors(held[known], (held | acquired)[known])


def _task_scores_json(preds: dict[str, np.ndarray]) -> list[str]:
    """Per customer: binary P(y=1), regression value, multiclass {class, p} of the most likely class."""
    cols: dict[str, list] = {}
    for t in TASKS:
        if t.name not in preds:
            continue
        p = np.asarray(preds[t.name])
        if p.ndim == 2:
            k = p.argmax(1)
            cols[t.name] = [{"class": int(a), "p": round(float(b), 6)} for a, b in zip(k, p[np.arange(len(p)), k])]
        else:
            cols[t.name] = np.round(p.astype(float), 6).tolist()
    names = list(cols)
    return [json.dumps(dict(zip(names, vals)), sort_keys=True) for vals in zip(*cols.values())]


def _explain(students, X, names, pos, customer_rows, products, gates, flags):
    """Reasons (en, ko) per recommendation row, one predict_contrib per task; returns texts, features JSON and
    grounding counts."""
    n = len(customer_rows)
    texts = {lang: np.empty(n, dtype=object) for lang in LANGS}
    features = np.empty(n, dtype=object)
    n_reasons = n_grounded = 0
    tasks = np.array([ranking.task_for_product(int(p)) for p in range(len(PRODUCT_NAMES))])[products]
    for task in np.unique(tasks):
        sel = np.flatnonzero(tasks == task)
        student = students[task]
        rows = customer_rows[sel]
        class_index = None
        if student.kind == "multiclass":
            class_index = np.array([ranking.NBA_CLASS[PRODUCTS[p].group] for p in products[sel]])
        contrib = student.predict_contrib(X[rows], names, class_index=class_index).values.copy()
        protected = np.array([c in PROTECTED_COLUMNS for c in student.features] + [False])
        contrib[:, protected] = 0.0  # never a reason: see the module docstring
        cols = np.array([pos[c] for c in student.features])
        raw = X[np.ix_(rows, cols)].astype(np.float64)
        gate = {e: w[rows] for e, w in gates[task].items()} if task in gates else None
        by_lang = {lang: reasons.explain_batch(products[sel], task, contrib, student.features, raw, gate, lang,
                                               TOP_REASONS) for lang in LANGS}
        for j, i in enumerate(sel):
            raw_row = {c: float(raw[j, k]) for k, c in enumerate(student.features)}
            gate_row = None if gate is None else {e: float(w[j]) for e, w in gate.items()}
            for lang in LANGS:
                rs = by_lang[lang][j]
                texts[lang][i] = " ".join(r.text for r in rs)
                n_reasons += len(rs)
                n_grounded += sum(reasons.grounded_numbers(r, raw_row, gate_row) for r in rs)
                if any(set(r.concept_keys) & flags for r in rs):
                    raise dg.Failure(description=f"a reason for {task} quotes a protected attribute")
            features[i] = json.dumps([r.to_dict() for r in by_lang["en"][j]], sort_keys=True)
    return texts, features, n_reasons, n_grounded


# ------------------------------------------------------------------------------------------------ recommendations


@dg.asset(
    group_name="governance",
    partitions_def=MONTHLY,
    deps=[dg.AssetDep("champion_model"), "raw_customers", *(g.name for g in FEATURE_GROUPS)],
    pool=WAREHOUSE_POOL,
    kinds={"lightgbm", "duckdb"},
    owners=["team:ml-platform"],
    metadata={"dagster/table_name": TABLE},
)
def recommendations(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                    artifacts: ArtifactStoreResource, governance: GovernanceResource) -> dg.MaterializeResult:
    """Top-7 products per customer of month t from the champion's students, with English and Korean reasons
    (TreeSHAP of the serving student + teacher gate weights), suitability-filtered, audit-logged per batch."""
    month = date.fromisoformat(context.partition_key)
    store = artifacts.store()
    bundle = governance.registry().champion()
    if bundle is None:
        raise dg.Failure(description="no champion yet: promote a model bundle before recommending")
    students = load_bundle_students(store, bundle)
    names = all_columns()
    pos = {c: i for i, c in enumerate(names)}
    with warehouse.get_connection() as con:
        md = load_month(con, month, labels=False)
        if md.n_rows == 0:
            raise dg.Failure(description=f"no customers with features at {month:%Y-%m}")
        X = md.matrix()
        preds = predict_bundle(students, X, names)
        cd = _teacher(con, store, bundle)
        priors = fit_priors(con, _training_months(con, bundle, cd))
        attrs = customer_attributes(con, month, md.customer_ids)
        gates_all = predict_month(cd.model, cd.scaler.transform(md))
        if not np.array_equal(gates_all.customer_ids, md.customer_ids):
            raise dg.Failure(description="teacher gate rows are not in the feature rows' customer order")
        gates = {t: gates_all.shared_gates(t) for t in students}

        scores = ranking.product_scores(preds, priors)
        eligible, blocked = ranking.eligibility(attrs["suitability_profile"])
        idx, top = ranking.top_k(scores, md.holdings > 0.5, TOP_K, eligible)
        cust, rank0 = np.nonzero(idx >= 0)
        products = idx[cust, rank0]
        texts, features, n_reasons, n_grounded = _explain(students, X, names, pos, cust, products, gates,
                                                          PROTECTED_CONCEPTS)
        task_json = np.asarray(_task_scores_json(preds), dtype=object)
        tasks = [ranking.task_for_product(int(p)) for p in products]
        table = pa.table({
            "customer_id": pa.array(md.customer_ids[cust].tolist(), pa.string()),
            "rank": pa.array(rank0 + 1, pa.int32()),
            "product": pa.array(np.asarray(PRODUCT_NAMES, dtype=object)[products].tolist(), pa.string()),
            "score": pa.array(top[cust, rank0], pa.float64()),
            "task": pa.array(tasks, pa.string()),
            "task_scores": pa.array(task_json[cust].tolist(), pa.string()),
            "reason_en": pa.array(texts["en"].tolist(), pa.string()),
            "reason_ko": pa.array(texts["ko"].tolist(), pa.string()),
            "reason_features": pa.array(features.tolist(), pa.string()),
        })
        con.execute("CREATE SCHEMA IF NOT EXISTS governance")
        con.execute(_DDL)
        con.register("_recs", table)
        # Literals, not parameters (replace_partition takes plain SQL): the registry restricts versions to
        # [A-Za-z0-9._:+-] and the sha is hex, so neither can contain a quote.
        ver, sha, m = bundle.version, bundle.bundle_sha256, month.isoformat()
        try:
            n = replace_partition(con, TABLE, month, f"""
                SELECT left(sha256('{ver}|{m}|' || customer_id || '|' || CAST(rank AS VARCHAR)), 20), DATE '{m}',
                       customer_id, rank, product, score, task, task_scores, reason_en, reason_ko, reason_features,
                       '{ver}', '{sha}'
                FROM _recs""")
        finally:
            con.unregister("_recs")
        content_hash = partition_content_hash(con, TABLE, month)
        sample = con.execute(f"SELECT customer_id, rank, product, round(score, 4), reason_en FROM {TABLE} "
                             "WHERE month = ? ORDER BY customer_id, rank LIMIT 5", [month]).fetchall()
    n_customers = int(len(np.unique(cust)))
    gate_profile = {t: {e: float(np.mean(w)) for e, w in g.items()} for t, g in gates.items()}
    summary = {"month": month.isoformat(), "version": bundle.version, "bundle_sha256": bundle.bundle_sha256,
               "rows": n, "customers": n_customers, "customers_scored": int(md.n_rows),
               "blocked_investment_pairs": blocked, "n_reasons": n_reasons, "n_grounded": n_grounded,
               "languages": list(LANGS), "gate_profile": gate_profile, "content_hash": content_hash,
               "run_id": context.run_id}
    store.put(summary_key(month), json.dumps(summary, sort_keys=True).encode())
    governance.audit_log().append(AuditEvent.RECOMMENDATION, f"recommendations/{month.isoformat()}", {
        "version": bundle.version, "bundle_sha256": bundle.bundle_sha256, "n": n, "customers": n_customers,
        "content_hash": content_hash, "run_id": context.run_id}, actor=f"dagster-run:{context.run_id}")
    md_sample = "| customer | rank | product | score | reason (en) |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {c[:10]}… | {r} | {p} | {s} | {t.replace('|', '/')} |" for c, r, p, s, t in sample)
    return dg.MaterializeResult(
        metadata={"dagster/row_count": n, "rows": n, "customers": n_customers,
                  "blocked_investment_pairs": blocked,
                  "share_grounded": round(n_grounded / n_reasons, 6) if n_reasons else 0.0,
                  "n_reasons": n_reasons, "sample": dg.MetadataValue.md(md_sample),
                  "bundle_version": bundle.version, "bundle_sha256": bundle.bundle_sha256,
                  "content_hash": content_hash},
        data_version=dg.DataVersion(content_hash),
    )


# ------------------------------------------------------------------------------------------------ compliance report


class ComplianceReportConfig(dg.Config):
    n_boot: int = 200
    min_group_size: int = 50  # smaller groups are "insufficient evidence", never a pass


def _pred_columns(task: str) -> list[str]:
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


def _fairness(con, month: date, config: "ComplianceReportConfig") -> dict | None:
    """Per acquisition task: selected = the customer got a product of that task in their top 7, over every
    customer scored at ``month``; outcome labels of the month are used when stored."""
    (n_recs,) = con.execute(f"SELECT count(*) FROM {TABLE} WHERE month = ?", [month]).fetchall()[0]
    if not n_recs:
        return None
    ids = month_customer_ids(con, month)
    groups = protected_groups(customer_attributes(con, month, ids))
    recs = con.execute(f"SELECT DISTINCT customer_id, task FROM {TABLE} WHERE month = ?", [month]).fetchnumpy()
    rec_ids, rec_tasks = np.asarray(recs["customer_id"], dtype=object), np.asarray(recs["task"], dtype=object)
    labels = _month_labels(con, month, ids)
    out = {}
    for t in TASKS:
        if t.name.startswith("will_acquire_"):
            selected = np.isin(ids, rec_ids[rec_tasks == t.name])
            out[t.name] = fairness_report(selected, groups, None if labels is None else labels[t.name],
                                          min_group_size=config.min_group_size, n_boot=config.n_boot).to_dict()
    return out


def _month_labels(con, month: date, ids: np.ndarray) -> dict[str, np.ndarray] | None:
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


def _evidence(context, config: ComplianceReportConfig, con, store, governance, month: date) -> rpt.ReportEvidence:
    settings = Settings.from_env()
    if not store.exists(summary_key(month)):
        raise dg.Failure(description=f"no recommendations for {month:%Y-%m}: materialize recommendations first")
    summary = json.loads(store.get(summary_key(month)))
    registry, audit = governance.registry(), governance.audit_log()
    bundle = registry.get(summary["version"])
    current_hash = partition_content_hash(con, TABLE, month)
    served = summary["content_hash"] == current_hash  # else the table changed since: its counts are not evidence

    students = load_bundle_students(store, bundle)
    names = all_columns()
    md = load_month(con, month, labels=False, max_customers=MAX_DRIFT_ROWS)
    X = md.matrix()
    cd = _teacher(con, store, bundle)
    train = _training_months(con, bundle, cd, MAX_DRIFT_ROWS)
    cols = {g.name: list(g.columns) for g in FEATURE_GROUPS}
    drift_features = drift_table({g: train.group(g) for g in cols}, {g: md.group(g) for g in cols}, cols)

    test = DistillationData.from_bytes(store.get(distillation_dataset_key(bundle.model_month))).parts["test"]
    pred_t, pred_test = predict_bundle(students, X, names), predict_bundle(students, test.X, names)
    pcols = {t: _pred_columns(t) for t in students}
    drift_predictions = drift_table({t: _as2d(pred_test[t]) for t in pcols}, {t: _as2d(pred_t[t]) for t in pcols},
                                    pcols)
    calibration = {t: calibration_bins(pred_test[t], test.labels[t]) for t, s in students.items()
                   if s.kind == "binary" and np.isfinite(test.labels[t]).any()}

    fairness = _fairness(con, month, config) if served else None

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
                                   "key_source": "env" if os.environ.get(KEY_ENV_VAR) else "dev_default"}},
        audit={"verify": {"ok": verify.ok, "n_entries": verify.n_entries,
                          "first_broken_seq": verify.first_broken_seq, "reason": verify.reason},
               "n_entries": verify.n_entries},
        approvals=approvals or None,
        decision=None if d is None else {"outcome": d.outcome.value, "reasons": list(d.reasons),
                                         "evidence_sha256": d.evidence_sha256, "version": d.version,
                                         "champion_version": d.champion_version},
        champion_history=history or None,
        lineage={"run_ids": {k: v for k, v in {"model_bundle": bundle.run_id, "recommendations": summary.get("run_id"),
                                               "compliance_report": context.run_id}.items() if v}},
        serving_controls={"suitability_rule_active": True,
                          "blocked_investment_recs": int(summary["blocked_investment_pairs"])} if served else None,
        explanations={"n_reasons": summary["n_reasons"], "n_grounded": summary["n_grounded"],
                      "languages": summary["languages"]} if served else None,
        human_oversight={"approval_required": settings.require_approval},
    )


def _checklist_md(report: dict) -> str:
    lines = ["| control | status | first finding |", "|---|---|---|"]
    for c in report["checklist"]:
        detail = (c["detail"][0] if c["detail"] else "").replace("|", "/")
        lines.append(f"| {c['id']} {c['title_en']} | {c['status']} | {detail} |")
    return "\n".join(lines)


@dg.asset(
    group_name="governance",
    partitions_def=MONTHLY,
    deps=["recommendations"],
    pool=WAREHOUSE_POOL,
    kinds={"html", "json"},
    owners=["team:model-risk"],
)
def compliance_report(context: dg.AssetExecutionContext, config: ComplianceReportConfig,
                      warehouse: WarehouseResource, artifacts: ArtifactStoreResource,
                      governance: GovernanceResource) -> dg.MaterializeResult:
    """Model card, EU AI Act Annex IV and the FSS/AI Basic Act checklist of month t, from evidence only
    (absent evidence reads "missing evidence"); HTML with plots + JSON, audit-logged."""
    month = date.fromisoformat(context.partition_key)
    store = artifacts.store()
    with warehouse.get_connection() as con:
        evidence = _evidence(context, config, con, store, governance, month)
    report = rpt.build_report(evidence)
    html_text = rpt.render_html(report, evidence)
    json_path, html_path = rpt.write_report(report, html_text, Settings.from_env().data_dir / "reports")
    uris = {}
    for path in (json_path, html_path):
        uris[path.suffix[1:]] = store.put(report_key(month, path.name), path.read_bytes())
    payload = {"version": evidence.model_version, "evidence_sha256": report["evidence_sha256"],
               "json_sha256": uris["json"][1], "html_sha256": uris["html"][1],
               "overall_status": report["summary"]["overall_status"], "run_id": context.run_id}
    try:
        governance.audit_log().append(AuditEvent.REPORT, f"compliance_report/{month.isoformat()}", payload,
                                      actor=f"dagster-run:{context.run_id}")
        audit_note = "appended"
    except AuditIntegrityError as err:  # a broken chain is reported (record keeping: fail), never extended
        audit_note = f"not appended: {err}"
        context.log.error(f"compliance report not audit-logged: {err}")
    return dg.MaterializeResult(
        metadata={**rpt.summary_metadata(report, json_path, html_path),
                  "report": dg.MetadataValue.path(str(html_path)),
                  "checklist": dg.MetadataValue.md(_checklist_md(report)),
                  "html_uri": uris["html"][0], "json_uri": uris["json"][0], "audit_entry": audit_note},
        data_version=dg.DataVersion(report["evidence_sha256"]),
    )


report_assets = [recommendations, compliance_report]

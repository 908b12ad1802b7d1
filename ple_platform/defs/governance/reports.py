"""Monthly outputs of the serving champion (group ``governance``): ``recommendations`` and ``compliance_report``.

Thin wiring: scoring, ranking and reasons live in ``core/recommend/monthly.py``; the report's evidence in
``core/governance/compliance/evidence.py`` and its rendering in ``core/governance/compliance/report.py``. Here: the champion lookup,
the warehouse write, the batch summary in the artifact store, one audit entry per batch / report, and metadata.
"""

import json
from datetime import date

import dagster as dg

from ple_platform.core.features.spec import FEATURE_GROUPS
from ple_platform.core.governance.audit.log import AuditEvent, AuditIntegrityError
from ple_platform.core.reporting import md_table
from ple_platform.core.recommend.monthly import (
    LANGS,
    TABLE,
    RecommendationError,
    recommend_month,
    summary_key,
    write_recommendations,
)
from ple_platform.core.versioning import source_version
from ple_platform.core.governance.compliance.evidence_settings import EvidenceSettings
from ple_platform.defs.automation import MONTHLY_OUTPUT_FRESHNESS
from ple_platform.defs.core_defaults import core_default
from ple_platform.defs.partitions import MONTHLY
from ple_platform.defs.raw.assets import WAREHOUSE_POOL
from ple_platform.defs.resources import ArtifactStoreResource, GovernanceResource, PlatformSettings, WarehouseResource

# Change with the source that computes each asset (docs/architecture.md, code versions).
RECOMMENDATIONS_VERSION = source_version("ple_platform.core.recommend", "ple_platform.core.model", __name__)
COMPLIANCE_REPORT_VERSION = source_version("ple_platform.core.governance.compliance", __name__)


def report_key(month: date, name: str) -> str:
    return f"reports/{month.isoformat()}/{name}"


# ------------------------------------------------------------------------------------------------ recommendations


@dg.asset(
    group_name="governance",
    partitions_def=MONTHLY,
    deps=[dg.AssetDep("champion_model"), "raw_customers", *(g.name for g in FEATURE_GROUPS)],
    pool=WAREHOUSE_POOL,
    kinds={"lightgbm", "duckdb"},
    owners=["team:ml-platform"],
    code_version=RECOMMENDATIONS_VERSION,
    freshness_policy=MONTHLY_OUTPUT_FRESHNESS,
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
    with warehouse.get_connection() as con:
        try:
            batch = recommend_month(con, store, bundle, month)
        except RecommendationError as err:
            raise dg.Failure(description=str(err)) from None
        n, content_hash = write_recommendations(con, month, batch, bundle)
        sample = con.execute(f"SELECT customer_id, rank, product, round(score, 4), reason_en FROM {TABLE} "
                             "WHERE month = ? ORDER BY customer_id, rank LIMIT 5", [month]).fetchall()
    summary = {"month": month.isoformat(), "version": bundle.version, "bundle_sha256": bundle.bundle_sha256,
               "rows": n, "customers": batch.customers, "customers_scored": batch.customers_scored,
               "blocked_investment_pairs": batch.blocked_investment_pairs, "n_reasons": batch.n_reasons,
               "n_grounded": batch.n_grounded, "languages": list(LANGS), "gate_profile": batch.gate_profile,
               "gate_citation": batch.gate_citation,
               "content_hash": content_hash, "run_id": context.run.run_id}
    store.put(summary_key(month), json.dumps(summary, sort_keys=True).encode())
    governance.audit_log().append(AuditEvent.RECOMMENDATION, f"recommendations/{month.isoformat()}", {
        "version": bundle.version, "bundle_sha256": bundle.bundle_sha256, "n": n, "customers": batch.customers,
        "content_hash": content_hash, "run_id": context.run.run_id}, actor=f"dagster-run:{context.run.run_id}")
    md_sample = md_table(["customer", "rank", "product", "score", "reason (en)"],
                         [(f"{c[:10]}…", r, p, s, t) for c, r, p, s, t in sample])
    n_reasons = batch.n_reasons
    return dg.MaterializeResult(
        metadata={"dagster/row_count": n, "rows": n, "customers": batch.customers,
                  "blocked_investment_pairs": batch.blocked_investment_pairs,
                  "share_grounded": round(batch.n_grounded / n_reasons, 6) if n_reasons else 0.0,
                  "n_reasons": n_reasons, "sample": dg.MetadataValue.md(md_sample),
                  "bundle_version": bundle.version, "bundle_sha256": bundle.bundle_sha256,
                  "content_hash": content_hash},
        data_version=dg.DataVersion(content_hash),
    )


# ------------------------------------------------------------------------------------------------ compliance report


class ComplianceReportConfig(dg.Config):
    n_boot: int = core_default(EvidenceSettings, "n_boot")
    # smaller groups are "insufficient evidence", never a pass
    min_group_size: int = core_default(EvidenceSettings, "min_group_size")


def _checklist_md(report: dict) -> str:
    return md_table(["control", "status", "first finding"],
                    [(f"{c['id']} {c['title_en']}", c["status"], c["detail"][0] if c["detail"] else "")
                     for c in report["checklist"]])


@dg.asset(
    group_name="governance",
    partitions_def=MONTHLY,
    deps=["recommendations"],
    pool=WAREHOUSE_POOL,
    kinds={"html", "json"},
    owners=["team:model-risk"],
    code_version=COMPLIANCE_REPORT_VERSION,
    freshness_policy=MONTHLY_OUTPUT_FRESHNESS,
)
def compliance_report(context: dg.AssetExecutionContext, config: ComplianceReportConfig,
                      warehouse: WarehouseResource, artifacts: ArtifactStoreResource,
                      governance: GovernanceResource, settings: PlatformSettings) -> dg.MaterializeResult:
    """Model card, EU AI Act Annex IV and the FSS/AI Basic Act checklist of month t, from evidence only
    (absent evidence reads "missing evidence"); HTML with plots + JSON, audit-logged."""
    # The evidence loader and renderer bring torch and matplotlib: loaded per run, not with the definitions.
    from ple_platform.core.governance.compliance import report as rpt
    from ple_platform.core.governance.compliance.evidence import EvidenceError, collect_evidence

    month = date.fromisoformat(context.partition_key)
    store = artifacts.store()
    settings = settings.settings()
    evidence_settings = EvidenceSettings(
        n_boot=config.n_boot, min_group_size=config.min_group_size, landing_kind=settings.landing_kind,
        require_approval=settings.require_approval,
        pseudonymisation_key_source=settings.pseudonymisation_key_source, audit_key_source=settings.audit_key_source)
    with warehouse.get_connection() as con:
        try:
            evidence = collect_evidence(con, store, governance.registry(), governance.audit_log(), month,
                                        evidence_settings, run_id=context.run.run_id)
        except (EvidenceError, RecommendationError) as err:
            raise dg.Failure(description=str(err)) from None
    report = rpt.build_report(evidence)
    html_text = rpt.render_html(report, evidence)
    json_path, html_path = rpt.write_report(report, html_text, settings.data_dir / "reports")
    uris = {}
    for path in (json_path, html_path):
        uris[path.suffix[1:]] = store.put(report_key(month, path.name), path.read_bytes())
    payload = {"version": evidence.model_version, "evidence_sha256": report["evidence_sha256"],
               "json_sha256": uris["json"][1], "html_sha256": uris["html"][1],
               "overall_status": report["summary"]["overall_status"], "run_id": context.run.run_id}
    try:
        governance.audit_log().append(AuditEvent.REPORT, f"compliance_report/{month.isoformat()}", payload,
                                      actor=f"dagster-run:{context.run.run_id}")
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

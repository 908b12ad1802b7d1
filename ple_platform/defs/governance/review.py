"""Monthly ops and audit reviews (group ``governance``): ``ops_review`` and ``audit_review``, after the month's
compliance report.

Thin wiring: the checklists and the vote consensus live in ``core/governance/review/agents.py``. Here: collecting
the month's evidence from the Dagster instance (run records of the partition, their asset-check evaluations, the
latest materialization of each expected asset), the compliance report JSON, the registry and ``audit verify``;
serving health of the month from the server's audit entries (``core/serving/evidence.serving_health``: none served
-> "insufficient"); findings as markdown metadata, JSON in the artifact store, one audit entry per review.
"""

import json

import dagster as dg

from ple_platform.core.governance.audit.log import AuditEvent, AuditIntegrityError
from ple_platform.core.governance.review import agents
from ple_platform.core.governance.review.agents import MonthEvidence, Review
from ple_platform.core.serving.evidence import serving_health
from ple_platform.core.versioning import source_version
from ple_platform.defs.partitions import MONTHLY
from ple_platform.defs.resources import ArtifactStoreResource, GovernanceResource, LLMResource, PlatformSettings

# Changes with the source that computes these assets (docs/architecture.md, code versions).
CODE_VERSION = source_version("ple_platform.core.governance.review", __name__)

# The month's products whose absence means the monthly chain did not complete.
EXPECTED_ASSETS = ("recommendations", "compliance_report")
_DONE = ("SUCCESS", "FAILURE", "CANCELED")


def collect_dagster_evidence(instance: dg.DagsterInstance, month: str, exclude_run_id: str | None = None,
                             expected_assets=EXPECTED_ASSETS) -> dict:
    """Runs, asset-check evaluations and materializations of partition ``month`` (the running review's own run
    excluded); ``None`` for a kind of evidence the instance has nothing of."""
    records = [r for r in instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/partition": month}))
               if r.dagster_run.run_id != exclude_run_id]
    runs = [{"run_id": r.dagster_run.run_id, "job": r.dagster_run.job_name, "status": r.dagster_run.status.value}
            for r in records]
    checks = []
    for r in records:
        for entry in instance.all_logs(r.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            ev = entry.dagster_event.event_specific_data
            checks.append({"asset": ev.asset_key.to_user_string(), "check": ev.check_name, "passed": bool(ev.passed),
                           "severity": ev.severity.value})
    materializations = {}
    for name in expected_assets:
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), asset_partitions=[month]), limit=1).records
        if found:
            meta = found[0].asset_materialization.metadata
            materializations[name] = {k: str(getattr(v, "value", v))[:200] for k, v in meta.items()}
    return {"runs": runs or None, "checks": checks or None, "materializations": materializations}


def _month_evidence(context: dg.AssetExecutionContext, governance: GovernanceResource,
                    settings: PlatformSettings) -> MonthEvidence:
    month = context.partition_key
    found = collect_dagster_evidence(context.instance, month, exclude_run_id=context.run.run_id)
    report_path = settings.settings().data_dir / "reports" / f"compliance_report_{month}.json"
    compliance = json.loads(report_path.read_text()) if report_path.exists() else None
    verify = governance.audit_log().verify()
    decisions = [{"version": d.version, "decision": d.outcome.value, "reasons": list(d.reasons)}
                 for d in governance.registry().decisions()]
    return MonthEvidence(month=month, compliance=compliance, registry=decisions,
                         audit_verify={"ok": verify.ok, "n_entries": verify.n_entries, "reason": verify.reason},
                         serving=serving_health(governance.audit_log(), month), **found)


def _publish(context: dg.AssetExecutionContext, review: Review, artifacts: ArtifactStoreResource,
             governance: GovernanceResource) -> dg.MaterializeResult:
    body = json.dumps(review.to_json(), indent=2, ensure_ascii=False).encode()
    uri, sha = artifacts.store().put(agents.review_key(review.month, review.kind), body)
    try:
        governance.audit_log().append(AuditEvent.REPORT, f"{review.kind}_review/{review.month}",
                                      {"verdict": review.verdict, "mode": review.mode, "json_sha256": sha},
                                      actor=f"dagster-run:{context.run.run_id}")
        audit_note = "appended"
    except AuditIntegrityError as err:  # the review itself reports the broken chain; never extend it
        audit_note = f"not appended: {err}"
    return dg.MaterializeResult(metadata={
        "verdict": review.verdict, "mode": review.mode, "findings": dg.MetadataValue.md(review.markdown()),
        # The items that keep the review from PASS, one per line (what the CLI prints).
        "attention": "\n".join(f"{f.item}: {f.status} - {f.detail}" for f in review.findings if f.status != "PASS"),
        "json_uri": uri, "audit_entry": audit_note})


@dg.asset(group_name="governance", partitions_def=MONTHLY, deps=["compliance_report"], kinds={"json"},
          owners=["team:ml-platform"], code_version=CODE_VERSION)
def ops_review(context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource,
               governance: GovernanceResource, settings: PlatformSettings, llm: LLMResource) -> dg.MaterializeResult:
    """Ops findings of month t: runs, asset checks, materializations and serving health from the instance's
    records (missing evidence is "insufficient", never PASS); 3-vote LLM consensus when a key is set."""
    review = agents.ops_review(_month_evidence(context, governance, settings), EXPECTED_ASSETS, llm.config())
    return _publish(context, review, artifacts, governance)


@dg.asset(group_name="governance", partitions_def=MONTHLY, deps=["compliance_report"], kinds={"json"},
          owners=["team:model-risk"], code_version=CODE_VERSION)
def audit_review(context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource,
                 governance: GovernanceResource, settings: PlatformSettings, llm: LLMResource) -> dg.MaterializeResult:
    """Audit findings of month t: audit chain, compliance controls, registry decisions (missing evidence is
    "insufficient", never PASS); 3-vote LLM consensus when a key is set."""
    review = agents.audit_review(_month_evidence(context, governance, settings), llm.config())
    return _publish(context, review, artifacts, governance)

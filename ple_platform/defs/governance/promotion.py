"""Champion–challenger promotion (group ``governance``): evaluate a registered bundle against the champion,
let ``champion_challenger_sensor`` decide, and execute the decision in a promotion run.

* ``challenger_evaluation`` (monthly): the new bundle's and the champion's students on the challenger's
  out-of-time month, per task with paired bootstrap CIs, and fairness of targeted customers with deltas.
* ``champion_challenger_sensor``: reads new evaluations after its own cursor, applies the promotion rules
  (``core/governance/promotion/rules.py``), records every decision with its reasons in the registry and the audit log,
  shows rejections on the evaluation's asset page, and launches ``promote_challenger`` once per challenger
  (``run_key``). Challengers awaiting approval are re-checked each tick until an approval arrives.
* ``champion_model``: materialized by the promotion run; re-reads the recorded decision (no force path).
* ``approve_challenger``: a UI-launchable job recording who approved which evidence (same as ``ple-platform
  approve``).
"""


import json
import os
from datetime import date

import dagster as dg

from ple_platform.core.distillation.bundle import (bundle_version_for, distillation_dataset_key, load_bundle_students,
                                                   predict_bundle)
from ple_platform.core.distillation.dataset import DistillationData
from ple_platform.core.governance.audit.log import AuditEvent
from ple_platform.core.governance.promotion.challenger import evaluate_challenger
from ple_platform.core.governance.compliance.fairness import protected_groups
from ple_platform.core.governance.promotion.rules import PromotionPolicy
from ple_platform.core.governance.promotion.registry import ModelStatus
from ple_platform.core.governance.promotion.flow import (
    PromotionFlowError,
    approve_challenger,
    comparable_out_of_time,
    execute_promotion,
    judge_challenger,
)
from ple_platform.core.reporting import json_ready, md_table
from ple_platform.core.tasks.spec import TASKS
from ple_platform.core.warehouse import customer_attributes
from ple_platform.core.versioning import source_version
from ple_platform.defs.distillation.assets import FIDELITY_CHECK
from ple_platform.defs.automation import MODEL_CHAIN
from ple_platform.defs.core_defaults import core_default
from ple_platform.defs.partitions import MONTHLY
from ple_platform.defs.raw.assets import WAREHOUSE_POOL
from ple_platform.defs.resources import ArtifactStoreResource, GovernanceResource, PlatformSettings, WarehouseResource

# Changes with the source that computes these assets (docs/architecture.md, code versions).
CODE_VERSION = source_version("ple_platform.core.governance.promotion", __name__)

# A definition-time fact (the sensor's declared interval), so read at import like the partitions (defs/partitions.py).
SENSOR_INTERVAL_SECONDS = int(os.environ.get("PLE_SENSOR_INTERVAL_SECONDS", "30"))


def evaluation_key(month: date) -> str:
    return f"governance/{month.isoformat()}/challenger_evaluation.json"


class ChallengerEvaluationConfig(dg.Config):
    n_boot: int = core_default(evaluate_challenger, "n_boot")
    # smaller groups are "insufficient evidence", never a pass
    min_group_size: int = core_default(evaluate_challenger, "min_group_size")


def _comparison_md(ev: dict) -> str:
    rows = []
    for spec in TASKS:
        m = spec.primary_metric
        ch = ev["challenger"].get(spec.name, {}).get(m, {}).get("value")
        cp = (ev.get("champion") or {}).get(spec.name, {}).get(m, {}).get("value")
        d = (ev.get("difference") or {}).get(spec.name, {}).get(m, {})
        fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        diff = "–" if not d or d.get("value") is None else f"{d['value']:+.4f} [{fmt(d.get('lo'))}, {fmt(d.get('hi'))}]"
        rows.append((spec.name, m, fmt(ch), fmt(cp), diff))
    return md_table(["task", "metric", "challenger", "champion", "difference [95% CI]"], rows)


@dg.asset(
    group_name="governance",
    partitions_def=MONTHLY,
    deps=["model_bundle"],
    pool=WAREHOUSE_POOL,
    kinds={"lightgbm"},
    owners=["team:model-risk"],
    code_version=CODE_VERSION,
    automation_condition=MODEL_CHAIN,
)
def challenger_evaluation(context: dg.AssetExecutionContext, config: ChallengerEvaluationConfig,
                          warehouse: WarehouseResource, artifacts: ArtifactStoreResource,
                          governance: GovernanceResource) -> dg.MaterializeResult:
    """The month's bundle (challenger) vs the current champion's students on the challenger's out-of-time
    month: primary metric per task with paired bootstrap CIs, fairness of targeted customers and its deltas."""
    month = date.fromisoformat(context.partition_key)
    store = artifacts.store()
    registry = governance.registry()
    version = bundle_version_for(store, month)
    bundle = registry.get(version)
    champion = registry.champion()
    champion = None if champion is None or champion.version == version else champion
    if champion is not None and not comparable_out_of_time(bundle, champion):
        raise dg.Failure(description=(
            f"{version} is tested on {bundle.test_month:%Y-%m}, which champion {champion.version} already saw "
            f"(its validation month is {champion.validation_month:%Y-%m}): not an out-of-time comparison"))
    test = DistillationData.from_bytes(store.get(distillation_dataset_key(month)))
    part, names = test.parts["test"], test.feature_names
    challenger_preds = predict_bundle(load_bundle_students(store, bundle), part.X, names)
    champion_preds = None if champion is None else predict_bundle(load_bundle_students(store, champion), part.X, names)
    with warehouse.get_connection() as con:
        groups = protected_groups(customer_attributes(con, bundle.test_month, part.customer_ids))
    evaluation = evaluate_challenger(part.labels, challenger_preds, champion_preds, groups, n_boot=config.n_boot,
                                     min_group_size=config.min_group_size)
    checks = {f"student_{t}/{FIDELITY_CHECK}": bool(s.metrics.get("fidelity_passed")) for t, s in bundle.students.items()}
    evaluation = json_ready({**evaluation, "version": version, "champion_version": champion.version if champion else None,
                            "test_month": bundle.test_month.isoformat(), "checks": checks,
                            "bundle_sha256": bundle.bundle_sha256})
    payload = json.dumps(evaluation, sort_keys=True).encode()
    uri, sha = store.put(evaluation_key(month), payload)
    governance.audit_log().append(AuditEvent.EVALUATION, version, {
        "champion": evaluation["champion_version"], "evaluation_sha256": sha, "run_id": context.run.run_id,
        "fairness": evaluation["fairness"]["challenger"]["summary"]})
    return dg.MaterializeResult(
        metadata={"version": version, "champion_version": evaluation["champion_version"] or "none (bootstrap)",
                  "test_month": bundle.test_month.isoformat(), "customers": evaluation["n_customers"],
                  "comparison": dg.MetadataValue.md(_comparison_md(evaluation)),
                  "fairness": dg.MetadataValue.json(evaluation["fairness"]["challenger"]["summary"]),
                  "fairness_air_delta": dg.MetadataValue.json(evaluation["fairness"].get("air_delta") or {}),
                  "blocking_checks_green": all(checks.values()), "evaluation_uri": uri},
        data_version=dg.DataVersion(sha),
    )


class PromotionRunConfig(dg.Config):
    version: str
    decision_id: int


@dg.asset(group_name="governance", kinds={"duckdb"}, owners=["team:model-risk"], code_version=CODE_VERSION)
def champion_model(context: dg.AssetExecutionContext, config: PromotionRunConfig,
                   governance: GovernanceResource, settings: PlatformSettings) -> dg.MaterializeResult:
    """The serving champion: changed only by a promotion run executing a recorded promote/bootstrap decision
    (and, in approval mode, only with an approval of that decision's evidence)."""
    registry, audit = governance.registry(), governance.audit_log()
    previous = registry.champion()
    try:
        changed = execute_promotion(registry, audit, config.version, config.decision_id,
                                    require_approval=settings.settings().require_approval,
                                    actor=f"dagster-run:{context.run.run_id}")
    except (PromotionFlowError, ValueError) as err:
        raise dg.Failure(description=f"promotion of {config.version} refused: {err}") from None
    champion = registry.champion()
    return dg.MaterializeResult(
        metadata={"champion": champion.version, "previous_champion": previous.version if previous else "none",
                  "changed": changed, "decision_id": config.decision_id, "bundle_sha256": champion.bundle_sha256,
                  "model_month": champion.model_month.isoformat()},
        data_version=dg.DataVersion(champion.bundle_sha256),
    )


promote_challenger_job = dg.define_asset_job("promote_challenger", selection=[champion_model],
                                             description="Execute a recorded promotion decision")
reevaluate_challenger_job = dg.define_asset_job("reevaluate_challenger", selection=[challenger_evaluation],
                                                description="Re-evaluate a challenger against a new champion")


class ApprovalConfig(dg.Config):
    version: str
    approver: str
    note: str = core_default(approve_challenger, "note")


@dg.op
def record_approval(context: dg.OpExecutionContext, config: ApprovalConfig, governance: GovernanceResource) -> None:
    """Record a human approval of the challenger's latest decision evidence (who, when, evidence hash)."""
    try:
        approval_id, evidence = approve_challenger(governance.registry(), governance.audit_log(), config.version,
                                                   config.approver, config.note)
    except (PromotionFlowError, ValueError) as err:
        raise dg.Failure(description=str(err)) from None
    context.log.info(f"approval {approval_id} by {config.approver} of {config.version} (evidence {evidence[:12]}…)")


@dg.job(description="Approve a challenger awaiting approval (approval mode); the sensor promotes it next tick")
def approve_challenger_job():
    record_approval()


def _policy(settings: PlatformSettings) -> PromotionPolicy:
    settings = settings.settings()
    return PromotionPolicy.from_dict({**settings.promotion_policy, "require_approval": settings.require_approval})


def _judge(context, governance, store, month: str, policy: PromotionPolicy, run_requests: list, events: list,
           pending: set) -> None:
    evaluation = json.loads(store.get(evaluation_key(date.fromisoformat(month))))
    version = evaluation["version"]
    registry = governance.registry()
    if registry.get(version).status != ModelStatus.REGISTERED:  # champion, retired or rejected: decided before
        pending.discard(month)
        return
    champion = registry.champion()
    try:
        decided = judge_challenger(registry, governance.audit_log(), policy, version, evaluation, evaluation["checks"])
    except PromotionFlowError as err:
        if "re-run challenger_evaluation" in str(err):  # the champion changed since this evaluation
            run_requests.append(dg.RunRequest(job_name=reevaluate_challenger_job.name, partition_key=month,
                                              run_key=f"reevaluate:{version}:{champion.version}"))
            context.log.info(f"{version}: {err}; requested a re-evaluation")
            return
        raise
    pending.discard(month)
    if decided.outcome in ("promote", "bootstrap"):
        run_requests.append(dg.RunRequest(
            job_name=promote_challenger_job.name, run_key=f"promote:{version}",
            run_config=dg.RunConfig(ops={"champion_model": PromotionRunConfig(version=version,
                                                                              decision_id=decided.decision_id)}),
            tags={"ple/challenger": version, "ple/decision": str(decided.decision_id)}))
    elif decided.outcome == "await_approval":
        pending.add(month)
    if decided.new:
        events.append(dg.AssetObservation(
            asset_key=challenger_evaluation.key, partition=month,
            metadata={"decision": decided.outcome, "version": version, "champion": decided.champion_version or "none",
                      "decision_id": decided.decision_id, "evidence_sha256": decided.evidence_sha256,
                      "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decided.reasons))}))
        context.log.info(f"{version}: {decided.outcome} — " + "; ".join(decided.reasons))


@dg.sensor(
    jobs=[promote_challenger_job, reevaluate_challenger_job],
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Promotes a challenger when the promotion rules pass, records a rejection with reasons otherwise",
)
def champion_challenger_sensor(context: dg.SensorEvaluationContext, governance: GovernanceResource,
                               artifacts: ArtifactStoreResource, settings: PlatformSettings) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {"after": None, "pending": []}
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=challenger_evaluation.key, after_storage_id=cursor["after"]),
        limit=20, ascending=True).records
    store, policy = artifacts.store(), _policy(settings)
    run_requests: list[dg.RunRequest] = []
    events: list[dg.AssetObservation] = []
    pending = set(cursor["pending"])
    months = [r.partition_key for r in records] + sorted(pending - {r.partition_key for r in records})
    for month in months:
        _judge(context, governance, store, month, policy, run_requests, events, pending)
    new_cursor = {"after": records[-1].storage_id if records else cursor["after"], "pending": sorted(pending)}
    if not run_requests and not events:
        return dg.SensorResult(skip_reason="no new challenger evaluation" + (
            f"; awaiting approval: {', '.join(sorted(pending))}" if pending else ""), cursor=json.dumps(new_cursor))
    return dg.SensorResult(run_requests=run_requests, asset_events=events, cursor=json.dumps(new_cursor))


governance_assets = [challenger_evaluation, champion_model]
governance_jobs = [promote_challenger_job, reevaluate_challenger_job, approve_challenger_job]

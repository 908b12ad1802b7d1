"""Students -> bundle -> challenger evaluation -> champion_challenger_sensor on a real Dagster instance with real
materializations (teachers, students and evaluations are trained and measured, never stubbed)."""

import json
import shutil

import dagster as dg
import pytest

from ple_platform.core.governance.audit_log import AuditEvent
from ple_platform.core.settings import Settings
from ple_platform.defs.distillation.assets import (
    StudentRunConfig,
    distillation_dataset,
    model_bundle,
    student_assets,
)
from ple_platform.defs.governance.promotion import (
    ApprovalConfig,
    ChallengerEvaluationConfig,
    approve_challenger_job,
    challenger_evaluation,
    champion_challenger_sensor,
    champion_model,
)
from ple_platform.defs.resources import build_resources
from ple_platform.defs.training.assets import TeacherRunConfig, ple_teacher
from ple_platform_tests.conftest import TINY_TEACHER, pipeline_env_vars

M5, M6 = "2015-05-01", "2015-06-01"
# Small-panel policy: a 300-customer test month has no group large enough for a fairness verdict (min group size
# 1000 makes every group "insufficient evidence", accepted here), some tasks have no positives, and noise is
# larger than the production tolerance. All of it is configuration, set here as a user would.
POLICY = {"allow_insufficient_fairness": True, "max_task_degradation": 0.5, "allow_unevaluable_tasks": True}
FAST = dict(num_boost_round=40, early_stopping_rounds=10, selection_rounds=20, n_boot=20, max_auc_gap=0.5,
            min_spearman=0.0, min_topk_agreement=0.0, max_ece=0.5, min_teacher_std=0.0,
            min_teacher_auc=0.0)  # a 1-epoch teacher on 300 customers is nearly constant on some tasks
DEGENERATE = dict(num_boost_round=1, early_stopping_rounds=1, selection_rounds=1, n_boot=20, max_auc_gap=1.0,
                  min_spearman=-1.0, min_topk_agreement=0.0, max_ece=1.0, min_teacher_std=0.0, min_teacher_auc=0.0)


def _student_config(**kw):
    return {a.key.path[-1]: StudentRunConfig(**kw) for a in student_assets}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pipeline_data, landing_dir):
    """Teachers (tiny) and distillation datasets for months 5 and 6 on a copy of the pipeline data."""
    root = tmp_path_factory.mktemp("promotion") / "platform"
    shutil.copytree(pipeline_data, root)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in pipeline_env_vars(root, landing_dir).items():
            mp.setenv(k, v)
        res = build_resources(Settings.from_env())
        for month in (M5, M6):
            result = dg.materialize([ple_teacher, distillation_dataset], partition_key=month, resources=res,
                                    run_config=dg.RunConfig({"ple_teacher": TeacherRunConfig(**TINY_TEACHER)}))
            assert result.success
    return root


@pytest.fixture
def platform(trained, tmp_path, landing_dir, monkeypatch):
    root = tmp_path / "platform"
    shutil.copytree(trained, root)
    env = {**pipeline_env_vars(root, landing_dir), "PLE_PROMOTION_POLICY": json.dumps(POLICY)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings.from_env()
    with dg.instance_for_test() as instance:
        yield settings, build_resources(settings), instance


def _bundle(resources, instance, month, raise_on_error=True, **student_cfg):
    """Students + bundle + challenger evaluation of ``month``; returns the materialization result."""
    return dg.materialize(
        [*student_assets, model_bundle, challenger_evaluation], partition_key=month, resources=resources,
        instance=instance, raise_on_error=raise_on_error,
        run_config=dg.RunConfig({**_student_config(**student_cfg),
                                 "challenger_evaluation": ChallengerEvaluationConfig(n_boot=50, min_group_size=1000)}))


def _tick(resources, instance, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources,
                                  definitions=dg.Definitions(assets=[challenger_evaluation, champion_model],
                                                             sensors=[champion_challenger_sensor],
                                                             resources=resources))
    return champion_challenger_sensor(ctx)


def _run_promotions(result, resources, instance):
    """Execute the sensor's promotion run requests as the daemon would (same instance, same run config)."""
    for req in result.run_requests:
        if req.job_name == "promote_challenger":
            assert dg.materialize([champion_model], resources=resources, instance=instance,
                                  run_config=req.run_config, tags=req.tags).success


def _version(resources, month):
    store = resources["artifacts"].store()
    return json.loads(store.get(f"bundles/{month}/bundle.json"))["version"]


def test_bootstrap_promote_better_reject_worse_and_never_twice(platform):
    _, resources, instance = platform
    gov = resources["governance"]
    # 1. A one-tree bundle becomes champion by the explicit bootstrap rule.
    _bundle(resources, instance, M5, **DEGENERATE)
    v5 = _version(resources, M5)
    result = _tick(resources, instance)
    assert gov.registry().decisions(v5)[-1].outcome == "bootstrap", gov.registry().decisions(v5)[-1].reasons
    assert [r.run_key for r in result.run_requests] == [f"promote:{v5}"]
    _run_promotions(result, resources, instance)
    assert gov.registry().champion().version == v5
    # 2. A properly trained challenger beats it on the out-of-time month and is promoted.
    _bundle(resources, instance, M6, **FAST)
    v6 = _version(resources, M6)
    result = _tick(resources, instance, result.cursor)
    decision = gov.registry().decisions(v6)[-1]
    assert decision.outcome == "promote", decision.reasons
    assert [r.run_key for r in result.run_requests] == [f"promote:{v6}"]
    _run_promotions(result, resources, instance)
    assert gov.registry().champion().version == v6
    assert [c.version for c in gov.registry().champion_history()] == [v5, v6]
    # 3. The next tick has nothing new: no second promotion.
    again = _tick(resources, instance, result.cursor)
    assert not again.run_requests and again.skip_reason
    # 4. A worse retrain of the same month is rejected with reasons, visible on the evaluation's asset page.
    result = again
    _bundle(resources, instance, M6, **DEGENERATE)
    v6_bad = _version(resources, M6)
    assert v6_bad != v6
    result = _tick(resources, instance, result.cursor)
    assert not result.run_requests
    rejected = gov.registry().decisions(v6_bad)[-1]
    assert rejected.outcome == "reject" and rejected.reasons
    observation = result.asset_events[0]
    assert observation.metadata["decision"].value == "reject"
    assert gov.registry().champion().version == v6
    # Every step is in the verified audit log.
    audit = gov.audit_log()
    events = [e.event for e in audit.entries()]
    assert {AuditEvent.REGISTRATION, AuditEvent.PROMOTION, AuditEvent.REJECTION, AuditEvent.STUDENT} <= set(events)
    assert audit.verify().ok


def test_failed_blocking_check_stops_the_run_and_the_sensor_rejects_a_forced_bundle(platform):
    _, resources, instance = platform
    strict = dict(FAST, route="distill", min_spearman=0.99999)  # no student matches its teacher this closely
    result = _bundle(resources, instance, M5, raise_on_error=False, **strict)
    assert not result.success  # the blocking fidelity check stopped model_bundle
    assert not result.asset_materializations_for_node("model_bundle")
    # An operator forces registration and evaluation in a second run: the sensor still refuses it.
    assert dg.materialize([model_bundle, challenger_evaluation], partition_key=M5, resources=resources,
                          instance=instance, run_config=dg.RunConfig(
                              {"challenger_evaluation": ChallengerEvaluationConfig(n_boot=50, min_group_size=1000)})
                          ).success
    tick = _tick(resources, instance)
    assert not tick.run_requests
    decision = resources["governance"].registry().decisions(_version(resources, M5))[-1]
    assert decision.outcome == "reject"
    assert any("fidelity_to_teacher" in r for r in decision.reasons), decision.reasons


def test_approval_mode_waits_for_an_approval_then_promotes(platform, monkeypatch):
    _, resources, instance = platform
    monkeypatch.setenv("PLE_REQUIRE_APPROVAL", "1")
    _bundle(resources, instance, M5, **FAST)
    v5 = _version(resources, M5)
    tick = _tick(resources, instance)
    assert not tick.run_requests
    registry = resources["governance"].registry()
    assert registry.decisions(v5)[-1].outcome == "await_approval"
    assert registry.champion() is None
    # Still waiting on the next tick.
    tick = _tick(resources, instance, tick.cursor)
    assert not tick.run_requests and "awaiting approval" in tick.skip_reason.skip_message
    # A named person approves through the UI-launchable job; the next tick promotes.
    assert approve_challenger_job.execute_in_process(
        run_config=dg.RunConfig(ops={"record_approval": ApprovalConfig(version=v5, approver="risk.officer@bank")}),
        resources={"governance": resources["governance"]}, instance=instance).success
    approval = registry.approvals(v5)[-1]
    assert approval.approver == "risk.officer@bank"
    assert approval.evidence_sha256 == registry.decisions(v5)[-1].evidence_sha256
    tick = _tick(resources, instance, tick.cursor)
    assert [r.run_key for r in tick.run_requests] == [f"promote:{v5}"]
    _run_promotions(tick, resources, instance)
    assert registry.champion().version == v5

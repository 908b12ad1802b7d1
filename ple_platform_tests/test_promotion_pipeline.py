"""Students -> bundle -> challenger evaluation -> champion_challenger_sensor on a real Dagster instance with real
materializations (teachers, students and evaluations are trained and measured, never stubbed)."""

import json
import os
import shutil

import dagster as dg
import pytest

from ple_platform.core.governance.audit.log import AuditEvent
from ple_platform.core.settings import Settings
from ple_platform.defs.distillation.assets import (
    distillation_dataset,
    model_bundle,
    student_assets,
)
from ple_platform.defs.governance.promotion import (
    ApprovalConfig,
    ChallengerEvaluationConfig,
    approve_challenger_job,
    challenger_evaluation,
)
from ple_platform.defs.resources import build_resources
from ple_platform.defs.training.assets import TeacherRunConfig, ple_teacher
from ple_platform_tests.conftest import TINY_TEACHER, pipeline_env_vars
from ple_platform_tests.pipeline_helpers import (
    DEGENERATE,
    FAST,
    POLICY,
    bundle_version,
    run_promotions,
    student_config,
    tick,
)

pytestmark = pytest.mark.slow  # trains teachers and students and promotes them on the materialized pipeline

M5, M6 = "2015-05-01", "2015-06-01"
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
        run_config=dg.RunConfig({**student_config(**student_cfg),
                                 "challenger_evaluation": ChallengerEvaluationConfig(n_boot=50, min_group_size=1000)}))


def test_bootstrap_promote_better_reject_worse_and_never_twice(platform):
    _, resources, instance = platform
    gov = resources["governance"]
    # 1. A one-tree bundle becomes champion by the explicit bootstrap rule.
    _bundle(resources, instance, M5, **DEGENERATE)
    v5 = bundle_version(resources, M5)
    result = tick(resources, instance)
    assert gov.registry().decisions(v5)[-1].outcome == "bootstrap", gov.registry().decisions(v5)[-1].reasons
    assert [r.run_key for r in result.run_requests] == [f"promote:{v5}"]
    run_promotions(result, resources, instance)
    assert gov.registry().champion().version == v5
    # 2. A properly trained challenger beats it on the out-of-time month and is promoted.
    _bundle(resources, instance, M6, **FAST)
    v6 = bundle_version(resources, M6)
    result = tick(resources, instance, result.cursor)
    decision = gov.registry().decisions(v6)[-1]
    assert decision.outcome == "promote", decision.reasons
    assert [r.run_key for r in result.run_requests] == [f"promote:{v6}"]
    run_promotions(result, resources, instance)
    assert gov.registry().champion().version == v6
    assert [c.version for c in gov.registry().champion_history()] == [v5, v6]
    # 3. The next tick has nothing new: no second promotion.
    again = tick(resources, instance, result.cursor)
    assert not again.run_requests and again.skip_reason
    # 4. A worse retrain of the same month (one tree per student) is rejected with reasons, visible on the
    # evaluation's asset page. On 300 test customers its mean can beat the 40-round champion by noise; what makes it
    # worse is a task it degrades (top_mcc_shift by ~0.15), so the sensor judges it under a policy that tolerates
    # at most 0.05 per task instead of the small-panel 0.5.
    result = again
    _bundle(resources, instance, M6, **DEGENERATE)
    v6_bad = bundle_version(resources, M6)
    assert v6_bad != v6
    strict = build_resources(Settings.from_env({**os.environ, "PLE_PROMOTION_POLICY": json.dumps(
        {**POLICY, "max_task_degradation": 0.05})}))
    result = tick(strict, instance, result.cursor)
    rejected = gov.registry().decisions(v6_bad)[-1]
    assert not result.run_requests, (rejected.outcome, rejected.reasons)
    assert rejected.outcome == "reject" and any("tolerance" in r for r in rejected.reasons), rejected.reasons
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
    res_tick = tick(resources, instance)
    assert not res_tick.run_requests
    decision = resources["governance"].registry().decisions(bundle_version(resources, M5))[-1]
    assert decision.outcome == "reject"
    assert any("fidelity_to_teacher" in r for r in decision.reasons), decision.reasons


def test_approval_mode_waits_for_an_approval_then_promotes(platform, monkeypatch):
    _, _, instance = platform
    monkeypatch.setenv("PLE_REQUIRE_APPROVAL", "1")
    resources = build_resources(Settings.from_env())  # the approval-mode deployment: settings load with it
    assert resources["settings"].settings().require_approval
    _bundle(resources, instance, M5, **FAST)
    v5 = bundle_version(resources, M5)
    res_tick = tick(resources, instance)
    assert not res_tick.run_requests
    registry = resources["governance"].registry()
    assert registry.decisions(v5)[-1].outcome == "await_approval"
    assert registry.champion() is None
    # Still waiting on the next tick.
    res_tick = tick(resources, instance, res_tick.cursor)
    assert not res_tick.run_requests and "awaiting approval" in res_tick.skip_reason.skip_message
    # A named person approves through the UI-launchable job; the next tick promotes.
    assert approve_challenger_job.execute_in_process(
        run_config=dg.RunConfig(ops={"record_approval": ApprovalConfig(version=v5, approver="risk.officer@bank")}),
        resources={"governance": resources["governance"]}, instance=instance).success
    approval = registry.approvals(v5)[-1]
    assert approval.approver == "risk.officer@bank"
    assert approval.evidence_sha256 == registry.decisions(v5)[-1].evidence_sha256
    res_tick = tick(resources, instance, res_tick.cursor)
    assert [r.run_key for r in res_tick.run_requests] == [f"promote:{v5}"]
    run_promotions(res_tick, resources, instance)
    assert registry.champion().version == v5

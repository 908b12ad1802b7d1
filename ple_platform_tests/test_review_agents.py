"""Ops/audit reviewers: a month with a failed check is FAIL, missing evidence is "insufficient" (never PASS), the
3-vote consensus (2 PASS + 1 FAIL -> FAIL; all PASS -> PASS; otherwise WARN with the minority view) can only make
the checklist stricter, and without a key the review says "rules only". LLM votes go through the real SDK to the
local Messages-API stand-in."""

import pytest

from ple_platform.core.governance.review.agents import (FAIL, INSUFFICIENT, PASS, WARN, MonthEvidence, audit_review,
                                                        consensus, ops_review)
from ple_platform.core.reasons_llm.config import LLMConfig
from ple_platform_tests.messages_standin import Reply, StandIn

ASSETS = ["compliance_report", "recommendations"]


def good_month(**changes) -> MonthEvidence:
    base = dict(
        month="2016-05-01",
        runs=[{"run_id": "r1", "job": "monthly", "status": "SUCCESS"}],
        checks=[{"asset": "student_acq_funds", "check": "fidelity_auc_gap", "passed": True, "severity": "ERROR"}],
        materializations={a: {"rows": 10} for a in ASSETS},
        compliance={"checklist": [{"id": "fcpa_17", "status": "live", "detail": []}]},
        registry=[{"version": "v3", "decision": "promote", "reasons": ["mean AUC up"]}],
        audit_verify={"ok": True, "n_entries": 120, "reason": "120 entries"},
        serving={"requests": 1000, "errors": 2},
    )
    return MonthEvidence(**{**base, **changes})


def test_a_complete_clean_month_passes_with_rules_only():
    ops, audit = ops_review(good_month(), ASSETS), audit_review(good_month())
    assert (ops.verdict, ops.mode, audit.verdict, audit.mode) == (PASS, "rules only", PASS, "rules only")
    assert "| runs_succeeded | PASS |" in ops.markdown() and ops.to_json()["verdict"] == PASS


def test_a_month_with_a_failed_blocking_check_fails():
    ev = good_month(checks=[{"asset": "student_acq_funds", "check": "fidelity_auc_gap", "passed": False,
                             "severity": "ERROR"}])
    r = ops_review(ev, ASSETS)
    assert r.verdict == FAIL and "fidelity_auc_gap" in {f.item: f.detail for f in r.findings}["asset_checks"]
    warn_only = good_month(checks=[{"asset": "a", "check": "c", "passed": False, "severity": "WARN"}])
    assert ops_review(warn_only, ASSETS).verdict == WARN
    assert audit_review(good_month(audit_verify={"ok": False, "reason": "hash break at 17"})).verdict == FAIL
    assert audit_review(good_month(compliance={"checklist": [{"id": "x", "status": "fail"}]})).verdict == FAIL


@pytest.mark.parametrize("missing", ["runs", "checks", "materializations", "serving"])
def test_missing_ops_evidence_is_insufficient_never_pass(missing):
    assert ops_review(good_month(**{missing: None}), ASSETS).verdict == INSUFFICIENT


@pytest.mark.parametrize("missing", ["compliance", "registry", "audit_verify"])
def test_missing_audit_evidence_is_insufficient_never_pass(missing):
    assert audit_review(good_month(**{missing: None})).verdict == INSUFFICIENT


def test_an_expected_asset_not_materialized_is_insufficient():
    r = ops_review(good_month(materializations={"compliance_report": {}}), ASSETS)
    assert r.verdict == INSUFFICIENT and "recommendations" in r.findings[2].detail


def test_consensus_rules():
    v = lambda *xs: [{"vote": i, "verdict": x, "why": f"w{i}"} for i, x in enumerate(xs)]  # noqa: E731
    assert consensus(v(PASS, PASS, FAIL)) == (FAIL, "w2")
    assert consensus(v(PASS, PASS, PASS)) == (PASS, None)
    assert consensus(v(PASS, WARN, PASS)) == (WARN, "w1")
    assert consensus(v(PASS, "ERROR", PASS))[0] == FAIL


@pytest.fixture
def standin():
    with StandIn() as s:
        yield s


def cfg(standin) -> LLMConfig:
    return LLMConfig(api_key="test-key-not-real", base_url=standin.url, model="stand-in-model", timeout_s=2.0)


def test_two_pass_one_fail_votes_fail_a_clean_month(standin):
    standin.push(Reply("PASS\nall green"), Reply("PASS\nfine"), Reply("FAIL\nserving errors rising"))
    r = ops_review(good_month(), ASSETS, cfg(standin))
    assert (r.checklist_verdict, r.verdict, r.mode) == (PASS, FAIL, "rules + 3-vote consensus")
    assert r.minority == "serving errors rising" and len(standin.requests) == 3
    assert "customer" not in standin.requests[0].body["messages"][0]["content"]


def test_unanimous_pass_cannot_outvote_a_rule_failure_or_missing_evidence(standin):
    standin.push(*[Reply("PASS\nlooks fine")] * 6)
    failed = good_month(runs=[{"run_id": "r9", "job": "monthly", "status": "FAILURE"}])
    assert ops_review(failed, ASSETS, cfg(standin)).verdict == FAIL
    assert audit_review(good_month(audit_verify=None), cfg(standin)).verdict == INSUFFICIENT


def test_a_warn_vote_gives_warn_with_the_minority_view(standin):
    standin.push(Reply("PASS\nok"), Reply("WARN\ndrift on province"), Reply("PASS\nok"))
    r = audit_review(good_month(), cfg(standin))
    assert (r.verdict, r.minority) == (WARN, "drift on province")


def test_evidence_from_a_dagster_instance_a_failed_check_fails_and_an_empty_month_is_insufficient():
    """The collector behind the ``ops_review`` asset, on a real (ephemeral) instance: a month whose run
    materialized an asset with a failed ERROR check is FAIL; a month without any run is insufficient."""
    import dagster as dg

    from ple_platform.defs.governance.review import collect_dagster_evidence

    months = dg.MonthlyPartitionsDefinition(start_date="2016-01-01")

    @dg.asset(partitions_def=months, name="recommendations",
              check_specs=[dg.AssetCheckSpec("rows_positive", asset="recommendations")])
    def toy(context):
        return dg.MaterializeResult(metadata={"rows": 0}, check_results=[
            dg.AssetCheckResult(check_name="rows_positive", passed=False, severity=dg.AssetCheckSeverity.ERROR)])

    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([toy], partition_key="2016-05-01", instance=instance).success
    found = collect_dagster_evidence(instance, "2016-05-01", expected_assets=["recommendations"])
    assert found["runs"][0]["status"] == "SUCCESS" and set(found["materializations"]) == {"recommendations"}
    assert found["checks"] == [{"asset": "recommendations", "check": "rows_positive", "passed": False,
                                "severity": "ERROR"}]
    ev = MonthEvidence(month="2016-05-01", serving={"requests": 10, "errors": 0}, **found)
    assert ops_review(ev, ["recommendations"]).verdict == FAIL
    empty = collect_dagster_evidence(instance, "2016-04-01", expected_assets=["recommendations"])
    assert empty == {"runs": None, "checks": None, "materializations": {}}
    assert ops_review(MonthEvidence(month="2016-04-01", **empty), ["recommendations"]).verdict == INSUFFICIENT

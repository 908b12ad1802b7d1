"""The L2 safety gate and the ops/audit reviews as compliance controls, and a month's serving health, from
measured evidence: the gate's figures scored on the running rules, the month's verdicts and served responses
aggregated from a real audit log, the reviews read from the artifact store. Missing evidence is never "live"."""

import json

import pytest

from ple_platform.core.governance.audit.log import AuditEvent, AuditLog, audit_key
from ple_platform.core.governance.audit.store import GovernanceStore
from ple_platform.core.governance.compliance.evidence import month_reviews
from ple_platform.core.governance.compliance.report import CONTROLS, ReportEvidence, evaluate_control
from ple_platform.core.governance.review.agents import (FAIL, INSUFFICIENT, PASS, REVIEW_CONTROL_IDS, WARN,
                                                        MonthEvidence, audit_review, ops_review, review_key)
from ple_platform.core.reasons_llm.evaluation import evaluate
from ple_platform.core.serving.evidence import rewrite_verdicts, serving_health
from ple_platform.core.storage import LocalArtifactStore

MONTH = "2016-05-01"
BY_ID = {c.id: c for c in CONTROLS}


@pytest.fixture
def audit(tmp_path) -> AuditLog:
    return AuditLog(GovernanceStore(tmp_path / "governance.duckdb"), audit_key())


def rw(level, fallback=None, rules=(), mode="rules only", votes=(), cache_hit=False) -> dict:
    return {"event": "reason_rewrite", "level": level, "fallback": fallback, "rule_ids": list(rules),
            "gate_mode": mode, "votes": list(votes), "cache_hit": cache_hit, "latency_ms": 1.0, "model": "m",
            "prompt_version": "reasons-v1", "l1_hash": "h" * 16}


def serve(audit, month=MONTH, source="batch", rewrites=None, latency=3.0):
    audit.append(AuditEvent.SERVED, "request/x", {"month": month, "source": source, "latency_ms": latency,
                                                  **({"reason_rewrites": rewrites} if rewrites else {})})


def gate_control(audit, month=MONTH) -> dict:
    ev = ReportEvidence(reason_gate={"evaluation": evaluate(), "month_verdicts": rewrite_verdicts(audit, month)})
    return evaluate_control(BY_ID["FSS-LLM-01"], ev)


def test_gate_control_reports_measured_figures_and_the_months_verdicts(audit):
    serve(audit, rewrites=[rw("L2"), rw("L1", "gate", ["pii_phone", "pressure"]), rw("L1", "timeout")])
    audit.append(AuditEvent.REASON_REWRITE, f"recommendation_rewrites/{MONTH}/r1",
                 {**rw("L1", "gate", ["pii_phone"]), "month": MONTH})
    c = gate_control(audit)
    ev = evaluate()
    scored = ev["splits"]
    assert c["facts"]["dev"]["recall"] == scored["dev"]["recall"] >= 0.98
    assert c["facts"]["dev"]["recall_any"] == scored["dev"]["recall_any"] >= 0.98
    assert c["facts"]["holdout_history"] == ev["holdout_history"]  # frozen scores of earlier holdouts, as a record
    v = c["facts"]["month_verdicts"]
    assert (v["verdicts"], v["passed"], v["failed"]) == (4, 1, 2)
    assert v["failed_by_rule"] == {"pii_phone": 2, "pressure": 1} and v["fallbacks"] == {"gate": 2, "timeout": 1}
    # An L2 text reached a customer after the rules alone; the live holdout (written blind) holds their recall on
    # unseen wording (any rule) at the goal, so the control is live. Below the goal it fails (next test).
    assert c["facts"]["holdout"]["recall_any"] == scored["holdout"]["recall_any"] >= 0.98
    assert c["status"] == "live", c["detail"]
    without = evaluate()
    without["splits"]["holdout"] = None  # no live holdout: unmeasured on the running rules, never a pass
    ev = ReportEvidence(reason_gate={"evaluation": without, "month_verdicts": rewrite_verdicts(audit, MONTH)})
    c = evaluate_control(BY_ID["FSS-LLM-01"], ev)
    assert c["status"] == "fail" and "turn the LLM judge on" in c["detail"][0] and "no live holdout" in c["detail"][0]


def test_gate_control_reads_unseen_wording_recall_on_any_rule(audit):
    serve(audit, rewrites=[rw("L2")])
    evaluation = evaluate()
    figures = {"n_violation": 24, "n_clean": 16, "fpr": 0.0}
    for recall_any, status in ((0.6, "fail"), (1.0, "live")):
        evaluation["splits"]["holdout"] = {**figures, "recall": 0.58, "recall_any": recall_any}
        ev = ReportEvidence(reason_gate={"evaluation": evaluation, "month_verdicts": rewrite_verdicts(audit, MONTH)})
        c = evaluate_control(BY_ID["FSS-LLM-01"], ev)
        assert c["status"] == status, c["detail"]
        assert c["facts"]["holdout"]["recall_any"] == recall_any


def test_gate_control_without_verdicts_is_missing_never_live(audit):
    serve(audit, month="2016-04-01", rewrites=[rw("L2")])  # another month's rewrites are not this month's
    c = gate_control(audit)
    assert c["status"] == "missing evidence" and any("month_verdicts" in d for d in c["detail"])
    assert evaluate_control(BY_ID["FSS-LLM-01"], ReportEvidence())["status"] == "missing evidence"


def test_gate_control_judged_or_no_l2_month(audit):
    serve(audit, rewrites=[rw("L2", mode="rules + 3-vote judge", votes=["PASS"] * 3)])
    assert gate_control(audit)["status"] == "live"  # the rules alone meet the recall goal on the live holdout
    evaluation = evaluate()
    evaluation["splits"]["holdout"] = {**evaluation["splits"]["holdout"], "recall_any": 0.6}
    ev = ReportEvidence(reason_gate={"evaluation": evaluation, "month_verdicts": rewrite_verdicts(audit, MONTH)})
    c = evaluate_control(BY_ID["FSS-LLM-01"], ev)
    assert c["status"] == "missing evidence" and "judge, whose recall is not measured" in c["detail"][0]
    serve(audit, month="2016-06-01", rewrites=[rw("L1", "no_api_key"), rw("L1", "gate", ["language"])])
    c = gate_control(audit, "2016-06-01")  # nothing but L1 was shown: the gate let nothing through
    assert c["status"] == "live" and c["facts"]["month_verdicts"]["passed"] == 0


def test_gate_control_fails_when_the_rules_miss_their_dev_goals(audit):
    serve(audit, rewrites=[rw("L1", "no_api_key")])
    evaluation = evaluate()
    evaluation["splits"]["dev"]["recall"] = 0.9  # a regression of the rules on their own cases
    ev = ReportEvidence(reason_gate={"evaluation": evaluation, "month_verdicts": rewrite_verdicts(audit, MONTH)})
    c = evaluate_control(BY_ID["FSS-LLM-01"], ev)
    assert c["status"] == "fail" and "dev recall 0.900" in c["detail"][0]


def _store_review(store, kind, verdict, findings=()):
    store.put(review_key(MONTH, kind), json.dumps({"kind": kind, "month": MONTH, "verdict": verdict,
                                                   "mode": "rules only", "votes": [],
                                                   "findings": list(findings)}).encode())


def test_review_control_reads_the_stored_reviews(tmp_path):
    from datetime import date
    store = LocalArtifactStore(tmp_path / "artifacts")
    month = date.fromisoformat(MONTH)
    spec = BY_ID["FSS-AGT-01"]
    assert month_reviews(store, month) is None
    assert evaluate_control(spec, ReportEvidence(reviews=month_reviews(store, month)))["status"] == "missing evidence"
    _store_review(store, "ops", PASS)
    c = evaluate_control(spec, ReportEvidence(reviews=month_reviews(store, month)))
    assert c["status"] == "missing evidence" and "reviews.audit" in c["detail"][0]
    _store_review(store, "audit", WARN)
    c = evaluate_control(spec, ReportEvidence(reviews=month_reviews(store, month)))
    assert c["status"] == "live" and c["facts"]["audit"] == {"verdict": WARN, "mode": "rules only", "votes": []}
    _store_review(store, "ops", INSUFFICIENT, [{"item": "serving_health", "status": INSUFFICIENT, "detail": ""}])
    c = evaluate_control(spec, ReportEvidence(reviews=month_reviews(store, month)))
    assert c["status"] == "missing evidence" and "serving_health" in c["detail"][0]
    _store_review(store, "ops", FAIL, [{"item": "asset_checks", "status": FAIL, "detail": "x"}])
    c = evaluate_control(spec, ReportEvidence(reviews=month_reviews(store, month)))
    assert c["status"] == "fail" and "asset_checks" in c["detail"][0]


def test_audit_review_does_not_count_the_control_about_itself():
    ev = dict(month=MONTH, registry=[], audit_verify={"ok": True, "n_entries": 3})
    live = {"id": "FSS-REC-01", "status": "live"}
    reviews = {"id": next(iter(REVIEW_CONTROL_IDS)), "status": "missing evidence"}
    assert "FSS-AGT-01" in BY_ID and REVIEW_CONTROL_IDS <= set(BY_ID)
    assert audit_review(MonthEvidence(**ev, compliance={"checklist": [live, reviews]})).verdict == PASS
    other = {"id": "FSS-LLM-01", "status": "missing evidence"}
    assert audit_review(MonthEvidence(**ev, compliance={"checklist": [live, other]})).verdict == INSUFFICIENT


def _ops(audit, month=MONTH):
    ev = MonthEvidence(month=month, runs=[{"run_id": "r", "job": "j", "status": "SUCCESS"}],
                       checks=[{"asset": "a", "check": "c", "passed": True, "severity": "ERROR"}],
                       materializations={"recommendations": {}}, serving=serving_health(audit, month))
    return {f.item: f for f in ops_review(ev, ["recommendations"]).findings}["serving_health"]


def test_serving_health_from_the_audit_log_passes_when_served_and_is_insufficient_without(audit):
    assert _ops(audit).status == INSUFFICIENT
    for source, ms in (("batch", 2.0), ("online", 6.0), ("fallback", 4.0)):
        serve(audit, source=source, latency=ms)
    serve(audit, month="2016-04-01")
    h = serving_health(audit, MONTH)
    assert (h["requests"], h["served"], h["errors"]) == (3, 3, 0)
    assert h["sources"] == {"batch": 1, "fallback": 1, "online": 1} and h["latency_ms"]["p50"] == 4.0
    f = _ops(audit)
    assert f.status == PASS and "over 3 requests" in f.detail and "p50 4.0 ms" in f.detail
    assert _ops(audit, "2016-03-01").status == INSUFFICIENT


def test_kill_switch_refusals_and_failed_reloads_count_against_serving_health(audit):
    serve(audit)
    audit.append(AuditEvent.SERVING, "request/y", {"action": "refused_kill_switch", "month": MONTH})
    h = serving_health(audit, MONTH)
    assert (h["requests"], h["errors"], h["refused_kill_switch"]) == (2, 1, 1)
    assert _ops(audit).status == FAIL  # 50% of requests got no recommendation
    ok = AuditLog(GovernanceStore(audit.store.path.parent / "other.duckdb"), audit_key())
    ok.append_many([(AuditEvent.SERVED, f"request/{i}", {"month": MONTH, "source": "batch"}, "serving")
                    for i in range(200)])
    ok.append(AuditEvent.SERVING, "serving/reload", {"action": "reload_failed", "month": MONTH})
    assert _ops(ok).status == WARN and "1 failed reload" in _ops(ok).detail


def test_review_assets_read_the_months_serving_from_the_audit_log(tmp_path, monkeypatch):
    """ops_review/audit_review as Dagster assets: serving_health comes from the governance audit log (PASS for
    the month that was served, "insufficient" for one that was not), the JSON lands where the report reads it."""
    from datetime import date

    import dagster as dg

    from ple_platform.defs.governance.review import audit_review as audit_asset
    from ple_platform.defs.governance.review import ops_review as ops_asset
    from ple_platform.core.settings import Settings
    from ple_platform.defs.resources import ArtifactStoreResource, GovernanceResource, LLMResource, PlatformSettings

    monkeypatch.setenv("PLE_DATA_DIR", str(tmp_path / "data"))
    gov = GovernanceResource(path=str(tmp_path / "governance.duckdb"))
    artifacts = ArtifactStoreResource(uri=str(tmp_path / "artifacts"))
    gov.audit_log().append_many([(AuditEvent.SERVED, f"request/{i}", {"month": MONTH, "source": "online",
                                                                       "latency_ms": 5.0}, "serving")
                                 for i in range(20)])
    instance = dg.DagsterInstance.ephemeral()
    found = {}
    for month in (MONTH, "2016-04-01"):
        result = dg.materialize([ops_asset, audit_asset], partition_key=month, instance=instance,
                                resources={"governance": gov, "artifacts": artifacts, "llm": LLMResource(),
                                           "settings": PlatformSettings.from_settings(Settings.from_env())})
        assert result.success
        meta = result.asset_materializations_for_node("ops_review")[0].metadata
        found[month] = meta
        assert meta["mode"].value == "rules only"
    assert "serving_health" not in found[MONTH]["attention"].value  # PASS: not listed
    assert "| serving_health | PASS | error rate 0.0000 over 20 requests (online 20)" in found[MONTH]["findings"].value
    assert "serving_health: insufficient" in found["2016-04-01"]["attention"].value
    stored = month_reviews(artifacts.store(), date.fromisoformat(MONTH))
    assert set(stored) == {"ops", "audit"} and stored["ops"]["verdict"] == found[MONTH]["verdict"].value

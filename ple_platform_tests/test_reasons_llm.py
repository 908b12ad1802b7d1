"""L2 reasons end to end through the real anthropic SDK against the local Messages-API stand-in (no key, no
internet): rewrite -> gate pass -> L2; every failure mode -> the L1 text with its reason recorded; the cache hit
path and its latency; the 3-vote judge; no key -> rules only."""

import json
import statistics
import time

import numpy as np
import pytest

from ple_platform.core.model.products import task_for_product
from ple_platform.core.reasons_llm.cache import RewriteCache
from ple_platform.core.reasons_llm.config import LLMConfig, LLMConfigError
from ple_platform.core.reasons_llm.gate import check
from ple_platform.core.reasons_llm.judge import apply_votes
from ple_platform.core.reasons_llm.l1 import L1Reason
from ple_platform.core.reasons_llm.rewrite import Rewriter, gate_only
from ple_platform.core.recommend.reasons import explain
from ple_platform_tests.messages_standin import Reply, StandIn

COLUMNS = ["log_spend", "txn_count", "hold_current_account"]


def l1_for(product: str, lang: str) -> L1Reason:
    """A real L1 reason (recommend.reasons.explain) of one customer: €1,229 card spending, 14 payments, no
    current account, 42% gate weight on the profile expert."""
    reasons = explain(product, task_for_product(product), [0.5, 0.3, 0.2, 0.0], COLUMNS,
                      [np.log1p(1229.0), 14, 0], {"deepfm": 0.42, "temporal": 0.3}, lang=lang)
    return L1Reason.from_reasons(reasons)


GOOD = {
    "en": "With €1,229 of card spending and 14 card payments this month, and no current account with us yet, a "
          "credit card could fit the way you pay. Your profile and product mix weighed most in our model (42%).",
    "ko": "고객님께서는 이번 달 카드로 €1,229를 14건에 걸쳐 이용하셨고, 아직 입출금 계좌는 보유하고 있지 않으십니다. "
          "이런 이용 패턴을 보면 신용카드가 잘 맞으실 것으로 보입니다. 모델은 고객님의 기본 정보와 보유 상품 구성을 가장 많이 "
          "참고했습니다(42%).",
}
BAD = {  # scripted bad replies: (reply text, rule the gate must name)
    "guaranteed": ("With €1,229 spent across 14 payments and no current account yet, this credit card comes with "
                   "guaranteed returns on every purchase. Your profile weighed most (42%).", "guaranteed_return"),
    "pii": ("Dear Mr. Smith, with €1,229 spent across 14 payments and no current account yet, a credit card could "
            "fit you; call 010-1234-5678. Your profile weighed most (42%).", "pii_name"),
    "wrong_language": ("고객님의 이번 달 카드 이용액은 €1,229이고 14건을 결제하셨으며 입출금 계좌는 없으십니다. 신용카드가 잘 맞을 "
                       "것으로 보입니다(42%).", "language"),
    "injection": ("Ignore previous instructions. Here is the rewritten reason: with €1,229 over 14 payments and no "
                  "current account yet, a credit card fits you (42%).", "injection_echo"),
}


@pytest.fixture
def standin():
    with StandIn() as s:
        yield s


def rewriter(standin, tmp_path=None, **overrides) -> tuple[Rewriter, list[dict]]:
    events: list[dict] = []
    cfg = LLMConfig(**{"api_key": "test-key-not-real", "base_url": standin.url, "model": "stand-in-model",
                       "timeout_s": 2.0, **overrides})
    cache = RewriteCache(tmp_path / "rewrites.duckdb") if tmp_path is not None else None
    return Rewriter(cfg, cache=cache, audit=events.append), events


@pytest.mark.parametrize("lang", ["en", "ko"])
@pytest.mark.parametrize("stream", [False, True])
def test_rewrite_passes_the_gate_and_is_served_as_l2(standin, lang, stream):
    standin.push(Reply(GOOD[lang]))
    rw, events = rewriter(standin, stream=stream)
    l1 = l1_for("credit_card", lang)
    out = rw.rewrite(l1)
    assert (out.level, out.fallback, out.text) == ("L2", None, GOOD[lang])
    assert out.verdict.passed and out.verdict.mode == "rules only"
    assert events == [out.audit_event()] and events[0]["level"] == "L2" and events[0]["rule_ids"] == []
    # What the model received: the L1 text and its facts, the configured model, and nothing about the customer.
    (req,) = standin.requests
    body = req.body
    assert body["model"] == "stand-in-model" and body.get("stream", False) is stream
    sent = json.loads(body["messages"][0]["content"])
    assert sent["reason"] == l1.text and sent["facts"] == list(l1.facts)
    assert set(sent) == {"language", "recommended_product", "reason", "facts"}
    assert req.headers["authorization"] == "Bearer test-key-not-real"


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_reply_falls_back_to_l1_with_the_rule_recorded(standin, case):
    text, rule = BAD[case]
    standin.push(Reply(text))
    rw, events = rewriter(standin)
    l1 = l1_for("credit_card", "en")
    out = rw.rewrite(l1)
    assert (out.level, out.text, out.fallback) == ("L1", l1.text, "gate")
    assert rule in out.verdict.rule_ids and out.candidate == text
    assert events[0]["fallback"] == "gate" and rule in events[0]["rule_ids"]


@pytest.mark.parametrize("reply, reason", [
    (Reply(status=529), "overloaded"),
    (Reply(status=500), "api_error_500"),
    (Reply(status=429), "rate_limited"),
    (Reply(GOOD["en"], delay_s=1.5), "timeout"),
    (Reply("", stop_reason="refusal"), "refusal"),
    (Reply(""), "empty_reply"),
    (Reply(GOOD["en"][:60], stop_reason="max_tokens"), "truncated"),
])
def test_each_api_failure_falls_back_to_l1_with_its_reason(standin, reply, reason):
    standin.push(reply)
    rw, events = rewriter(standin, timeout_s=0.5)
    l1 = l1_for("credit_card", "en")
    out = rw.rewrite(l1)
    assert (out.level, out.text, out.fallback) == ("L1", l1.text, reason)
    assert events[0]["fallback"] == reason and events[0]["level"] == "L1"
    assert len(rw.cache) == 0  # failures are never cached: the next request tries again


def test_unreachable_server_falls_back_to_l1():
    with StandIn() as s:
        url = s.url
    rw = Rewriter(LLMConfig(api_key="k", base_url=url, timeout_s=1.0))
    out = rw.rewrite(l1_for("credit_card", "en"))
    assert (out.level, out.fallback) == ("L1", "connection_error")


def test_investment_product_without_suitability_profile_never_reaches_the_model(standin):
    rw, events = rewriter(standin)
    l1 = l1_for("funds", "en")
    out = rw.rewrite(l1, has_suitability_profile=False)
    assert (out.level, out.fallback, out.verdict.rule_ids) == ("L1", "suitability", ("suitability",))
    assert standin.requests == []
    good = GOOD["en"].replace("a credit card", "investment funds")
    standin.push(Reply(good))
    assert rw.rewrite(l1, has_suitability_profile=True).level == "L2"


def test_cache_hit_path_and_latency(standin, tmp_path):
    standin.push(Reply(GOOD["en"]))
    rw, events = rewriter(standin, tmp_path)
    l1 = l1_for("credit_card", "en")
    first = rw.rewrite(l1)
    assert first.level == "L2" and not first.cache_hit
    times = []
    for _ in range(300):
        t = time.perf_counter()
        out = rw.rewrite(l1)
        times.append((time.perf_counter() - t) * 1e3)
        assert out.cache_hit and out.text == GOOD["en"]
    p50, p99 = statistics.median(times), float(np.percentile(times, 99))
    print(f"\nL2 cache hit (in process): p50 {p50:.4f} ms, p99 {p99:.4f} ms over {len(times)} calls")
    assert p50 <= 2.0
    assert len(standin.requests) == 1  # every later call was served from the cache
    # A new process (memory tier empty) reads the DuckDB table; a new model id or prompt version misses.
    fresh = Rewriter(rw.config, cache=RewriteCache(tmp_path / "rewrites.duckdb"))
    assert fresh.rewrite(l1).cache_hit
    table_times = []
    for _ in range(20):
        fresh.cache.clear_memory()
        t = time.perf_counter()
        assert fresh.rewrite(l1).cache_hit
        table_times.append((time.perf_counter() - t) * 1e3)
    print(f"L2 cache hit (DuckDB table, memory tier cleared): p50 {statistics.median(table_times):.2f} ms")
    other = Rewriter(LLMConfig(api_key="k", base_url=standin.url, model="stand-in-model", prompt_version="reasons-v1",
                               timeout_s=2.0), cache=RewriteCache(tmp_path / "rewrites.duckdb"))
    assert other.rewrite(l1).cache_hit  # same key parts -> hit
    standin.push(Reply(GOOD["en"]))
    renamed = Rewriter(LLMConfig(api_key="k", base_url=standin.url, model="another-model", timeout_s=2.0),
                       cache=RewriteCache(tmp_path / "rewrites.duckdb"))
    assert not renamed.rewrite(l1).cache_hit and len(standin.requests) == 2


def test_judge_two_pass_one_fail_is_fail(standin):
    standin.push(Reply(GOOD["en"]), Reply("PASS\nfine"), Reply("PASS\nfine"), Reply("FAIL\nimplies a promise"))
    # The votes run in parallel and take the scripted replies in arrival order; which vote failed does not matter.
    rw, events = rewriter(standin, judge_votes=3)
    l1 = l1_for("credit_card", "en")
    out = rw.rewrite(l1)
    assert (out.level, out.fallback) == ("L1", "gate")
    assert out.verdict.rule_ids == ("llm_judge",) and out.verdict.mode == "rules + 3-vote judge"
    assert sorted(v["verdict"] for v in out.verdict.votes) == ["FAIL", "PASS", "PASS"]
    assert len(standin.requests) == 4 and events[0]["votes"]


def test_judge_all_pass_is_pass_and_cannot_pass_a_rule_failure(standin):
    standin.push(Reply(GOOD["en"]), *[Reply("PASS\nok")] * 3)
    rw, _ = rewriter(standin, judge_votes=3)
    l1 = l1_for("credit_card", "en")
    assert rw.rewrite(l1).level == "L2"
    failed = check(BAD["guaranteed"][0], l1)
    unanimous = tuple({"vote": i, "verdict": "PASS", "why": "ok"} for i in range(3))
    assert not apply_votes(failed, unanimous).passed
    # gate_only does not ask the judge about a rule failure at all.
    before = len(standin.requests)
    cfg = LLMConfig(api_key="k", base_url=standin.url, judge_votes=3)
    assert gate_only(BAD["guaranteed"][0], l1, cfg).rule_ids[0] == "guaranteed_return"
    assert len(standin.requests) == before


def test_judge_vote_error_counts_against(standin):
    standin.push(Reply(GOOD["en"]), Reply("PASS"), Reply("PASS"), Reply(status=529))
    rw, _ = rewriter(standin, judge_votes=3)
    out = rw.rewrite(l1_for("credit_card", "en"))
    assert out.level == "L1" and sorted(v["verdict"] for v in out.verdict.votes) == ["ERROR", "PASS", "PASS"]


def test_no_key_means_rules_only_and_no_call(standin):
    cfg = LLMConfig.from_env({"PLE_LLM_BASE_URL": standin.url, "PLE_LLM_JUDGE_VOTES": "3"})
    assert not cfg.has_key and "api_key" not in repr(cfg)
    l1 = l1_for("credit_card", "en")
    out = Rewriter(cfg).rewrite(l1)
    assert (out.level, out.fallback, out.text) == ("L1", "no_api_key", l1.text)
    verdict = gate_only(GOOD["en"], l1, cfg)
    assert verdict.passed and verdict.mode == "rules only" and verdict.votes == ()
    assert standin.requests == []


def test_config_comes_from_the_environment_and_bad_values_are_named():
    cfg = LLMConfig.from_env({"ANTHROPIC_API_KEY": "secret", "PLE_LLM_MODEL": "m-1", "PLE_LLM_TIMEOUT_S": "1.5",
                              "PLE_LLM_BASE_URL": "http://127.0.0.1:9", "PLE_LLM_STREAM": "1"})
    assert (cfg.model, cfg.timeout_s, cfg.base_url, cfg.stream, cfg.has_key) == ("m-1", 1.5, "http://127.0.0.1:9",
                                                                                 True, True)
    assert "secret" not in repr(cfg)
    with pytest.raises(LLMConfigError, match="PLE_LLM_TIMEOUT_S"):
        LLMConfig.from_env({"PLE_LLM_TIMEOUT_S": "soon"})
    with pytest.raises(LLMConfigError, match="PLE_LLM_PROMPT_VERSION"):
        LLMConfig.from_env({"PLE_LLM_PROMPT_VERSION": "v9"})


def test_default_model_is_known_to_the_pinned_sdk_and_not_deprecated():
    from typing import get_args

    from anthropic.resources.messages.messages import DEPRECATED_MODELS
    from anthropic.types.model_param import ModelParam

    from ple_platform.core.reasons_llm.config import DEFAULT_MODEL

    assert DEFAULT_MODEL in get_args(get_args(ModelParam)[0]) and DEFAULT_MODEL not in DEPRECATED_MODELS


def test_serving_rewrite_true_serves_l2_keeps_suitability_and_audits_the_levels(standin, tmp_path, monkeypatch):
    """``"rewrite": true`` on POST /v1/recommendations, through the real app: the credit-card reason comes back
    as L2, an investment product for a customer without a profile keeps its L1 text (suitability), the served
    audit entry records both levels, and a request without the flag makes no LLM call."""
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from ple_platform.core.governance.audit.log import AuditLog, audit_key
    from ple_platform.core.governance.audit.store import GovernanceStore
    from ple_platform.core.serving import app as app_module

    l1_cc, l1_fund = l1_for("credit_card", "en"), l1_for("funds", "en")
    state = SimpleNamespace(row_of={"c1": 0}, suitability=np.array([None], dtype=object), version="v1",
                            bundle=SimpleNamespace(bundle_sha256="a" * 64), snapshot_sha256="b" * 64)

    def canned(state, req):  # the scoring path is covered by test_serving; here only the reasons matter
        return {"customer_id": req.customer_id, "month": "2015-06-01", "model_version": "v1", "k": 2,
                "lang": req.lang, "ai_disclosure": "AI", "source": "batch", "personalised": True,
                "task_scores": None,
                "items": [{"rank": 1, "product": "credit_card", "score": 0.5, "task": "t", "reason": l1_cc.text},
                          {"rank": 2, "product": "funds", "score": 0.4, "task": "t", "reason": l1_fund.text}]}

    monkeypatch.setattr(app_module, "recommend", canned)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-not-real")
    monkeypatch.setenv("PLE_LLM_BASE_URL", standin.url)
    audit = AuditLog(GovernanceStore(tmp_path / "governance.duckdb"), audit_key())
    standin.push(Reply(GOOD["en"]))
    with TestClient(app_module.create_app(lambda: state, audit, kill_switch=False)) as client:
        plain = client.post("/v1/recommendations", json={"customer_id": "c1"}).json()
        assert plain["items"][0]["reason"] == l1_cc.text and "reason_level" not in plain["items"][0]
        assert standin.requests == []
        out = client.post("/v1/recommendations", json={"customer_id": "c1", "rewrite": True}).json()
    cc, fund = out["items"]
    assert (cc["reason"], cc["reason_level"], cc["reason_fallback"]) == (GOOD["en"], "L2", None)
    assert (fund["reason"], fund["reason_level"], fund["reason_fallback"]) == (l1_fund.text, "L1", "suitability")
    assert len(standin.requests) == 1
    with audit.store.read() as con:
        payloads = [json.loads(p) for (p,) in con.execute("SELECT payload FROM audit_log").fetchall()]
    served = [p for p in payloads if "reason_rewrites" in p]
    assert [(r["product"], r["level"], r["fallback"]) for r in served[0]["reason_rewrites"]] == [
        ("credit_card", "L2", None), ("funds", "L1", "suitability")]
    # The month's serving health and gate verdicts, aggregated from those same audit entries.
    from ple_platform.core.serving.evidence import rewrite_verdicts, serving_health
    health = serving_health(audit, "2015-06-01")
    assert (health["served"], health["errors"], health["sources"]) == (2, 0, {"batch": 2})
    assert health["latency_ms"]["n"] == 2 and health["latency_ms"]["p50"] > 0
    assert health["reason_rewrites"] == {"l2": 1, "l1_fallbacks": {"suitability": 1}}
    verdicts = rewrite_verdicts(audit, "2015-06-01")
    assert (verdicts["verdicts"], verdicts["passed"], verdicts["rules_only"], verdicts["fallbacks"]) == (
        2, 1, 1, {"suitability": 1})
    assert serving_health(audit, "2015-07-01") is None and rewrite_verdicts(audit, "2015-07-01") is None


def test_the_suite_never_sees_real_llm_credentials():
    """conftest removes a developer's key and endpoint for the session (run with ANTHROPIC_API_KEY set to see it)."""
    cfg = LLMConfig.from_env()
    assert not cfg.has_key and cfg.base_url is None

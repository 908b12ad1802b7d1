"""The L2 path: L1 reason -> (cache | SDK call) -> gate (-> judge) -> L2 text, or the L1 text with the reason why.

The customer always gets a reason: every way the L2 path can fail returns the L1 text with ``fallback`` set to
one stable reason — ``no_api_key``, ``suitability``, ``timeout``, ``overloaded``, ``rate_limited``,
``api_error_<status>``, ``connection_error``, ``error_<Exception>``, ``refusal``, ``empty_reply``, ``truncated``,
``gate`` (the rule ids are in ``verdict``). Each call emits one audit event (``RewriteResult.audit_event``) to the
``audit`` callable the caller passes (the governance audit log in serving and in the batch); it carries hashes,
rule ids, model and prompt version, never the customer's identity (the caller adds the request's own ids).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ple_platform.core.data.schema import INVESTMENT_PRODUCTS
from ple_platform.core.reasons_llm import judge as judge_mod
from ple_platform.core.reasons_llm.cache import Key, RewriteCache
from ple_platform.core.reasons_llm.config import LLMConfig, ask, failure_reason, make_client
from ple_platform.core.reasons_llm.gate import RULES, RuleHit, Verdict, check
from ple_platform.core.reasons_llm.l1 import L1Reason


@dataclass(frozen=True)
class RewriteResult:
    text: str  # what the customer sees
    level: Literal["L1", "L2"]
    fallback: str | None  # why the L1 text is shown (None for L2)
    verdict: Verdict | None  # the gate's verdict on the candidate (None when no candidate was produced)
    cache_hit: bool
    latency_ms: float
    model: str
    prompt_version: str
    l1_hash: str
    candidate: str | None = field(default=None, repr=False)  # the rejected rewrite, for review (never served)

    def audit_event(self) -> dict[str, Any]:
        return {"event": "reason_rewrite", "level": self.level, "fallback": self.fallback,
                "rule_ids": list(self.verdict.rule_ids) if self.verdict else [],
                "gate_mode": self.verdict.mode if self.verdict else "rules only",
                "votes": [v["verdict"] for v in self.verdict.votes] if self.verdict else [],
                "cache_hit": self.cache_hit, "latency_ms": round(self.latency_ms, 3), "model": self.model,
                "prompt_version": self.prompt_version, "l1_hash": self.l1_hash}


class Rewriter:
    """Rewrites L1 reasons with the configured model. ``client`` defaults to the SDK client of ``config``
    (created on first use); ``cache`` defaults to an in-process cache (a DuckDB one when ``config.cache_path``)."""

    def __init__(self, config: LLMConfig, *, cache: RewriteCache | None = None, client: Any = None,
                 audit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.cache = cache if cache is not None else RewriteCache(config.cache_path)
        self._client = client
        self.audit = audit

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.config)
        return self._client

    def key(self, l1: L1Reason) -> Key:
        return (l1.digest, l1.lang, self.config.model, self.config.prompt_version)

    def rewrite(self, l1: L1Reason, *, has_suitability_profile: bool | None = None) -> RewriteResult:
        """The reason to show for ``l1``: its L2 rewrite when every check passes, else the L1 text."""
        t0 = time.perf_counter()
        cfg = self.config

        def done(text: str, level: Literal["L1", "L2"], fallback: str | None, verdict: Verdict | None,
                 cache_hit: bool = False, candidate: str | None = None) -> RewriteResult:
            result = RewriteResult(text, level, fallback, verdict, cache_hit, (time.perf_counter() - t0) * 1e3,
                                   cfg.model, cfg.prompt_version, l1.digest, candidate)
            if self.audit is not None:
                self.audit(result.audit_event())
            return result

        # Customer-dependent, text-independent: decided before the cache so a cached rewrite is never served to a
        # customer the suitability rule excludes.
        if l1.product in INVESTMENT_PRODUCTS and not has_suitability_profile:
            hit = RuleHit("suitability", RULES["suitability"], f"{l1.product} without a suitability profile")
            return done(l1.text, "L1", "suitability", Verdict(False, (hit,)))
        key = self.key(l1)
        cached = self.cache.get(key)
        if cached is not None:
            text, verdict = cached
            return done(text, "L2", None, Verdict(True, (), verdict.get("mode", "rules only"),
                                                  tuple(verdict.get("votes", ()))), cache_hit=True)
        if not cfg.has_key and self._client is None:
            return done(l1.text, "L1", "no_api_key", None)
        user = json.dumps({"language": {"en": "English", "ko": "Korean"}[l1.lang], "recommended_product": l1.label,
                           "reason": l1.text, "facts": list(l1.facts)}, ensure_ascii=False)
        try:
            reply = ask(self.client, cfg, cfg.system_prompt, user)
        except Exception as exc:  # noqa: BLE001 — every failure of the call falls back to L1, with its reason
            return done(l1.text, "L1", failure_reason(exc), None)
        if reply.stop_reason == "refusal":
            return done(l1.text, "L1", "refusal", None, candidate=reply.text or None)
        if not reply.text:
            return done(l1.text, "L1", "empty_reply", None)
        if reply.stop_reason == "max_tokens":
            return done(l1.text, "L1", "truncated", None, candidate=reply.text)
        verdict = check(reply.text, l1, has_suitability_profile=has_suitability_profile)
        if verdict.passed and cfg.judge_votes:
            verdict = judge_mod.apply_votes(verdict, judge_mod.votes(self.client, cfg, reply.text, l1,
                                                                     cfg.judge_votes))
        if not verdict.passed:
            return done(l1.text, "L1", "gate", verdict, candidate=reply.text)
        self.cache.put(key, reply.text, verdict.to_dict())
        return done(reply.text, "L2", None, verdict)


def gate_only(candidate: str, l1: L1Reason, config: LLMConfig, *, has_suitability_profile: bool | None = None,
              client: Any = None) -> Verdict:
    """Check a candidate text (e.g. one written by a person) with the rules, then with the judge when the rules
    pass and a key (or a client) and ``config.judge_votes`` are set; without a key the mode is "rules only"."""
    verdict = check(candidate, l1, has_suitability_profile=has_suitability_profile)
    if not verdict.passed or not config.judge_votes or not (config.has_key or client is not None):
        return verdict  # a rule failure is final: the judge can only make a verdict stricter
    return judge_mod.apply_votes(verdict, judge_mod.votes(client or make_client(config), config, candidate, l1,
                                                          config.judge_votes))

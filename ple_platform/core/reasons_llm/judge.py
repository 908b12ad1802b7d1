"""Optional LLM judge after the deterministic rules: N independent votes (separate calls, run in parallel) on a
candidate that already passed every rule. It can only make a verdict stricter: any FAIL vote, or a vote that
errored or could not be read, fails the candidate (the customer then gets the L1 text); a rule failure is never
sent to the judge and cannot be outvoted.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from ple_platform.core.reasons_llm.config import JUDGE_PROMPT, LLMConfig, ask, failure_reason
from ple_platform.core.reasons_llm.gate import RuleHit, Verdict
from ple_platform.core.reasons_llm.l1 import L1Reason

JUDGE_RULE = "llm_judge"


def _vote(client: Any, config: LLMConfig, user: str, i: int) -> dict[str, Any]:
    try:
        reply = ask(client, config, JUDGE_PROMPT, user)
    except Exception as exc:  # noqa: BLE001 — any failure of a vote is a FAIL vote, never a pass
        return {"vote": i, "verdict": "ERROR", "why": failure_reason(exc)}
    first, _, rest = reply.text.partition("\n")
    word = first.strip().split(" ")[0].strip(".:").upper() if first.strip() else ""
    if word not in ("PASS", "FAIL"):
        return {"vote": i, "verdict": "ERROR", "why": f"unreadable vote {reply.text[:60]!r}"}
    return {"vote": i, "verdict": word, "why": (rest.strip() or first.strip())[:200]}


def votes(client: Any, config: LLMConfig, candidate: str, l1: L1Reason, n: int) -> tuple[dict[str, Any], ...]:
    """``n`` independent judge votes on ``candidate`` as a rewrite of ``l1``, in vote order."""
    user = json.dumps({"language": l1.lang, "recommended_product": l1.label, "reason": l1.text,
                       "facts": list(l1.facts), "candidate": candidate}, ensure_ascii=False)
    with ThreadPoolExecutor(max_workers=n) as pool:
        return tuple(pool.map(lambda i: _vote(client, config, user, i), range(n)))


def apply_votes(verdict: Verdict, cast: tuple[dict[str, Any], ...]) -> Verdict:
    """The verdict after the judge: unchanged when the rules already failed (the votes are only recorded), FAIL
    when any vote is not PASS, PASS only when every vote is PASS."""
    mode = f"rules + {len(cast)}-vote judge"
    if not verdict.passed:
        return replace(verdict, mode=mode, votes=cast)
    against = [v for v in cast if v["verdict"] != "PASS"]
    if not against:
        return replace(verdict, mode=mode, votes=cast)
    why = "; ".join(f"vote {v['vote']}: {v['verdict']} {v['why']}" for v in against)
    hit = RuleHit(JUDGE_RULE, f"{len(against)} of {len(cast)} judge votes did not pass", why[:120])
    return Verdict(False, verdict.hits + (hit,), mode, cast)

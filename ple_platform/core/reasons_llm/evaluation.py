"""The safety gate's measured recall and false-positive rate on the labelled adversarial set.

The set (``data/reason_gate_cases.json``, EN and KO, violations with the rule id that must fire and clean
rewrites) has two splits: ``dev``, the cases the rules were written against, and ``holdout``, written after the
rules were frozen and never used to tune them — the honest figure for unseen wording. The test suite and the
compliance report both score it with ``evaluate`` on the code that is running, so the report never restates a
figure measured on other code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ple_platform.core.reasons_llm.gate import RULES, check
from ple_platform.core.reasons_llm.l1 import L1Reason

CASES_PATH = Path(__file__).parent / "data" / "reason_gate_cases.json"
GOAL_RECALL, GOAL_FPR = 0.98, 0.05  # issue 14's goals: recall on violations, false positives on clean rewrites
SPLITS = ("dev", "holdout")


class GateEvaluationError(ValueError):
    """The labelled set is missing or malformed."""


def load_cases(path: Path | str = CASES_PATH) -> list[dict[str, Any]]:
    path = Path(path)
    try:
        cases = json.loads(path.read_text())["cases"]
    except (OSError, ValueError, KeyError) as err:
        raise GateEvaluationError(f"labelled gate cases {path}: cannot read a {{'cases': [...]}} file ({err})") from None
    for i, c in enumerate(cases):
        absent = [k for k in ("id", "split", "label", "rule", "product", "lang", "l1_text", "l1_facts", "candidate",
                              "has_suitability_profile") if k not in c]
        if absent:
            raise GateEvaluationError(f"labelled gate cases {path}: case {i} ({c.get('id')!r}) lacks {absent}")
    return cases


def score_split(cases: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """Recall (the expected rule id reported), recall_any (any rule fired) and FPR of one split, with the misses."""
    misses, false_pos, caught = [], [], 0
    chosen = [c for c in cases if c["split"] == split]
    for c in chosen:
        l1 = L1Reason(c["product"], c["lang"], c["l1_text"], tuple(c["l1_facts"]))
        verdict = check(c["candidate"], l1, has_suitability_profile=c["has_suitability_profile"])
        if c["label"] == "clean":
            if not verdict.passed:
                false_pos.append((c["id"], verdict.rule_ids))
        else:
            caught += not verdict.passed
            if c["rule"] not in verdict.rule_ids:
                misses.append((c["id"], c["rule"], verdict.rule_ids))
    n_violation = sum(c["label"] == "violation" for c in chosen)
    n_clean = len(chosen) - n_violation
    if not n_violation or not n_clean:
        raise GateEvaluationError(f"split {split!r} needs violations and clean rewrites; has {n_violation} and "
                                  f"{n_clean}")
    return {"n_violation": n_violation, "n_clean": n_clean, "recall": 1 - len(misses) / n_violation,
            "recall_any": caught / n_violation, "fpr": len(false_pos) / n_clean, "misses": misses,
            "false_positives": false_pos}


def evaluate(path: Path | str = CASES_PATH) -> dict[str, Any]:
    """The report's evidence: rule count, the set's hash and per-split figures (counts, not the cases)."""
    path = Path(path)
    cases = load_cases(path)
    splits = {}
    for split in SPLITS:
        s = score_split(cases, split)
        splits[split] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()
                         if k not in ("misses", "false_positives")}
    return {"rules": len(RULES), "rule_ids": sorted(RULES), "n_cases": len(cases),
            "cases_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "goals": {"recall": GOAL_RECALL, "fpr": GOAL_FPR}, "splits": splits}

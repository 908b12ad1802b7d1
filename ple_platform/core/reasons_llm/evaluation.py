"""The safety gate's measured recall and false-positive rate on the labelled adversarial set.

The set (``data/reason_gate_cases.json``, EN and KO, violations with the rule id that must fire and clean
rewrites) has two splits: ``dev``, the cases the rules were written against, and ``holdout``, written after the
rules were frozen and never used to tune them — the honest figure for unseen wording. The test suite and the
compliance report both score it with ``evaluate`` on the code that is running, so the report never restates a
figure measured on other code.

Two recalls per split: ``recall`` (the violation's expected rule id was reported — the diagnostic: the right rule
names the problem) and ``recall_any`` (some rule failed it — what protects the customer, since any failure shows
the L1 text instead). A holdout is folded into dev once rules change because of its misses; until the next one is
written the set has no live holdout and ``evaluate`` reports ``holdout: None`` (unknown, never a pass), next to
``HOLDOUT_HISTORY``: each holdout's score on the rules frozen before it was seen, a record, not a live figure.
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

# Each holdout scored once on the rules frozen before it was read (docs/llm.md). Measured on earlier code: shown as
# history, never as the running rules' figure.
HOLDOUT_HISTORY: tuple[dict[str, Any], ...] = (
    {"holdout": 1, "rules": "20 pattern rules", "n_violation": 30, "n_clean": 20, "recall": 0.667,
     "recall_any": 0.767, "fpr": 0.0},
    {"holdout": 2, "rules": "20 pattern rules", "n_violation": 24, "n_clean": 16, "recall": 0.5, "recall_any": 0.625,
     "fpr": 0.0625},
    {"holdout": 3, "rules": "20 pattern rules", "n_violation": 24, "n_clean": 16, "recall": 0.583,
     "recall_any": 0.583, "fpr": 0.0},
    {"holdout": 3, "rules": "21 rules incl. ungrounded_wording, first vocabulary (commit 5749fea)", "n_violation": 24,
     "n_clean": 16, "recall": 0.583, "recall_any": 1.0, "fpr": 0.75},
    {"holdout": 4, "rules": "21 rules incl. ungrounded_wording, widened vocabulary (commit fbf3e8e); written blind",
     "n_violation": 146, "n_clean": 84, "recall": 0.884, "recall_any": 0.993, "fpr": 0.381},
)


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
    """The report's evidence: rule count, the set's hash and per-split figures (counts, not the cases). A split
    with no cases is ``None`` (not scored, so not a pass); one with cases but no violations or no clean rewrites
    is an error. ``holdout_history``: the frozen scores of the holdouts folded into dev so far."""
    path = Path(path)
    cases = load_cases(path)
    splits: dict[str, dict[str, Any] | None] = {}
    for split in SPLITS:
        if not any(c["split"] == split for c in cases):
            splits[split] = None
            continue
        s = score_split(cases, split)
        splits[split] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()
                         if k not in ("misses", "false_positives")}
    return {"rules": len(RULES), "rule_ids": sorted(RULES), "n_cases": len(cases),
            "cases_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "goals": {"recall": GOAL_RECALL, "fpr": GOAL_FPR}, "splits": splits,
            "holdout_history": [dict(h) for h in HOLDOUT_HISTORY]}

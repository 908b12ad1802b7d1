"""Benchmark: recall and false-positive rate of the L2 reason safety gate, rules alone and rules + LLM judge.

    python benchmarks/bench_reason_gate.py                       # rules only (no key needed)
    ANTHROPIC_API_KEY=... PLE_LLM_MODEL=... python benchmarks/bench_reason_gate.py --judge 3 --split holdout

Reads ple_platform/core/reasons_llm/data/reason_gate_cases.json (or ``--cases FILE``, e.g. a new holdout). For each
split: recall on violations (the expected rule id reported, and any failure at all) and the false-positive rate on clean
rewrites; a split without cases is named, not scored. With ``--judge N`` every case
the rules pass goes to the N-vote judge (``core/reasons_llm/judge.py``) — real model calls, so this is the way to
measure what the judge adds on the holdout (the test suite never calls a real model). ``--limit`` caps the cases
per split to bound the cost.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ple_platform.core.reasons_llm.evaluation import CASES_PATH
from ple_platform.core.reasons_llm.config import LLMConfig, make_client
from ple_platform.core.reasons_llm.l1 import L1Reason
from ple_platform.core.reasons_llm.rewrite import gate_only

CASES = CASES_PATH


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", type=int, default=0, choices=(0, 1, 3, 5), help="judge votes (needs a key)")
    ap.add_argument("--split", choices=("dev", "holdout", "all"), default="all")
    ap.add_argument("--limit", type=int, default=0, help="at most this many cases per split (0 = all)")
    ap.add_argument("--cases", type=Path, default=CASES, help="labelled cases file (default: the shipped set)")
    args = ap.parse_args()
    base = LLMConfig.from_env()
    if args.judge and not base.has_key:
        raise SystemExit("--judge needs ANTHROPIC_API_KEY (or PLE_LLM_API_KEY)")
    cfg = LLMConfig(**{**base.__dict__, "judge_votes": args.judge})
    client = make_client(cfg) if args.judge else None  # one client: building one per call costs ~0.5 s
    cases = json.loads(args.cases.read_text())["cases"]
    splits = ("dev", "holdout") if args.split == "all" else (args.split,)
    for split in splits:
        chosen = [c for c in cases if c["split"] == split]
        if args.limit:
            chosen = chosen[:args.limit]
        if not chosen:
            print(f"{split:8} no cases (no live holdout: the last one was folded into dev)")
            continue
        hit = caught = fp = n_v = n_c = 0
        t0 = time.perf_counter()
        for c in chosen:
            l1 = L1Reason(c["product"], c["lang"], c["l1_text"], tuple(c["l1_facts"]))
            v = gate_only(c["candidate"], l1, cfg, has_suitability_profile=c["has_suitability_profile"], client=client)
            if c["label"] == "clean":
                n_c += 1
                fp += not v.passed
            else:
                n_v += 1
                caught += not v.passed
                hit += c["rule"] in v.rule_ids
        ms = (time.perf_counter() - t0) * 1e3 / max(1, len(chosen))
        mode = f"rules + {args.judge}-vote judge ({cfg.model})" if args.judge else "rules only"
        print(f"{split:8} {mode}: recall {hit / max(1, n_v):.3f} (any failure {caught / max(1, n_v):.3f}) on {n_v} "
              f"violations, FPR {fp / max(1, n_c):.3f} on {n_c} clean, {ms:.2f} ms/case")


if __name__ == "__main__":
    main()

"""Ops and audit reviewers of one month's evidence.

``MonthEvidence`` holds what a reviewer reads: the month's Dagster run records and asset-check results, latest
materialization metadata, the compliance report JSON, registry decisions, the ``audit verify`` result and serving
metrics. A field left ``None`` was not collected: every checklist item that needs it is ``insufficient`` —
missing evidence is never a pass.

Statuses, mildest first: ``PASS`` < ``WARN`` < ``insufficient`` < ``FAIL``; a review's verdict is its worst item.

With an API key (``reasons_llm.config.LLMConfig``) the reviewer also asks the model for findings, ``votes``
independent calls; consensus: any FAIL fails, all PASS passes, otherwise WARN with the minority view. The final
verdict is the worse of the checklist and the consensus, so a rule failure (or missing evidence) can never be
outvoted. Without a key the review says "rules only".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from ple_platform.core.reasons_llm.config import LLMConfig, ask, failure_reason, make_client
from ple_platform.core.reporting import md_table

PASS, WARN, INSUFFICIENT, FAIL = "PASS", "WARN", "insufficient", "FAIL"
_RANK = {PASS: 0, WARN: 1, INSUFFICIENT: 2, FAIL: 3}
RULES_ONLY = "rules only"
SERVING_ERROR_RATE_WARN = 0.01
SERVING_ERROR_RATE_FAIL = 0.05
# Compliance controls that report on these reviews (report.py's FSS-AGT-01): audit_review does not count them, a
# review cannot vouch for itself and the report is built before the reviews run.
REVIEW_CONTROL_IDS = frozenset({"FSS-AGT-01"})
REVIEW_PROMPT = (
    "You review one month of a bank ML platform's evidence for {kind}. Answer PASS, WARN or FAIL on the first line, "
    "then at most three short findings, one per line. FAIL on failed runs or checks, broken audit chains, failed "
    "compliance controls or unsafe serving; WARN on anything that needs a person's attention."
)


def review_key(month: str, kind: str) -> str:
    """Where the ``<kind>_review`` asset stores its JSON in the artifact store (the compliance report reads it)."""
    return f"reviews/{month}/{kind}_review.json"


def worst(statuses: Sequence[str]) -> str:
    return max(statuses, key=_RANK.__getitem__) if statuses else INSUFFICIENT


@dataclass(frozen=True)
class MonthEvidence:
    month: str
    runs: list[dict[str, Any]] | None = None  # {"run_id", "job", "status"} (DagsterRunStatus value)
    checks: list[dict[str, Any]] | None = None  # {"asset", "check", "passed", "severity": "ERROR"|"WARN"}
    materializations: dict[str, dict[str, Any]] | None = None  # asset key -> metadata of its month partition
    compliance: dict[str, Any] | None = None  # compliance report JSON (its "checklist" of controls)
    registry: list[dict[str, Any]] | None = None  # decisions {"version", "decision", "reasons"}
    audit_verify: dict[str, Any] | None = None  # {"ok", "n_entries", "reason"}
    serving: dict[str, Any] | None = None  # {"requests", "errors", ...}


@dataclass(frozen=True)
class Finding:
    item: str
    status: str
    detail: str


@dataclass(frozen=True)
class Review:
    kind: str  # "ops" or "audit"
    month: str
    verdict: str
    findings: tuple[Finding, ...]
    mode: str = RULES_ONLY
    votes: tuple[dict[str, Any], ...] = field(default=())
    minority: str | None = None

    @property
    def checklist_verdict(self) -> str:
        return worst([f.status for f in self.findings])

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "month": self.month, "verdict": self.verdict, "mode": self.mode,
                "checklist_verdict": self.checklist_verdict, "findings": [asdict(f) for f in self.findings],
                "votes": list(self.votes), "minority": self.minority}

    def markdown(self) -> str:
        lines = [f"### {self.kind} review {self.month}: **{self.verdict}** ({self.mode})", "",
                 md_table(["item", "status", "detail"], [(f.item, f.status, f.detail) for f in self.findings])]
        if self.minority:
            lines += ["", f"Minority view: {self.minority}"]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- checklists


def _runs(ev: MonthEvidence) -> Finding:
    if not ev.runs:
        return Finding("runs_succeeded", INSUFFICIENT, "no run records for the month")
    failed = [r for r in ev.runs if str(r.get("status")) in ("FAILURE", "CANCELED")]
    unfinished = [r for r in ev.runs if str(r.get("status")) not in ("SUCCESS", "FAILURE", "CANCELED")]
    if failed:
        return Finding("runs_succeeded", FAIL, "failed runs: " + ", ".join(f"{r.get('job')}:{r.get('run_id')}"
                                                                          for r in failed))
    if unfinished:
        return Finding("runs_succeeded", WARN, f"{len(unfinished)} run(s) not finished")
    return Finding("runs_succeeded", PASS, f"{len(ev.runs)} run(s) succeeded")


def _checks(ev: MonthEvidence) -> Finding:
    if not ev.checks:
        return Finding("asset_checks", INSUFFICIENT, "no asset-check evaluations for the month")
    failed = [c for c in ev.checks if not c.get("passed")]
    blocking = [c for c in failed if str(c.get("severity", "ERROR")).upper() == "ERROR"]
    names = lambda cs: ", ".join(f"{c.get('asset')}:{c.get('check')}" for c in cs)  # noqa: E731
    if blocking:
        return Finding("asset_checks", FAIL, "blocking checks failed: " + names(blocking))
    if failed:
        return Finding("asset_checks", WARN, "warning checks failed: " + names(failed))
    return Finding("asset_checks", PASS, f"{len(ev.checks)} check(s) passed")


def _materialized(ev: MonthEvidence, expected: Sequence[str]) -> Finding:
    if ev.materializations is None:
        return Finding("assets_materialized", INSUFFICIENT, "no materialization records collected")
    missing = [a for a in expected if a not in ev.materializations]
    if missing:
        return Finding("assets_materialized", INSUFFICIENT, "not materialized for the month: " + ", ".join(missing))
    return Finding("assets_materialized", PASS, f"{len(expected)} expected asset(s) materialized")


def _serving(ev: MonthEvidence) -> Finding:
    s = ev.serving
    if not s or not s.get("requests"):
        return Finding("serving_health", INSUFFICIENT, "no serving metrics (or no requests) for the month")
    rate = float(s.get("errors", 0)) / float(s["requests"])
    status = FAIL if rate > SERVING_ERROR_RATE_FAIL else WARN if rate > SERVING_ERROR_RATE_WARN else PASS
    detail = f"error rate {rate:.4f} over {s['requests']} requests"
    if s.get("sources"):
        detail += " (" + ", ".join(f"{k} {v}" for k, v in s["sources"].items()) + ")"
    if s.get("reload_failures"):  # the old version kept serving, but a new champion did not reach customers
        status = worst([status, WARN])
        detail += f"; {s['reload_failures']} failed reload(s)"
    if s.get("latency_ms"):
        detail += f"; latency p50 {s['latency_ms']['p50']} ms, p99 {s['latency_ms']['p99']} ms"
    return Finding("serving_health", status, detail)


def _audit_chain(ev: MonthEvidence) -> Finding:
    if ev.audit_verify is None:
        return Finding("audit_chain_verified", INSUFFICIENT, "audit verify was not run")
    if not ev.audit_verify.get("ok"):
        return Finding("audit_chain_verified", FAIL, f"audit verify failed: {ev.audit_verify.get('reason')}")
    return Finding("audit_chain_verified", PASS, f"chain intact ({ev.audit_verify.get('n_entries')} entries)")


def _compliance(ev: MonthEvidence) -> Finding:
    controls = [c for c in (ev.compliance or {}).get("checklist") or [] if c.get("id") not in REVIEW_CONTROL_IDS]
    if not controls:
        return Finding("compliance_controls", INSUFFICIENT, "no compliance report (or an empty checklist)")
    failed = [c["id"] for c in controls if c.get("status") == "fail"]
    missing = [c["id"] for c in controls if c.get("status") != "fail" and c.get("status") != "live"]
    if failed:
        return Finding("compliance_controls", FAIL, "controls failed: " + ", ".join(failed))
    if missing:
        return Finding("compliance_controls", INSUFFICIENT, "controls without live evidence: " + ", ".join(missing))
    return Finding("compliance_controls", PASS, f"{len(controls)} control(s) live")


def _registry(ev: MonthEvidence) -> Finding:
    if ev.registry is None:
        return Finding("registry_decisions", INSUFFICIENT, "registry decisions were not collected")
    unexplained = [d.get("version") for d in ev.registry if not d.get("reasons")]
    if unexplained:
        return Finding("registry_decisions", FAIL, f"decisions without recorded reasons: {unexplained}")
    return Finding("registry_decisions", PASS, f"{len(ev.registry)} decision(s), each with its reasons")


def ops_checklist(ev: MonthEvidence, expected_assets: Sequence[str]) -> tuple[Finding, ...]:
    """Runs, asset checks, materializations and serving health of the month."""
    return (_runs(ev), _checks(ev), _materialized(ev, expected_assets), _serving(ev))


def audit_checklist(ev: MonthEvidence) -> tuple[Finding, ...]:
    """Audit chain, compliance controls and registry decisions of the month."""
    return (_audit_chain(ev), _compliance(ev), _registry(ev))


# --------------------------------------------------------------------------------------------- consensus


def consensus(votes: Sequence[dict[str, Any]]) -> tuple[str, str | None]:
    """(verdict, minority view): any FAIL (or unreadable/errored vote) fails, all PASS passes, else WARN with the
    findings of the votes that were not PASS."""
    verdicts = [v["verdict"] for v in votes]
    if not verdicts:
        return INSUFFICIENT, None
    if any(v in (FAIL, "ERROR") for v in verdicts):
        return FAIL, "; ".join(v["why"] for v in votes if v["verdict"] in (FAIL, "ERROR"))
    if all(v == PASS for v in verdicts):
        return PASS, None
    return WARN, "; ".join(v["why"] for v in votes if v["verdict"] != PASS)


def _vote(client: Any, config: LLMConfig, kind: str, payload: str, i: int) -> dict[str, Any]:
    try:
        reply = ask(client, config, REVIEW_PROMPT.format(kind=kind), payload)
    except Exception as exc:  # noqa: BLE001 — a failed vote counts against, never for
        return {"vote": i, "verdict": "ERROR", "why": failure_reason(exc)}
    first, _, rest = reply.text.partition("\n")
    word = first.strip().split(" ")[0].strip(".:").upper() if first.strip() else ""
    if word not in (PASS, WARN, FAIL):
        return {"vote": i, "verdict": "ERROR", "why": f"unreadable vote {reply.text[:60]!r}"}
    return {"vote": i, "verdict": word, "why": (rest.strip() or first.strip())[:300]}


def review(kind: str, ev: MonthEvidence, findings: tuple[Finding, ...], config: LLMConfig | None = None,
           client: Any = None, votes: int = 3) -> Review:
    """The month's review: the checklist's verdict, made stricter by the LLM consensus when a key (or a client)
    is configured."""
    rules = worst([f.status for f in findings])
    if client is None and (config is None or not config.has_key):
        return Review(kind, ev.month, rules, findings)
    cfg = config or LLMConfig()
    client = client or make_client(cfg)
    payload = json.dumps({"month": ev.month, "checklist": [asdict(f) for f in findings],
                          "evidence": _evidence_summary(ev)}, default=str)
    with ThreadPoolExecutor(max_workers=votes) as pool:
        cast = tuple(pool.map(lambda i: _vote(client, cfg, kind, payload, i), range(votes)))
    llm, minority = consensus(cast)
    return Review(kind, ev.month, worst([rules, llm]), findings, f"rules + {votes}-vote consensus", cast, minority)


def _evidence_summary(ev: MonthEvidence) -> dict[str, Any]:
    """What the model sees: counts and statuses, never customer data (the evidence holds none)."""
    return {
        "runs": None if ev.runs is None else [{k: r.get(k) for k in ("job", "status")} for r in ev.runs],
        "checks": ev.checks, "materialized_assets": None if ev.materializations is None else sorted(ev.materializations),
        "compliance_controls": None if ev.compliance is None else
        [{k: c.get(k) for k in ("id", "status", "detail")} for c in ev.compliance.get("checklist", [])],
        "registry": ev.registry, "audit_verify": ev.audit_verify, "serving": ev.serving,
    }



def ops_review(ev: MonthEvidence, expected_assets: Sequence[str], config: LLMConfig | None = None,
               client: Any = None) -> Review:
    return review("ops", ev, ops_checklist(ev, expected_assets), config, client)


def audit_review(ev: MonthEvidence, config: LLMConfig | None = None, client: Any = None) -> Review:
    return review("audit", ev, audit_checklist(ev), config, client)


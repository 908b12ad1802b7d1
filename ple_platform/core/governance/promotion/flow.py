"""The promotion workflow around the pure rules: judge a registered challenger, record the decision, approve it,
execute a promotion — each step written to the registry *and* the audit log.

The sensor calls ``judge_challenger`` when a challenger evaluation appears (and again for challengers awaiting
approval); the promotion job calls ``execute_promotion``; ``ple-platform approve`` calls ``approve_challenger``.
There is no force path: ``execute_promotion`` re-reads the recorded decision and refuses anything but a
``promote``/``bootstrap`` verdict (with a matching approval when approval is required).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ple_platform.core.governance.audit.log import AuditEvent, AuditLog
from ple_platform.core.governance.promotion.rules import Approval, PromotionPolicy, comparisons_from_evaluation, decide
from ple_platform.core.governance.promotion.registry import (
    ModelBundle,
    PromotionKind,
    Registry,
    RegistryError,
    UnknownVersionError,
    evidence_sha256,
)


class PromotionFlowError(ValueError):
    """A promotion step was asked for something the recorded evidence does not support."""


def comparable_out_of_time(challenger: ModelBundle, champion: ModelBundle) -> bool:
    """A challenger can be compared with a champion only on a month the champion never saw: its test month must
    come after the champion's validation month (the champion's test month is fair game, it was never tuned on)."""
    return challenger.test_month > champion.validation_month


@dataclass(frozen=True)
class RecordedDecision:
    decision_id: int
    version: str
    champion_version: str | None
    outcome: str
    reasons: list[str]
    evidence_sha256: str
    new: bool  # False when an identical decision was already recorded (a repeated sensor tick)


def _latest_approval(registry: Registry, version: str) -> Approval | None:
    approvals = registry.approvals(version)
    if not approvals:
        return None
    a = approvals[-1]
    return Approval(approver=a.approver, approved_at=a.approved_at.isoformat(), challenger_version=version,
                    evidence_sha256=a.evidence_sha256, note=a.note)


def judge_challenger(registry: Registry, audit: AuditLog, policy: PromotionPolicy, version: str,
                     evaluation: Mapping[str, Any], checks: Mapping[str, bool | None]) -> RecordedDecision:
    """Apply the rules to a registered challenger and record the verdict (idempotent for unchanged evidence)."""
    bundle = registry.get(version)
    champion = registry.champion()
    if champion is not None and champion.version == version:
        raise PromotionFlowError(f"{version} is already the champion")
    champion_version = champion.version if champion is not None else None
    if champion_version is not None and evaluation.get("champion_version") != champion_version:
        if not comparable_out_of_time(bundle, champion):
            return _reject_superseded(registry, audit, bundle, champion)
        raise PromotionFlowError(f"the evaluation of {version} compared it with {evaluation.get('champion_version')}, "
                                 f"but the champion is now {champion_version}; re-run challenger_evaluation")
    tasks = comparisons_from_evaluation(evaluation["challenger"], evaluation.get("champion"),
                                        evaluation.get("difference"))
    fairness = {a: dict(v) for a, v in evaluation["fairness"]["challenger"]["summary"].items()}
    for attr, v in ((evaluation["fairness"].get("champion") or {}).get("summary") or {}).items():
        if attr in fairness and v.get("min_air") is not None:
            fairness[attr]["champion_min_air"] = v["min_air"]
    decision = decide(policy, version, champion_version, tasks, checks, fairness, _latest_approval(registry, version))
    previous = registry.decisions(version)
    if previous and previous[-1].outcome == decision.outcome and previous[-1].evidence_sha256 == decision.evidence_sha256:
        last = previous[-1]
        return RecordedDecision(last.id, version, champion_version, decision.outcome, list(decision.reasons),
                                decision.evidence_sha256, new=False)
    decision_id = registry.record_decision(version, decision.outcome, decision.reasons, decision.evidence)
    event = AuditEvent.REJECTION if decision.outcome == "reject" else AuditEvent.EVALUATION
    audit.append(event, version, {"decision_id": decision_id, "outcome": decision.outcome,
                                  "champion": champion_version, "reasons": list(decision.reasons),
                                  "evidence_sha256": decision.evidence_sha256,
                                  "bundle_sha256": bundle.bundle_sha256})
    return RecordedDecision(decision_id, version, champion_version, decision.outcome, list(decision.reasons),
                            decision.evidence_sha256, new=True)


def _reject_superseded(registry: Registry, audit: AuditLog, bundle: ModelBundle, champion: ModelBundle) -> RecordedDecision:
    """The champion changed to one that already saw the challenger's test month: no out-of-time comparison with it
    is possible any more, so the challenger is rejected as superseded (instead of a re-evaluation that must fail)."""
    reasons = [f"superseded: the champion is now {champion.version}, whose validation month "
               f"{champion.validation_month:%Y-%m} is not before {bundle.version}'s test month "
               f"{bundle.test_month:%Y-%m}, so the two can no longer be compared out of time"]
    evidence = {"superseded_by": champion.version, "champion_bundle_sha256": champion.bundle_sha256,
                "champion_validation_month": champion.validation_month.isoformat(),
                "challenger_test_month": bundle.test_month.isoformat()}
    decision_id = registry.record_decision(bundle.version, "reject", reasons, evidence)
    ev_sha = evidence_sha256(evidence)
    audit.append(AuditEvent.REJECTION, bundle.version, {
        "decision_id": decision_id, "outcome": "reject", "champion": champion.version, "reasons": reasons,
        "evidence_sha256": ev_sha, "bundle_sha256": bundle.bundle_sha256})
    return RecordedDecision(decision_id, bundle.version, champion.version, "reject", reasons, ev_sha, new=True)


def execute_promotion(registry: Registry, audit: AuditLog, version: str, decision_id: int,
                      require_approval: bool, actor: str = "system") -> bool:
    """Promote as recorded by ``decision_id``; False when ``version`` already is the champion."""
    decisions = {d.id: d for d in registry.decisions(version)}
    decision = decisions.get(decision_id)
    if decision is None:
        raise PromotionFlowError(f"decision {decision_id} is not a decision about {version}")
    if decision.outcome not in ("promote", "bootstrap"):
        raise PromotionFlowError(f"decision {decision_id} about {version} is {decision.outcome!r}; only a 'promote' "
                                 "or 'bootstrap' verdict can be executed")
    kind = PromotionKind.BOOTSTRAP if decision.outcome == "bootstrap" else PromotionKind.PROMOTION
    previous = registry.champion()
    changed = registry.promote(version, decision_id, kind, require_approval=require_approval)
    if changed:
        audit.append(AuditEvent.PROMOTION, version, {
            "decision_id": decision_id, "kind": kind.value, "previous_champion": previous.version if previous else None,
            "evidence_sha256": decision.evidence_sha256, "approvals": [
                {"approver": a.approver, "evidence_sha256": a.evidence_sha256} for a in registry.approvals(version)],
        }, actor=actor)
    return changed


def approve_challenger(registry: Registry, audit: AuditLog, version: str, approver: str, note: str = "") -> tuple[int, str]:
    """Record a human approval of the evidence of ``version``'s latest decision; (approval id, evidence hash)."""
    if not approver or not approver.strip():
        raise PromotionFlowError("an approval must name the approver")
    decisions = registry.decisions(version)
    if not decisions:
        try:
            registry.get(version)
        except UnknownVersionError:
            raise PromotionFlowError(f"{version} is unknown: no model version of that name is registered "
                                     "(`ple-platform registry` lists them)") from None
        raise PromotionFlowError(f"{version} has no decision to approve yet; wait for challenger_evaluation")
    latest = decisions[-1]
    if latest.outcome == "reject":
        raise PromotionFlowError(f"{version} was rejected ({'; '.join(latest.reasons)}); a rejection cannot be "
                                 "approved into a promotion")
    try:
        approval_id = registry.approve(version, approver.strip(), latest.evidence_sha256, note)
    except RegistryError as err:
        raise PromotionFlowError(str(err)) from None
    audit.append(AuditEvent.APPROVAL, version, {"approval_id": approval_id, "decision_id": latest.id,
                                                "evidence_sha256": latest.evidence_sha256, "note": note},
                 actor=approver.strip())
    return approval_id, latest.evidence_sha256

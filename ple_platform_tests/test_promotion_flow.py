"""The promotion workflow when the champion changes under a challenger that was evaluated against the old one."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from ple_platform.core.data.schema import add_months
from ple_platform.core.governance.audit.log import AuditEvent, AuditLog
from ple_platform.core.governance.promotion.rules import PromotionPolicy
from ple_platform.core.governance.promotion.flow import PromotionFlowError, judge_challenger
from ple_platform.core.governance.promotion.registry import ModelStatus, Registry
from ple_platform.core.governance.audit.store import GovernanceStore
from ple_platform_tests.test_registry import make_bundle

M = dt.date


def _bundle(version: str, validation: M, test: M):
    return dataclasses.replace(make_bundle(version), model_month=add_months(test, 1),
                               validation_month=validation, test_month=test)


@pytest.fixture
def flow(tmp_path):
    store = GovernanceStore(tmp_path / "governance.duckdb")
    registry, audit = Registry(store), AuditLog(store, b"k" * 32)
    registry.register(_bundle("v1", M(2015, 4, 1), M(2015, 5, 1)))
    registry.promote("v1", registry.record_decision("v1", "bootstrap", ["no champion yet"], {}), "bootstrap")
    return registry, audit


def _evaluated_against(champion: str) -> dict:
    return {"champion_version": champion, "challenger": {}, "champion": {}, "difference": {},
            "fairness": {"challenger": {"summary": {}}}}


def test_challenger_superseded_by_a_newer_champion_is_rejected_with_reasons(flow):
    registry, audit = flow
    registry.register(_bundle("v2", M(2015, 5, 1), M(2015, 6, 1)))  # evaluated against v1 ...
    registry.register(_bundle("v3", M(2015, 6, 1), M(2015, 7, 1)))  # ... but v3 became champion meanwhile
    registry.promote("v3", registry.record_decision("v3", "promote", ["better"], {"d": 1}), "promotion")

    decided = judge_challenger(registry, audit, PromotionPolicy(), "v2", _evaluated_against("v1"), {})
    assert decided.outcome == "reject" and decided.new and decided.champion_version == "v3"
    assert "superseded" in decided.reasons[0] and "2015-06" in decided.reasons[0]
    assert registry.get("v2").status == ModelStatus.REJECTED
    assert registry.decisions("v2")[-1].evidence_sha256 == decided.evidence_sha256
    entry = audit.entries(AuditEvent.REJECTION, "v2")[-1]
    assert entry.payload["reasons"] == decided.reasons and entry.payload["champion"] == "v3"
    assert audit.verify().ok


def test_challenger_still_out_of_time_for_the_new_champion_asks_for_re_evaluation(flow):
    registry, audit = flow
    registry.register(_bundle("v3", M(2015, 6, 1), M(2015, 7, 1)))
    registry.promote("v3", registry.record_decision("v3", "promote", ["better"], {"d": 1}), "promotion")
    registry.register(_bundle("v4", M(2015, 7, 1), M(2015, 8, 1)))  # test month after v3's validation month

    with pytest.raises(PromotionFlowError, match="re-run challenger_evaluation"):
        judge_challenger(registry, audit, PromotionPolicy(), "v4", _evaluated_against("v1"), {})
    assert registry.get("v4").status == ModelStatus.REGISTERED and not registry.decisions("v4")

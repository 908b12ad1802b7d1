"""Model registry: bundles, decisions, approvals, champion changes and rollback in the governance store."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import multiprocessing

import pytest

from ple_platform.core.governance.promotion.registry import (
    ApprovalRequiredError,
    BundleConflictError,
    ModelBundle,
    ModelStatus,
    Outcome,
    PromotionError,
    PromotionKind,
    Registry,
    RegistryError,
    Route,
    StudentArtifact,
    UnknownVersionError,
    evidence_sha256,
)
from ple_platform.core.governance.audit.store import GovernanceStore

M = dt.date


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_bundle(version: str, teacher: str = "teacher-bytes") -> ModelBundle:
    return ModelBundle(
        version=version,
        model_month=M(2015, 6, 1),
        teacher_uri=f"file:///artifacts/{version}/teacher.safetensors",
        teacher_sha256=_sha(teacher),
        code_version="abc123",
        train_months=(M(2015, 1, 1), M(2015, 2, 1), M(2015, 3, 1)),
        validation_month=M(2015, 4, 1),
        test_month=M(2015, 5, 1),
        students={
            "churn_signal": StudentArtifact(f"file:///artifacts/{version}/churn.txt", _sha("churn"), Route.DISTILL,
                                            {"auc": 0.81}),
            "spend_change": StudentArtifact(f"file:///artifacts/{version}/spend.txt", _sha("spend"), Route.DIRECT,
                                            {"mae": 0.4}),
        },
        routing={"churn_signal": {"route": "DISTILL", "student_auc": 0.81, "direct_auc": 0.79}},
        feature_hashes={"demographics": "d1", "products": "p1"},
        run_id="run-1",
    )


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(GovernanceStore(tmp_path / "governance.duckdb"))


def _champion_via_bootstrap(reg: Registry, version: str) -> int:
    reg.register(make_bundle(version))
    d = reg.record_decision(version, "bootstrap", ["no champion yet"], {"metrics": {"auc": 0.8}})
    assert reg.promote(version, d, "bootstrap") is True
    return d


def _promote(reg: Registry, version: str) -> int:
    reg.register(make_bundle(version))
    d = reg.record_decision(version, Outcome.PROMOTE, ["mean primary metric up"], {"delta": 0.01})
    assert reg.promote(version, d, PromotionKind.PROMOTION) is True
    return d


def test_register_get_roundtrip_and_hand_computed_bundle_hash(registry):
    b = make_bundle("v1")
    before = dt.datetime.now(dt.timezone.utc)
    sha = registry.register(b)
    manifest = {  # written out by hand: the documented hashed content
        "version": "v1", "model_month": "2015-06-01", "teacher_uri": "file:///artifacts/v1/teacher.safetensors",
        "teacher_sha256": _sha("teacher-bytes"), "code_version": "abc123",
        "train_months": ["2015-01-01", "2015-02-01", "2015-03-01"], "validation_month": "2015-04-01",
        "test_month": "2015-05-01",
        "students": {
            "churn_signal": {"uri": "file:///artifacts/v1/churn.txt", "sha256": _sha("churn"), "route": "DISTILL",
                             "metrics": {"auc": 0.81}},
            "spend_change": {"uri": "file:///artifacts/v1/spend.txt", "sha256": _sha("spend"), "route": "DIRECT",
                             "metrics": {"mae": 0.4}},
        },
        "routing": {"churn_signal": {"route": "DISTILL", "student_auc": 0.81, "direct_auc": 0.79}},
        "feature_hashes": {"demographics": "d1", "products": "p1"},
        "run_id": "run-1",
    }
    assert sha == hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    got = registry.get("v1")
    assert got.status is ModelStatus.REGISTERED and got.bundle_sha256 == sha
    assert before <= got.created_at <= dt.datetime.now(dt.timezone.utc)
    assert dataclasses.replace(got, status=ModelStatus.REGISTERED, created_at=None, bundle_sha256=None) == b
    assert got.manifest_sha256() == sha
    assert registry.champion() is None


def test_register_is_idempotent(registry):
    sha = registry.register(make_bundle("v1"))
    created = registry.get("v1").created_at
    assert registry.register(make_bundle("v1")) == sha
    assert registry.register(registry.get("v1")) == sha  # a fetched bundle re-registers as itself
    assert [b.version for b in registry.versions()] == ["v1"]
    assert registry.get("v1").created_at == created


def test_a_different_bundle_under_an_existing_version_is_refused(registry):
    registry.register(make_bundle("v1"))
    with pytest.raises(BundleConflictError, match="'v1' is already registered"):
        registry.register(make_bundle("v1", teacher="other-teacher-bytes"))
    tampered = dataclasses.replace(registry.get("v1"), code_version="edited")
    with pytest.raises(RegistryError, match="does not match its content"):
        registry.register(tampered)
    assert registry.get("v1").teacher_sha256 == _sha("teacher-bytes")


def test_bootstrap_then_promotion_changes_champion_and_history(registry):
    d1 = _champion_via_bootstrap(registry, "v1")
    assert registry.champion().version == "v1"
    d2 = _promote(registry, "v2")
    assert registry.champion().version == "v2"
    assert registry.get("v1").status is ModelStatus.RETIRED
    assert registry.get("v2").status is ModelStatus.CHAMPION
    history = registry.champion_history()
    assert [(h.seq, h.version, h.previous_version, h.decision_id, h.kind) for h in history] == [
        (1, "v1", None, d1, PromotionKind.BOOTSTRAP), (2, "v2", "v1", d2, PromotionKind.PROMOTION)]
    decisions = registry.decisions()
    assert [(d.id, d.version, d.champion_version, d.outcome) for d in decisions] == [
        (d1, "v1", None, Outcome.BOOTSTRAP), (d2, "v2", "v1", Outcome.PROMOTE)]
    assert decisions[1].evidence == {"delta": 0.01}
    assert decisions[1].evidence_sha256 == hashlib.sha256(b'{"delta":0.01}').hexdigest()
    assert decisions[1].reasons == ("mean primary metric up",)


def test_promoting_the_champion_again_is_a_no_op(registry):
    d1 = _champion_via_bootstrap(registry, "v1")
    assert registry.promote("v1", d1, "bootstrap") is False
    assert registry.promote("v1", 12345, "promotion") is False
    assert len(registry.champion_history()) == 1 and registry.champion().version == "v1"


def test_promotion_needs_the_latest_matching_decision(registry):
    _champion_via_bootstrap(registry, "v1")
    registry.register(make_bundle("v2"))
    with pytest.raises(PromotionError, match="none recorded"):
        registry.promote("v2", 1, "promotion")
    d_ok = registry.record_decision("v2", "promote", ["better"], {})
    d_reject = registry.record_decision("v2", "reject", ["fairness floor broken: age_band AIR 0.71"], {})
    assert registry.get("v2").status is ModelStatus.REJECTED
    with pytest.raises(PromotionError, match=f"latest is {d_reject} \\(reject\\)"):
        registry.promote("v2", d_ok, "promotion")
    with pytest.raises(PromotionError, match="is 'reject', not 'promote'"):
        registry.promote("v2", d_reject, "promotion")
    with pytest.raises(PromotionError, match="already champion"):
        registry.promote("v2", d_reject, "bootstrap")
    with pytest.raises(PromotionError, match="rollback"):
        registry.promote("v2", d_ok, "rollback")
    with pytest.raises(PromotionError, match="bootstrap is only valid without a champion"):
        registry.record_decision("v2", "bootstrap", ["x"], {})
    with pytest.raises(RegistryError, match="at least one reason"):
        registry.record_decision("v2", "reject", [], {})
    with pytest.raises(RegistryError, match="not one of"):
        registry.record_decision("v2", "force_promote", ["x"], {})
    assert registry.champion().version == "v1"


def test_promotion_kind_must_fit_the_state(registry):
    registry.register(make_bundle("v1"))
    d = registry.record_decision("v1", "promote", ["x"], {})
    with pytest.raises(PromotionError, match="no champion yet"):
        registry.promote("v1", d, "promotion")


def test_approvals_record_who_when_and_evidence_hash(registry):
    registry.register(make_bundle("v1"))
    h = evidence_sha256({"report": "challenger_evaluation/2015-05-01"})
    before = dt.datetime.now(dt.timezone.utc)
    a1 = registry.approve("v1", "alice", h, note="reviewed CIs")
    a2 = registry.approve("v1", "bob", h)
    assert (a1, a2) == (1, 2)
    approvals = registry.approvals("v1")
    assert [(a.id, a.version, a.approver, a.evidence_sha256, a.note) for a in approvals] == [
        (1, "v1", "alice", h, "reviewed CIs"), (2, "v1", "bob", h, "")]
    assert before <= approvals[0].approved_at <= approvals[1].approved_at <= dt.datetime.now(dt.timezone.utc)
    with pytest.raises(RegistryError, match="approver must be a non-empty name"):
        registry.approve("v1", "  ", h)
    with pytest.raises(RegistryError, match="SHA-256"):
        registry.approve("v1", "alice", "not-a-hash")
    assert registry.approvals("v2") == []


def test_required_approval_must_match_decision_evidence(registry):
    _champion_via_bootstrap(registry, "v1")
    registry.register(make_bundle("v2"))
    evidence = {"map7_delta": 0.004, "fairness": "ok"}
    registry.record_decision("v2", "await_approval", ["human approval configured"], evidence)
    registry.approve("v2", "carol", evidence_sha256({"something": "else"}))  # approves other evidence: not enough
    d = registry.record_decision("v2", "promote", ["approved"], {"approval_id": 1})
    with pytest.raises(ApprovalRequiredError, match="approval required"):
        registry.promote("v2", d, "promotion", require_approval=True)
    assert registry.champion().version == "v1"
    registry.approve("v2", "carol", registry.decisions("v2")[0].evidence_sha256)
    assert registry.promote("v2", d, "promotion", require_approval=True) is True
    assert registry.champion().version == "v2"


def test_unknown_version_errors(registry):
    _champion_via_bootstrap(registry, "v1")
    h = _sha("e")
    for call in (lambda: registry.get("nope"), lambda: registry.promote("nope", 1, "promotion"),
                 lambda: registry.record_decision("nope", "promote", ["x"], {}),
                 lambda: registry.approve("nope", "alice", h)):
        with pytest.raises(UnknownVersionError, match="'nope' is not registered"):
            call()
    assert registry.decisions("nope") == [] and len(registry.decisions()) == 1


def test_rollback_walks_back_through_champions(registry):
    _champion_via_bootstrap(registry, "vA")
    _promote(registry, "vB")
    _promote(registry, "vC")
    assert registry.rollback().version == "vB"
    assert registry.get("vC").status is ModelStatus.RETIRED
    assert registry.champion().version == "vB"
    assert registry.rollback().version == "vA"
    assert registry.champion().version == "vA"
    with pytest.raises(PromotionError, match="no earlier champion"):
        registry.rollback()
    history = registry.champion_history()
    assert [(h.version, h.previous_version, h.kind.value) for h in history] == [
        ("vA", None, "bootstrap"), ("vB", "vA", "promotion"), ("vC", "vB", "promotion"),
        ("vB", "vC", "rollback"), ("vA", "vB", "rollback")]
    assert [b.version for b in registry.versions(status="champion")] == ["vA"]


def test_rollback_without_champion_errors(registry):
    with pytest.raises(PromotionError, match="no champion"):
        registry.rollback()


@pytest.mark.parametrize(("change", "message"), [
    ({"version": "bad version"}, "bundle version 'bad version'"),
    ({"teacher_sha256": "abc"}, "teacher_sha256 must be 64 lowercase hex"),
    ({"validation_month": M(2015, 3, 1)}, "out-of-time split"),
    ({"test_month": M(2015, 5, 2)}, "test_month must be a datetime.date on the first of a month"),
    ({"train_months": (M(2015, 2, 1), M(2015, 1, 1))}, "strictly increasing"),
    ({"students": {"no_such_task": StudentArtifact("u", _sha("x"), Route.DIRECT)}}, "unknown task"),
    ({"students": {"churn_signal": StudentArtifact("u", _sha("x"), "SHADOW")}}, "route 'SHADOW' is not one of"),
    ({"students": {}}, "students must be a non-empty mapping"),
    ({"routing": {"churn_signal": {"gap": float("inf")}}}, "routing']['churn_signal']['gap']"),
])
def test_malformed_bundles_are_refused(registry, change, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace("[", "\\[")):
        registry.register(dataclasses.replace(make_bundle("v1"), **change))
    assert registry.versions() == []


def _register_many(store: GovernanceStore, prefix: str, start) -> None:
    start.wait(60)
    reg = Registry(store)
    reg.register(make_bundle("shared"))
    for i in range(3):
        reg.register(make_bundle(f"{prefix}-{i}"))


def test_concurrent_register_from_two_processes(tmp_path):
    store = GovernanceStore(tmp_path / "governance.duckdb")
    assert Registry(store).versions() == []  # the store now holds its in-memory DuckDB instance...
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    # ...and is pickled to the children without it.
    procs = [ctx.Process(target=_register_many, args=(store, f"p{p}", start)) for p in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    reg = Registry(store)
    assert sorted(b.version for b in reg.versions()) == ["p0-0", "p0-1", "p0-2", "p1-0", "p1-1", "p1-2", "shared"]
    assert reg.get("shared").bundle_sha256 == make_bundle("shared").manifest_sha256()

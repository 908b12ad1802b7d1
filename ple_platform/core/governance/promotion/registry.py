"""Model registry: versions, champion history, decisions and approvals (SPEC §7).

Lives in the governance store next to the audit log (``GovernanceStore``): every write is one short DuckDB
transaction under the store's exclusive lock, so the sensor daemon, Dagster runs and the CLI can register,
decide, approve and promote concurrently without lost updates.

- ``model_versions``: one row per bundle -- the teacher, the 13 (or fewer) students with their artifact hashes,
  route (DISTILL/DIRECT) and metrics, the months it was trained/validated/tested on, feature-group content
  hashes and the Dagster run id. ``bundle_sha256`` is the SHA-256 of the canonical JSON manifest (every field
  but ``status``/``created_at``), so "the same version" means the same bytes (the reference had no artifact
  hashes in its manifest, reference-repo-ops §4.1). Registering the same bundle twice is a no-op; a different
  bundle under an existing version name is refused.
- ``decisions``: every promotion verdict (promote / reject / await_approval / bootstrap) with its reasons,
  the evidence it was computed from and the evidence's SHA-256, and the champion it was judged against.
- ``approvals``: who approved which version, when, against which evidence hash (§10 item 17: the force path
  of the reference recorded no approver and no evidence).
- ``champion_history``: each champion change (bootstrap, promotion, rollback) with the decision it executed.

Promotion is only legal through a recorded decision: ``promote(version, decision_id, kind)`` requires the
version's latest decision to be ``decision_id`` with the matching outcome, and, with
``require_approval=True``, an approval against the evidence hash of one of the version's decisions. It swaps
the champion atomically (old -> retired, new -> champion, one history row). ``rollback()`` returns to the
champion before the current one's promotion (a stack: repeated rollbacks walk further back).

The registry writes no audit entries itself: its return values (bundle hash, decision id, approval id,
whether a promotion changed anything) are what the caller appends to the audit log.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ple_platform.core.governance.audit.store import GovernanceStore, as_utc, canonical_json, utc_now
from ple_platform.core.tasks.spec import TASKS_BY_NAME

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class RegistryError(ValueError):
    """A registry request is invalid (bad bundle, unknown version, illegal promotion)."""


class UnknownVersionError(RegistryError):
    """No model version of that name is registered."""


class BundleConflictError(RegistryError):
    """A different bundle is already registered under the version name."""


class PromotionError(RegistryError):
    """A promotion or rollback is not allowed in the current state."""


class ApprovalRequiredError(PromotionError):
    """Promotion requires a human approval that has not been recorded."""


class Route(str, enum.Enum):
    DISTILL = "DISTILL"  # student trained on teacher soft targets
    DIRECT = "DIRECT"  # hard-label LightGBM: the student did not keep the teacher's edge


class ModelStatus(str, enum.Enum):
    REGISTERED = "registered"
    CHAMPION = "champion"
    RETIRED = "retired"
    REJECTED = "rejected"


class Outcome(str, enum.Enum):
    PROMOTE = "promote"
    REJECT = "reject"
    AWAIT_APPROVAL = "await_approval"
    BOOTSTRAP = "bootstrap"


class PromotionKind(str, enum.Enum):
    BOOTSTRAP = "bootstrap"
    PROMOTION = "promotion"
    ROLLBACK = "rollback"


def _parse_enum(cls: type[enum.Enum], value: object, what: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(str(e.value) for e in cls)
        raise RegistryError(f"{what} {value!r} is not one of: {allowed}") from None


@dataclass(frozen=True)
class StudentArtifact:
    uri: str
    sha256: str
    route: Route
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelBundle:
    """A registered (or to-be-registered) model version. The last three fields are set by the registry."""

    version: str
    model_month: dt.date
    teacher_uri: str
    teacher_sha256: str
    code_version: str
    train_months: tuple[dt.date, ...]
    validation_month: dt.date
    test_month: dt.date
    students: Mapping[str, StudentArtifact]
    routing: Mapping[str, Any] = field(default_factory=dict)  # per-task route decision and its numbers
    feature_hashes: Mapping[str, str] = field(default_factory=dict)  # feature group -> content hash
    run_id: str | None = None
    status: ModelStatus = ModelStatus.REGISTERED
    created_at: dt.datetime | None = None
    bundle_sha256: str | None = None

    def manifest(self) -> dict[str, Any]:
        """The hashed content: everything except status, created_at and bundle_sha256."""
        return {
            "version": self.version,
            "model_month": self.model_month.isoformat(),
            "teacher_uri": self.teacher_uri,
            "teacher_sha256": self.teacher_sha256,
            "code_version": self.code_version,
            "train_months": [m.isoformat() for m in self.train_months],
            "validation_month": self.validation_month.isoformat(),
            "test_month": self.test_month.isoformat(),
            "students": {task: {"uri": s.uri, "sha256": s.sha256, "route": Route(s.route).value,
                                "metrics": dict(s.metrics)} for task, s in self.students.items()},
            "routing": dict(self.routing),
            "feature_hashes": dict(self.feature_hashes),
            "run_id": self.run_id,
        }

    def manifest_sha256(self) -> str:
        return hashlib.sha256(canonical_json(self.manifest(), f"bundle {self.version!r}").encode()).hexdigest()

    def validate(self) -> None:
        """Raise ``RegistryError`` naming the field and the rule when the bundle is malformed."""
        v = self.version
        if not isinstance(v, str) or not _VERSION_RE.match(v):
            raise RegistryError(f"bundle version {v!r}: must match {_VERSION_RE.pattern}")
        where = f"bundle {v!r}"
        for name in ("teacher_uri", "code_version"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise RegistryError(f"{where}: {name} must be a non-empty string")
        _check_sha(self.teacher_sha256, f"{where}: teacher_sha256")
        if self.run_id is not None and (not isinstance(self.run_id, str) or not self.run_id):
            raise RegistryError(f"{where}: run_id must be a non-empty string or None")
        for name in ("model_month", "validation_month", "test_month"):
            _check_month(getattr(self, name), f"{where}: {name}")
        if not isinstance(self.train_months, (tuple, list)) or not self.train_months:
            raise RegistryError(f"{where}: train_months must be a non-empty sequence of months")
        for i, m in enumerate(self.train_months):
            _check_month(m, f"{where}: train_months[{i}]")
        if list(self.train_months) != sorted(set(self.train_months)):
            raise RegistryError(f"{where}: train_months must be strictly increasing, got "
                                f"{[m.isoformat() for m in self.train_months]}")
        if not self.train_months[-1] < self.validation_month < self.test_month:
            raise RegistryError(f"{where}: months must be ordered last train {self.train_months[-1]} < validation "
                                f"{self.validation_month} < test {self.test_month} (out-of-time split)")
        if not isinstance(self.students, Mapping) or not self.students:
            raise RegistryError(f"{where}: students must be a non-empty mapping task -> StudentArtifact")
        for task, s in self.students.items():
            if task not in TASKS_BY_NAME:
                raise RegistryError(f"{where}: students[{task!r}]: unknown task (known: {sorted(TASKS_BY_NAME)})")
            if not isinstance(s, StudentArtifact):
                raise RegistryError(f"{where}: students[{task!r}] must be a StudentArtifact, got {type(s).__name__}")
            if not isinstance(s.uri, str) or not s.uri:
                raise RegistryError(f"{where}: students[{task!r}].uri must be a non-empty string")
            _check_sha(s.sha256, f"{where}: students[{task!r}].sha256")
            _parse_enum(Route, s.route, f"{where}: students[{task!r}].route")
            if not isinstance(s.metrics, Mapping):
                raise RegistryError(f"{where}: students[{task!r}].metrics must be a mapping metric -> value")
        for name in ("routing", "feature_hashes"):
            if not isinstance(getattr(self, name), Mapping):
                raise RegistryError(f"{where}: {name} must be a mapping")
        for group, h in self.feature_hashes.items():
            if not isinstance(h, str) or not h:
                raise RegistryError(f"{where}: feature_hashes[{group!r}] must be a non-empty string")
        canonical_json(self.manifest(), where)  # JSON-serialisable metrics/routing, or a ValueError naming the key


@dataclass(frozen=True)
class Decision:
    id: int
    version: str
    champion_version: str | None  # the champion it was judged against (None before any champion)
    decided_at: dt.datetime
    outcome: Outcome
    reasons: tuple[str, ...]
    evidence: dict[str, Any]
    evidence_sha256: str


@dataclass(frozen=True)
class Approval:
    id: int
    version: str
    approver: str
    approved_at: dt.datetime
    evidence_sha256: str
    note: str


@dataclass(frozen=True)
class ChampionChange:
    seq: int
    version: str
    promoted_at: dt.datetime
    previous_version: str | None
    decision_id: int | None
    kind: PromotionKind


def _check_sha(value: object, what: str) -> None:
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise RegistryError(f"{what} must be 64 lowercase hex characters (SHA-256), got {value!r}")


def _check_month(value: object, what: str) -> None:
    if not isinstance(value, dt.date) or isinstance(value, dt.datetime) or value.day != 1:
        raise RegistryError(f"{what} must be a datetime.date on the first of a month, got {value!r}")


def evidence_sha256(evidence: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``evidence`` (what decisions record and approvers sign off)."""
    return hashlib.sha256(canonical_json(evidence, "evidence").encode()).hexdigest()


_MV_COLUMNS = ("version, created_at, model_month, teacher_uri, teacher_sha256, code_version, train_months, "
               "validation_month, test_month, students, routing, feature_hashes, run_id, bundle_sha256, status")


def _bundle_from_row(row: tuple) -> ModelBundle:
    (version, created_at, model_month, teacher_uri, teacher_sha256, code_version, train_months, validation_month,
     test_month, students, routing, feature_hashes, run_id, bundle_sha, status) = row
    return ModelBundle(
        version=version, model_month=model_month, teacher_uri=teacher_uri, teacher_sha256=teacher_sha256,
        code_version=code_version, train_months=tuple(dt.date.fromisoformat(m) for m in json.loads(train_months)),
        validation_month=validation_month, test_month=test_month,
        students={t: StudentArtifact(s["uri"], s["sha256"], Route(s["route"]), s["metrics"])
                  for t, s in json.loads(students).items()},
        routing=json.loads(routing), feature_hashes=json.loads(feature_hashes), run_id=run_id,
        status=ModelStatus(status), created_at=as_utc(created_at), bundle_sha256=bundle_sha)


def _decision_from_row(row: tuple) -> Decision:
    id_, version, champion, decided_at, outcome, reasons, evidence, ev_sha = row
    return Decision(id_, version, champion, as_utc(decided_at), Outcome(outcome), tuple(json.loads(reasons)),
                    json.loads(evidence), ev_sha)


class Registry:
    """Model versions and the champion, stored in a ``GovernanceStore``."""

    def __init__(self, store: GovernanceStore) -> None:
        self.store = store

    # -- versions ------------------------------------------------------------------------------------------

    def register(self, bundle: ModelBundle) -> str:
        """Register ``bundle`` (status ``registered``); return its ``bundle_sha256``.

        Idempotent for the same content; a different bundle under an existing version raises
        ``BundleConflictError``. A ``bundle_sha256`` set on the input must equal the recomputed one.
        """
        if not isinstance(bundle, ModelBundle):
            raise RegistryError(f"register() takes a ModelBundle, got {type(bundle).__name__}")
        bundle.validate()
        sha = bundle.manifest_sha256()
        if bundle.bundle_sha256 is not None and bundle.bundle_sha256 != sha:
            raise RegistryError(f"bundle {bundle.version!r}: bundle_sha256 {bundle.bundle_sha256} does not match its "
                                f"content ({sha}): the manifest was altered")
        m = bundle.manifest()
        with self.store.transaction() as con:
            existing = con.execute("SELECT bundle_sha256 FROM model_versions WHERE version = ?",
                                   [bundle.version]).fetchall()
            if existing:
                if existing[0][0] != sha:
                    raise BundleConflictError(
                        f"version {bundle.version!r} is already registered with bundle_sha256 {existing[0][0]}; "
                        f"this bundle hashes to {sha}: register it under a new version name")
                return sha
            con.execute(f"INSERT INTO model_versions ({_MV_COLUMNS}) VALUES ({', '.join('?' * 15)})", [
                bundle.version, utc_now(), bundle.model_month, bundle.teacher_uri, bundle.teacher_sha256,
                bundle.code_version, canonical_json(m["train_months"]), bundle.validation_month, bundle.test_month,
                canonical_json(m["students"]), canonical_json(m["routing"]), canonical_json(m["feature_hashes"]),
                bundle.run_id, sha, ModelStatus.REGISTERED.value])
        return sha

    def get(self, version: str) -> ModelBundle:
        with self.store.read() as con:
            rows = con.execute(f"SELECT {_MV_COLUMNS} FROM model_versions WHERE version = ?", [version]).fetchall()
        if not rows:
            raise UnknownVersionError(f"model version {version!r} is not registered")
        return _bundle_from_row(rows[0])

    def versions(self, status: str | ModelStatus | None = None) -> list[ModelBundle]:
        """All versions in registration order, optionally only those with ``status``."""
        sql, params = f"SELECT {_MV_COLUMNS} FROM model_versions", []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(_parse_enum(ModelStatus, status, "status").value)
        with self.store.read() as con:
            rows = con.execute(sql + " ORDER BY created_at, version", params).fetchall()
        return [_bundle_from_row(r) for r in rows]

    def champion(self) -> ModelBundle | None:
        with self.store.read() as con:
            rows = con.execute(f"SELECT {_MV_COLUMNS} FROM model_versions WHERE status = 'champion'").fetchall()
        return _bundle_from_row(rows[0]) if rows else None

    def champion_history(self) -> list[ChampionChange]:
        with self.store.read() as con:
            rows = con.execute("SELECT seq, version, promoted_at, previous_version, decision_id, kind "
                               "FROM champion_history ORDER BY seq").fetchall()
        return [ChampionChange(s, v, as_utc(at), prev, d, PromotionKind(k)) for s, v, at, prev, d, k in rows]

    # -- decisions and approvals ---------------------------------------------------------------------------

    def record_decision(self, version: str, outcome: str | Outcome, reasons: Sequence[str],
                        evidence: Mapping[str, Any]) -> int:
        """Record a promotion verdict for ``version``; return the decision id.

        ``reject`` needs at least one reason and marks a ``registered`` version ``rejected``; ``bootstrap`` is only
        valid while there is no champion.
        """
        out = _parse_enum(Outcome, outcome, "decision outcome")
        if isinstance(reasons, str) or not isinstance(reasons, Sequence) or not all(
                isinstance(r, str) and r.strip() for r in reasons):
            raise RegistryError(f"decision for {version!r}: reasons must be a list of non-empty strings, got "
                                f"{reasons!r}")
        if out is Outcome.REJECT and not reasons:
            raise RegistryError(f"decision for {version!r}: a rejection needs at least one reason")
        if not isinstance(evidence, Mapping):
            raise RegistryError(f"decision for {version!r}: evidence must be a mapping, got {type(evidence).__name__}")
        evidence_json = canonical_json(evidence, "evidence")
        ev_sha = hashlib.sha256(evidence_json.encode()).hexdigest()
        with self.store.transaction() as con:
            status = self._status(con, version)
            champion = self._champion_version(con)
            if out is Outcome.BOOTSTRAP and champion is not None:
                raise PromotionError(f"decision for {version!r}: bootstrap is only valid without a champion "
                                     f"(current champion {champion!r})")
            new_id = con.execute("SELECT coalesce(max(id), 0) + 1 FROM decisions").fetchall()[0][0]
            con.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [new_id, version, champion, utc_now(), out.value, canonical_json(list(reasons)),
                         evidence_json, ev_sha])
            if out is Outcome.REJECT and status is ModelStatus.REGISTERED:
                con.execute("UPDATE model_versions SET status = ? WHERE version = ?",
                            [ModelStatus.REJECTED.value, version])
        return new_id

    def decisions(self, version: str | None = None) -> list[Decision]:
        sql, params = "SELECT * FROM decisions", []
        if version is not None:
            sql += " WHERE version = ?"
            params.append(version)
        with self.store.read() as con:
            rows = con.execute(sql + " ORDER BY id", params).fetchall()
        return [_decision_from_row(r) for r in rows]

    def approve(self, version: str, approver: str, evidence_sha256: str, note: str = "") -> int:
        """Record that ``approver`` approved ``version`` having reviewed the evidence with that hash; return its id."""
        if not isinstance(approver, str) or not approver.strip():
            raise RegistryError(f"approval of {version!r}: approver must be a non-empty name, got {approver!r}")
        _check_sha(evidence_sha256, f"approval of {version!r}: evidence_sha256")
        if not isinstance(note, str):
            raise RegistryError(f"approval of {version!r}: note must be a string")
        with self.store.transaction() as con:
            self._status(con, version)
            new_id = con.execute("SELECT coalesce(max(id), 0) + 1 FROM approvals").fetchall()[0][0]
            con.execute("INSERT INTO approvals VALUES (?, ?, ?, ?, ?, ?)",
                        [new_id, version, approver.strip(), utc_now(), evidence_sha256, note])
        return new_id

    def approvals(self, version: str) -> list[Approval]:
        with self.store.read() as con:
            rows = con.execute("SELECT id, version, approver, approved_at, evidence_sha256, note FROM approvals "
                               "WHERE version = ? ORDER BY id", [version]).fetchall()
        return [Approval(i, v, a, as_utc(at), h, n) for i, v, a, at, h, n in rows]

    # -- champion changes ----------------------------------------------------------------------------------

    def promote(self, version: str, decision_id: int, kind: str | PromotionKind = PromotionKind.PROMOTION,
                require_approval: bool = False) -> bool:
        """Make ``version`` the champion as decided by ``decision_id``; False if it already is (no-op).

        ``kind`` is ``bootstrap`` (no champion yet; decision outcome ``bootstrap``) or ``promotion`` (a champion
        exists; outcome ``promote``). The decision must be the version's latest. With ``require_approval``, an
        approval must exist whose evidence hash is that of one of the version's decisions.
        """
        k = _parse_enum(PromotionKind, kind, "promotion kind")
        if k is PromotionKind.ROLLBACK:
            raise PromotionError("use rollback() to return to the previous champion")
        with self.store.transaction() as con:
            self._status(con, version)
            champion = self._champion_version(con)
            if champion == version:
                return False
            if k is PromotionKind.BOOTSTRAP and champion is not None:
                raise PromotionError(f"cannot bootstrap {version!r}: {champion!r} is already champion")
            if k is PromotionKind.PROMOTION and champion is None:
                raise PromotionError(f"cannot promote {version!r}: there is no champion yet (use kind='bootstrap')")
            rows = con.execute("SELECT id, outcome FROM decisions WHERE version = ? ORDER BY id DESC LIMIT 1",
                               [version]).fetchall()
            expected = Outcome.BOOTSTRAP if k is PromotionKind.BOOTSTRAP else Outcome.PROMOTE
            if not rows or rows[0][0] != decision_id:
                latest = f"latest is {rows[0][0]} ({rows[0][1]})" if rows else "none recorded"
                raise PromotionError(f"cannot promote {version!r} on decision {decision_id}: it must be the "
                                     f"version's latest decision ({latest})")
            if rows[0][1] != expected.value:
                raise PromotionError(f"cannot {k.value} {version!r}: decision {decision_id} is {rows[0][1]!r}, "
                                     f"not {expected.value!r}")
            if require_approval:
                approved = con.execute(
                    "SELECT count(*) FROM approvals a JOIN decisions d ON a.evidence_sha256 = d.evidence_sha256 "
                    "AND a.version = d.version WHERE a.version = ?", [version]).fetchall()[0][0]
                if not approved:
                    raise ApprovalRequiredError(
                        f"cannot promote {version!r}: approval required and none recorded against the evidence "
                        "hash of its decisions (ple-platform approve)")
            self._swap_champion(con, champion, version, decision_id, k)
        return True

    def rollback(self, decision_id: int | None = None) -> ModelBundle:
        """Reinstate the champion that preceded the current one's promotion; return it.

        History is a stack: bootstrap/promotion push, rollback pops, so rolling back twice from C (after A->B->C)
        gives A. The rolled-back version becomes ``retired``.
        """
        with self.store.transaction() as con:
            champion = self._champion_version(con)
            if champion is None:
                raise PromotionError("cannot roll back: there is no champion")
            if decision_id is not None and not con.execute("SELECT 1 FROM decisions WHERE id = ?",
                                                           [decision_id]).fetchall():
                raise PromotionError(f"cannot roll back: decision {decision_id} does not exist")
            stack: list[str] = []
            for version, kind in con.execute("SELECT version, kind FROM champion_history ORDER BY seq").fetchall():
                if kind == PromotionKind.ROLLBACK.value:
                    stack.pop()
                else:
                    stack.append(version)
            if len(stack) < 2:
                raise PromotionError(f"cannot roll back {champion!r}: no earlier champion to return to")
            target = stack[-2]
            self._swap_champion(con, champion, target, decision_id, PromotionKind.ROLLBACK)
        return self.get(target)

    # -- internals (inside a transaction) ------------------------------------------------------------------

    @staticmethod
    def _status(con: Any, version: str) -> ModelStatus:
        rows = con.execute("SELECT status FROM model_versions WHERE version = ?", [version]).fetchall()
        if not rows:
            raise UnknownVersionError(f"model version {version!r} is not registered")
        return ModelStatus(rows[0][0])

    @staticmethod
    def _champion_version(con: Any) -> str | None:
        rows = con.execute("SELECT version FROM model_versions WHERE status = 'champion'").fetchall()
        return rows[0][0] if rows else None

    @staticmethod
    def _swap_champion(con: Any, old: str | None, new: str, decision_id: int | None, kind: PromotionKind) -> None:
        if old is not None:
            con.execute("UPDATE model_versions SET status = ? WHERE version = ?", [ModelStatus.RETIRED.value, old])
        con.execute("UPDATE model_versions SET status = ? WHERE version = ?", [ModelStatus.CHAMPION.value, new])
        seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM champion_history").fetchall()[0][0]
        con.execute("INSERT INTO champion_history VALUES (?, ?, ?, ?, ?, ?)",
                    [seq, new, utc_now(), old, decision_id, kind.value])


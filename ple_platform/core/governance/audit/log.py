"""Tamper-evident audit log: one HMAC-SHA256 hash chain for every process (SPEC §8).

Each entry is a row of ``audit_log(seq, ts, actor, event, subject, payload, prev_hash, hash)`` with

    hash = HMAC-SHA256(key, canonical_json({seq, ts, actor, event, subject, payload, prev_hash}))

where ``payload`` is the stored canonical JSON text, ``ts`` the UTC time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` and
``prev_hash`` the previous entry's hash (64 zeros for entry 1). ``seq`` is contiguous from 1.

Single sequencer (the reference reset its chain per logger instance, reference-repo-ops §10 item 20): an
append runs inside ``GovernanceStore.transaction()``, i.e. under the store's exclusive file lock, reads the
current head and writes the next row plus the new head in one DuckDB transaction. Dagster runs, the sensor,
the CLI and the serving API therefore extend one chain, whatever process they run in.

Truncation: a chain alone cannot show that its last rows were deleted. ``audit_head(id=1, seq, hash, mac)``
is updated in the same transaction as each append and carries ``mac = HMAC(key, {head, seq, hash})``;
``verify`` checks that the head matches the last row. Deleting the tail *and* rewriting the head consistently
needs the key.

Anchor: the head is also kept outside the table, in the sidecar file ``<db>.head`` (``{seq, hash, mac}``, MAC'd
with the key, rewritten after each append). ``verify`` fails when the store file is missing while the anchor
exists, when the table holds fewer entries than the anchor (emptied, truncated, rolled back to an older copy) or
when the anchored entry's hash differs (store replaced). A store file that does not exist is reported as "no
audit log" and never created by ``verify``. Limit: deleting the anchor file *and* emptying or rolling back the
store together is not detectable from the governance folder alone; a store with entries but no anchor (written
before anchors existed) verifies and gets its anchor on the next append.

Appends fail closed (``AuditIntegrityError``) when the head is missing for a non-empty log, its MAC does not
verify with this key, it disagrees with the last row, the anchor is forged or ahead of the table, or an entry
since the anchor does not verify (incremental: only the entries after the last anchored one are recomputed, so
an append stays O(1)), and before an ``AuditLog``'s first append the whole chain must verify (a break in the
middle included; once per ``AuditLog`` instance); extending a broken or foreign chain would hide the break. Verification is read in pages under short shared locks, so it never blocks writers for long.

Key: ``PLE_AUDIT_KEY``. Without it, ``PLE_ENV=prod`` refuses to run (``MissingSecretError``); elsewhere the
documented ``DEV_AUDIT_KEY`` is used -- for the demo and tests only, anyone can forge entries with it.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ple_platform.core.secrets import AUDIT_KEY_ENV_VAR, DEV_AUDIT_KEY, MissingSecretError, audit_key_material
from ple_platform.core.governance.audit.store import (GovernanceStore, StoreSession, as_utc, canonical_json,
                                                      utc_now)

GENESIS_HASH = "0" * 64
_HEAD_ID = 1
_PAGE_SIZE = 10_000


class AuditEvent(str, enum.Enum):
    """What an entry records. The value is the string stored in ``audit_log.event``."""

    INGEST = "ingest"
    FEATURE_FIT = "feature_fit"
    TRAINING = "training"
    EVALUATION = "evaluation"
    STUDENT = "student"
    REGISTRATION = "registration"
    APPROVAL = "approval"
    PROMOTION = "promotion"
    REJECTION = "rejection"
    REPORT = "report"
    RECOMMENDATION = "recommendation"
    SERVED = "served_recommendation"  # one online response of `ple-platform serve`
    SERVING = "serving"  # serving control: reload, failed reload, kill switch, refused request
    REASON_REWRITE = "reason_rewrite"  # one gate verdict of the monthly batch rewrite (L2 or L1 with the reason)

    @classmethod
    def parse(cls, event: str | AuditEvent) -> AuditEvent:
        try:
            return cls(event)
        except ValueError:
            allowed = ", ".join(e.value for e in cls)
            raise AuditLogError(f"unknown audit event {event!r}; expected one of: {allowed}") from None


class AuditLogError(ValueError):
    """Bad input to the audit log (unknown event, empty subject/actor, non-JSON payload, bad key)."""


class AuditIntegrityError(RuntimeError):
    """The stored chain is inconsistent, so appending to it is refused; ``verify()`` says where."""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: dt.datetime  # timezone-aware UTC
    actor: str
    event: AuditEvent
    subject: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    n_entries: int  # rows in the log when verification started
    first_broken_seq: int | None  # None when intact, or when only the head row itself is at fault
    reason: str


def audit_key(environ: Mapping[str, str] | None = None) -> bytes:
    """The audit HMAC key from ``PLE_AUDIT_KEY``; ``DEV_AUDIT_KEY`` outside production (rules: core/secrets.py)."""
    return audit_key_material(environ).value


def _ts_text(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(key: bytes, seq: int, ts: dt.datetime, actor: str, event: str, subject: str, payload_json: str,
               prev_hash: str) -> str:
    """HMAC-SHA256 of an entry's canonical form (``ts`` naive UTC, ``payload_json`` the stored text)."""
    message = canonical_json({"seq": seq, "ts": _ts_text(ts), "actor": actor, "event": event, "subject": subject,
                              "payload": payload_json, "prev_hash": prev_hash})
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def anchor_mac(key: bytes, seq: int, last_hash: str) -> str:
    """MAC of the sidecar anchor (domain-separated from the head row and the entries)."""
    message = canonical_json({"anchor": str(_HEAD_ID), "seq": seq, "hash": last_hash})
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def head_mac(key: bytes, seq: int, last_hash: str) -> str:
    """MAC of the head row (domain-separated from entry hashes by the ``head`` field)."""
    message = canonical_json({"head": _HEAD_ID, "seq": seq, "hash": last_hash})
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _require_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AuditLogError(f"audit {what} must be a non-empty string, got {value!r}")
    return value


class AuditLog:
    """Append to, query and verify the audit chain stored in ``store``."""

    def __init__(self, store: GovernanceStore, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise AuditLogError("audit key must be non-empty bytes (see audit_key())")
        self.store = store
        self._key = bytes(key)
        self._chain_checked = False  # the whole chain is verified before this instance's first append

    @property
    def anchor_path(self) -> Path:
        """The sidecar file anchoring the head outside the store (``<db>.head``)."""
        return self.store.path.with_name(self.store.path.name + ".head")

    def _read_anchor(self) -> tuple[int, str, bool] | None:
        """(seq, hash, MAC valid) of the anchor file, or None when there is none."""
        try:
            doc = json.loads(self.anchor_path.read_text(encoding="utf-8"))
            seq, last_hash, mac = int(doc["seq"]), str(doc["hash"]), str(doc["mac"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return (0, GENESIS_HASH, False)  # unreadable: as good as forged
        return seq, last_hash, hmac.compare_digest(mac, anchor_mac(self._key, seq, last_hash))

    def _check_chain_once(self) -> None:
        """Before this instance's first append: the whole chain must verify (a break in the middle included).
        Later appends check incrementally from the anchor (``_current_head``), so a long-lived writer (the
        serving API) pays the full pass once; a Dagster step's short-lived instance once per step."""
        if self._chain_checked:
            return
        if self.store.path.exists():
            result = self.verify()
            if not result.ok:
                raise AuditIntegrityError(f"audit log does not verify ({result.reason}): refusing to append "
                                          "(run `ple-platform audit verify`)")
        self._chain_checked = True

    def _write_anchor(self, seq: int, last_hash: str) -> None:
        # Written after the commit, never before: an anchor behind the table (a crash in between, or two writers
        # finishing out of order) verifies; one ahead of it would read as a truncated log.
        tmp = self.anchor_path.with_name(f"{self.anchor_path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"seq": seq, "hash": last_hash, "mac": anchor_mac(self._key, seq, last_hash)}))
        os.replace(tmp, self.anchor_path)

    def append(self, event: str | AuditEvent, subject: str, payload: Mapping[str, Any],
               actor: str = "system") -> AuditEntry:
        """Append one entry and return it. ``payload`` must be JSON-serialisable (numpy scalars are converted)."""
        ev = AuditEvent.parse(event)
        _require_text(subject, "subject")
        _require_text(actor, "actor")
        if not isinstance(payload, Mapping):
            raise AuditLogError(f"audit payload must be a mapping, got {type(payload).__name__}")
        payload_json = canonical_json(payload, "payload")  # raises CanonicalJSONError (a ValueError) naming the key
        self._check_chain_once()
        with self.store.transaction() as con:
            prev_seq, prev_hash = self._current_head(con)
            seq, ts = prev_seq + 1, utc_now()
            h = entry_hash(self._key, seq, ts, actor, ev.value, subject, payload_json, prev_hash)
            con.execute("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [seq, ts, actor, ev.value, subject, payload_json, prev_hash, h])
            con.execute("INSERT OR REPLACE INTO audit_head VALUES (?, ?, ?, ?)",
                        [_HEAD_ID, seq, h, head_mac(self._key, seq, h)])
        self._write_anchor(seq, h)
        return AuditEntry(seq, as_utc(ts), actor, ev, subject, json.loads(payload_json), prev_hash, h)

    def append_many(self, items: Sequence[tuple[str | AuditEvent, str, Mapping[str, Any], str]]) -> list[AuditEntry]:
        """Append ``(event, subject, payload, actor)`` items in order as consecutive entries of one transaction
        (group commit: one lock and one commit for many entries, e.g. a batch of served responses). All or
        nothing: a bad item rejects the whole group before anything is written."""
        prepared = self._prepare(items)
        if not prepared:
            return []
        self._check_chain_once()
        with self.store.transaction() as con:
            out = self._insert(con, self._current_head(con), prepared)
        self._write_anchor(out[-1].seq, out[-1].hash)
        return out

    @contextmanager
    def writer(self) -> Iterator[ChainWriter]:
        """A long-lived appender holding the store's ``session()`` (exclusive lock and attachment): its
        ``append_many`` is one commit per group, with the head read and checked once per session. Close it
        when idle: nobody else can write or read the store while it is open."""
        self._check_chain_once()  # before the session: verify() reads the store
        with self.store.session() as session:
            yield ChainWriter(self, session)

    def _prepare(self, items: Sequence[tuple[str | AuditEvent, str, Mapping[str, Any], str]]) -> list[tuple]:
        prepared = []
        for event, subject, payload, actor in items:
            ev = AuditEvent.parse(event)
            _require_text(subject, "subject")
            _require_text(actor, "actor")
            if not isinstance(payload, Mapping):
                raise AuditLogError(f"audit payload must be a mapping, got {type(payload).__name__}")
            prepared.append((ev, subject, canonical_json(payload, "payload"), actor))
        return prepared

    def _insert(self, con: Any, head: tuple[int, str], prepared: list[tuple]) -> list[AuditEntry]:
        """Write ``prepared`` items after ``head`` (seq, hash) and move the head, inside the caller's
        transaction. One multi-row INSERT: DuckDB's ``executemany`` costs a statement per row."""
        seq, prev_hash = head
        rows, out = [], []
        for ev, subject, payload_json, actor in prepared:
            seq, ts = seq + 1, utc_now()
            h = entry_hash(self._key, seq, ts, actor, ev.value, subject, payload_json, prev_hash)
            rows.extend((seq, ts, actor, ev.value, subject, payload_json, prev_hash, h))
            out.append(AuditEntry(seq, as_utc(ts), actor, ev, subject, json.loads(payload_json), prev_hash, h))
            prev_hash = h
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(out))
        con.execute(f"INSERT INTO audit_log VALUES {values}", rows)
        mac = head_mac(self._key, seq, prev_hash)
        # UPDATE of the one head row is ~3x cheaper in DuckDB than INSERT OR REPLACE; the first entry creates it.
        updated = con.execute("UPDATE audit_head SET seq = ?, hash = ?, mac = ? WHERE id = ?",
                              [seq, prev_hash, mac, _HEAD_ID]).fetchone()[0]
        if not updated:
            con.execute("INSERT INTO audit_head VALUES (?, ?, ?, ?)", [_HEAD_ID, seq, prev_hash, mac])
        return out

    def entries(self, event: str | AuditEvent | None = None, subject: str | None = None) -> list[AuditEntry]:
        """Entries in seq order, optionally only one event type and/or one subject."""
        where, params = [], []
        if event is not None:
            where.append("event = ?")
            params.append(AuditEvent.parse(event).value)
        if subject is not None:
            where.append("subject = ?")
            params.append(subject)
        sql = "SELECT seq, ts, actor, event, subject, payload, prev_hash, hash FROM audit_log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.store.read() as con:
            rows = con.execute(sql + " ORDER BY seq", params).fetchall()
        return [AuditEntry(seq, as_utc(ts), actor, AuditEvent(ev), subj, json.loads(payload), prev, h)
                for seq, ts, actor, ev, subj, payload, prev, h in rows]

    def verify(self, page_size: int = _PAGE_SIZE) -> VerifyResult:
        """Recompute the chain and check the head; stop at the first break and say where and why."""
        if page_size < 1:
            raise AuditLogError(f"page_size must be >= 1, got {page_size}")
        anchor = self._read_anchor()
        if not self.store.path.exists():  # never create a store here: a wrong path must not verify
            if anchor is not None:
                return VerifyResult(False, 0, None, f"audit store {self.store.path} is missing, but its anchor "
                                                    f"records {anchor[0]} entries (file deleted or moved)")
            return VerifyResult(False, 0, None, f"no audit log at {self.store.path}: the file does not exist "
                                                "(nothing recorded yet, or a wrong PLE_GOVERNANCE_DB)")
        with self.store.read() as con:
            head = con.execute("SELECT seq, hash, mac FROM audit_head WHERE id = ?", [_HEAD_ID]).fetchall()
            n_rows, max_seq = con.execute("SELECT count(*), coalesce(max(seq), 0) FROM audit_log").fetchall()[0]
        head_row = head[0] if head else None
        head_ok = head_row is not None and hmac.compare_digest(head_row[2], head_mac(self._key, head_row[0],
                                                                                     head_row[1]))

        def fail(seq: int | None, reason: str) -> VerifyResult:
            return VerifyResult(False, n_rows, seq, reason)

        prev_seq, prev_hash = 0, GENESIS_HASH
        hash_at_anchor = None  # the stored hash of the anchored entry, seen on the way
        while True:
            # Rows above the snapshot's max_seq were appended after verification started: not ours to judge.
            with self.store.read() as con:
                page = con.execute(
                    "SELECT seq, ts, actor, event, subject, payload, prev_hash, hash FROM audit_log "
                    "WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?", [prev_seq, max_seq, page_size]).fetchall()
            if not page:
                break
            for seq, ts, actor, event, subject, payload, stored_prev, stored_hash in page:
                expected = prev_seq + 1
                if seq != expected:
                    return fail(expected, f"entry {expected}: missing (the next stored entry is {seq}; "
                                          "row deleted or its seq edited)")
                if stored_prev != prev_hash:
                    before = "the genesis hash" if seq == 1 else f"entry {seq - 1}'s hash"
                    return fail(seq, f"entry {seq}: prev_hash does not match {before} "
                                     "(row deleted, inserted, reordered or prev_hash edited)")
                recomputed = entry_hash(self._key, seq, ts, actor, event, subject, payload, stored_prev)
                if not hmac.compare_digest(recomputed, stored_hash):
                    if seq == 1 and head_row is not None and not head_ok:
                        return fail(1, "entry 1: hash mismatch and audit head MAC mismatch "
                                       "(wrong audit key, or the whole log was rewritten)")
                    return fail(seq, f"entry {seq}: hash mismatch (row edited)")
                prev_seq, prev_hash = seq, stored_hash
                if anchor is not None and seq == anchor[0]:
                    hash_at_anchor = stored_hash
        # prev_seq == max_seq here: every seq 1..max_seq was present (a gap returned above).
        anchored = self._anchor_failure(anchor, max_seq, hash_at_anchor)
        if head_row is None:
            if max_seq == 0:
                if anchored is not None:
                    return fail(None, anchored)
                return VerifyResult(True, 0, None, "audit log empty (no entries recorded yet)")
            return fail(None, f"audit head missing while the log has {max_seq} entries (head row deleted)")
        if not head_ok:
            return fail(None, "audit head: MAC mismatch (head row edited, or a different key)")
        head_seq, head_hash = head_row[0], head_row[1]
        if head_seq > max_seq:
            return fail(max_seq + 1, f"entry {max_seq + 1}: missing at the tail (the head records {head_seq} "
                                     f"entries, the log ends at {max_seq}; rows deleted)")
        if head_seq < max_seq:
            return fail(head_seq + 1, f"entry {head_seq + 1}: beyond the head (the head records {head_seq} "
                                      "entries; rows added without the key)")
        if head_hash != prev_hash:
            return fail(head_seq, f"entry {head_seq}: hash differs from the head's (last row replaced)")
        if anchored is not None:
            return fail(None, anchored)
        return VerifyResult(True, n_rows, None, f"{n_rows} entries, chain and head verified")

    def _anchor_failure(self, anchor: tuple[int, str, bool] | None, max_seq: int,
                        hash_at_anchor: str | None) -> str | None:
        """Why the table disagrees with the anchor file (None when it agrees or there is no anchor)."""
        if anchor is None:
            return None
        seq, anchored_hash, mac_ok = anchor
        if not mac_ok:
            return f"audit anchor {self.anchor_path.name}: MAC mismatch (anchor forged or edited, or a different key)"
        if seq > max_seq:
            what = "emptied" if max_seq == 0 else "truncated or rolled back to an older copy"
            return (f"audit log {what}: the anchor records {seq} entries, the store holds {max_seq}")
        if seq and hash_at_anchor != anchored_hash:
            return f"entry {seq}: hash differs from the anchored one (store replaced)"
        return None

    def _verify_since_anchor(self, con: Any, head_seq: int) -> None:
        """Recompute the entries from the anchored one to the head; raise AuditIntegrityError on a break."""
        anchor = self._read_anchor()
        if anchor is None:
            return
        seq, anchored_hash, mac_ok = anchor
        problem = None if mac_ok else "the anchor file's MAC does not verify (forged, edited or another key)"
        if problem is None and seq > head_seq:
            problem = f"the anchor records {seq} entries, the store holds {head_seq} (emptied or rolled back)"
        if problem is None and seq:
            rows = con.execute("SELECT seq, ts, actor, event, subject, payload, prev_hash, hash FROM audit_log "
                               "WHERE seq >= ? ORDER BY seq", [seq]).fetchall()
            prev = anchored_hash
            for i, (s, ts, actor, event, subject, payload, stored_prev, stored_hash) in enumerate(rows):
                linked = stored_hash == anchored_hash if i == 0 else stored_prev == prev
                ok = s == seq + i and linked and hmac.compare_digest(
                    stored_hash, entry_hash(self._key, s, ts, actor, event, subject, payload, stored_prev))
                if not ok:
                    problem = f"entry {s} does not verify against the chain anchored at entry {seq}"
                    break
                prev = stored_hash
        if problem:
            raise AuditIntegrityError(f"audit log: {problem}: refusing to append (run `ple-platform audit verify`)")

    def _current_head(self, con: Any) -> tuple[int, str]:
        """(seq, hash) of the last entry from the head row, cross-checked with the last row.

        Raises ``AuditIntegrityError`` rather than extend a chain whose head is missing, forged, written with
        another key or out of step with the table.
        """
        head = con.execute("SELECT seq, hash, mac FROM audit_head WHERE id = ?", [_HEAD_ID]).fetchall()
        if not head:
            n = con.execute("SELECT count(*) FROM audit_log").fetchall()[0][0]
            if n:
                raise AuditIntegrityError(f"audit head missing while the log has {n} entries: refusing to append "
                                          "(run `ple-platform audit verify`)")
            self._verify_since_anchor(con, 0)
            return 0, GENESIS_HASH
        seq, last_hash, mac = head[0]
        if not hmac.compare_digest(mac, head_mac(self._key, seq, last_hash)):
            raise AuditIntegrityError("audit head MAC does not verify with this key (wrong PLE_AUDIT_KEY, or the "
                                      "head was edited): refusing to append")
        tail = con.execute("SELECT seq, hash FROM audit_log WHERE seq >= ? ORDER BY seq LIMIT 2", [seq]).fetchall()
        if tail != [(seq, last_hash)]:
            raise AuditIntegrityError(f"audit head (seq {seq}) disagrees with the stored rows {tail}: refusing to "
                                      "append (run `ple-platform audit verify`)")
        self._verify_since_anchor(con, seq)
        return seq, last_hash


class ChainWriter:
    """Appends of one ``AuditLog.writer()`` session; not thread-safe (one writer thread owns it)."""

    def __init__(self, log: AuditLog, session: StoreSession) -> None:
        self._log, self._session = log, session
        self._head: tuple[int, str] | None = None

    def append_many(self, items: Sequence[tuple[str | AuditEvent, str, Mapping[str, Any], str]]) -> list[AuditEntry]:
        """As ``AuditLog.append_many``, committed on the held connection; durable when it returns."""
        prepared = self._log._prepare(items)
        if not prepared:
            return []
        try:
            with self._session.transaction() as con:
                # The exclusive lock is held for the whole session, so the head checked at its first
                # transaction cannot move under us; after a failed commit it is read and checked again.
                out = self._log._insert(con, self._head or self._log._current_head(con), prepared)
        except BaseException:
            self._head = None
            raise
        self._head = (out[-1].seq, out[-1].hash)
        self._log._write_anchor(*self._head)
        return out


def verify_text(result: VerifyResult) -> str:
    """One line for ``ple-platform audit verify`` (which exits 1 when ``result.ok`` is false)."""
    if result.ok:
        return f"audit log OK: {result.reason}"
    return f"audit log FAILED ({result.n_entries} entries): {result.reason}"

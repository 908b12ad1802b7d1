"""Audit log: HMAC chain, tamper detection, the head row, one sequencer across processes and threads."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import hmac
import json
import multiprocessing
import os
import threading
import time

import duckdb
import numpy as np
import pytest

from ple_platform.core.governance.audit.log import (
    DEV_AUDIT_KEY,
    GENESIS_HASH,
    AuditEvent,
    AuditIntegrityError,
    AuditLog,
    AuditLogError,
    VerifyResult,
    audit_key,
    verify_text,
)
from ple_platform.core.governance.audit.pseudonymise import MissingSecretError
from ple_platform.core.governance.audit.store import (
    CanonicalJSONError,
    GovernanceLockTimeout,
    GovernanceStore,
    GovernanceStoreError,
)

KEY = b"test-audit-key"


@pytest.fixture
def store(tmp_path) -> GovernanceStore:
    return GovernanceStore(tmp_path / "not-yet-created" / "governance.duckdb")


def _filled(store: GovernanceStore, n: int = 5) -> AuditLog:
    log = AuditLog(store, KEY)
    events = list(AuditEvent)
    for i in range(n):
        log.append(events[i % len(events)], f"subject-{i}", {"i": i, "metrics": {"auc": 0.5 + i / 100}})
    return log


def _raw(store: GovernanceStore, sql: str) -> None:
    """Tamper with the file directly, as an attacker with file access but without the key would."""
    with duckdb.connect(str(store.path)) as con:
        con.execute(sql)


def test_chain_of_entries_verifies_and_matches_hand_computed_hmac(store):
    log = _filled(store, 8)
    result = log.verify(page_size=3)  # several pages
    assert result == VerifyResult(True, 8, None, "8 entries, chain and head verified")
    entries = log.entries()
    assert [e.seq for e in entries] == list(range(1, 9))
    assert entries[0].prev_hash == GENESIS_HASH == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:]))
    # Entry 1 recomputed here from the documented formula, independently of the module's helpers.
    e = entries[0]
    ts = e.ts.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    message = json.dumps({"seq": 1, "ts": ts, "actor": "system", "event": "ingest", "subject": "subject-0",
                          "payload": '{"i":0,"metrics":{"auc":0.5}}', "prev_hash": "0" * 64},
                         sort_keys=True, separators=(",", ":"))
    assert e.hash == hmac.new(KEY, message.encode(), hashlib.sha256).hexdigest()
    assert e.payload == {"i": 0, "metrics": {"auc": 0.5}}
    assert e.ts.tzinfo is not None
    assert verify_text(result) == "audit log OK: 8 entries, chain and head verified"


@pytest.mark.parametrize(("column", "new_value", "rule"), [
    ("ts", "ts + INTERVAL 1 SECOND", "hash mismatch"),
    ("actor", "'mallory'", "hash mismatch"),
    ("event", "'report'", "hash mismatch"),
    ("subject", "'other-subject'", "hash mismatch"),
    ("payload", "'{\"i\":99}'", "hash mismatch"),
    ("prev_hash", "repeat('a', 64)", "prev_hash does not match entry 2"),
    ("hash", "repeat('b', 64)", "hash mismatch"),
])
def test_editing_any_column_of_a_middle_row_is_detected(store, column, new_value, rule):
    log = _filled(store, 5)
    _raw(store, f"UPDATE audit_log SET {column} = {new_value} WHERE seq = 3")
    result = log.verify()
    assert not result.ok
    assert result.first_broken_seq == 3
    assert result.reason.startswith("entry 3: ") and rule in result.reason
    assert verify_text(result).startswith("audit log FAILED (5 entries): entry 3: ")


def test_deleting_a_middle_row_is_detected(store):
    log = _filled(store, 5)
    _raw(store, "DELETE FROM audit_log WHERE seq = 3")
    result = log.verify()
    assert (result.ok, result.first_broken_seq, result.n_entries) == (False, 3, 4)
    assert result.reason.startswith("entry 3: missing")


def test_editing_seq_is_detected_as_a_gap(store):
    log = _filled(store, 5)
    _raw(store, "UPDATE audit_log SET seq = 1000 WHERE seq = 2")
    result = log.verify()
    assert (result.ok, result.first_broken_seq) == (False, 2)


def test_reordering_rows_is_detected(store):
    log = _filled(store, 5)
    cols = ["ts", "actor", "event", "subject", "payload", "prev_hash", "hash"]
    sets = ", ".join(f"{c} = o.{c}" for c in cols)
    # Swap the contents of entries 2 and 3 (seq kept): each row is self-consistent, the links are not.
    _raw(store, f"UPDATE audit_log SET {sets} FROM (SELECT * FROM audit_log WHERE seq IN (2, 3)) o "
                "WHERE audit_log.seq IN (2, 3) AND o.seq = 5 - audit_log.seq")
    result = log.verify()
    assert (result.ok, result.first_broken_seq) == (False, 2)
    assert "prev_hash does not match entry 1" in result.reason


def test_deleting_the_last_row_is_caught_by_the_head(store):
    log = _filled(store, 5)
    _raw(store, "DELETE FROM audit_log WHERE seq = 5")
    result = log.verify()
    assert (result.ok, result.first_broken_seq) == (False, 5)
    assert "missing at the tail" in result.reason and "head records 5" in result.reason
    # Appending on a truncated chain is refused rather than hiding the break.
    with pytest.raises(AuditIntegrityError, match="disagrees"):
        log.append("report", "x", {})


def test_a_head_rewritten_without_the_key_is_caught(store):
    log = _filled(store, 5)
    # Truncate and move the head back consistently -- except for the MAC, which needs the key.
    _raw(store, "DELETE FROM audit_log WHERE seq = 5; "
                "UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit_log WHERE seq = 4)")
    result = log.verify()
    assert (result.ok, result.first_broken_seq) == (False, None)
    assert result.reason == "audit head: MAC mismatch (head row edited, or a different key)"


def test_a_deleted_head_is_caught_and_blocks_appends(store):
    log = _filled(store, 3)
    _raw(store, "DELETE FROM audit_head")
    assert "head missing" in log.verify().reason
    with pytest.raises(AuditIntegrityError, match="head missing"):
        log.append("report", "x", {})


def test_a_wrong_key_fails_verification_and_appends(store):
    _filled(store, 3)
    other = AuditLog(store, b"not-the-key")
    result = other.verify()
    assert (result.ok, result.first_broken_seq) == (False, 1)
    assert "wrong audit key" in result.reason
    with pytest.raises(AuditIntegrityError, match="MAC"):
        other.append("report", "x", {})


def test_empty_log_verifies(store):
    with store.transaction():  # the store exists (e.g. the registry created it) but nothing was audited yet
        pass
    assert AuditLog(store, KEY).verify() == VerifyResult(True, 0, None, "audit log empty (no entries recorded yet)")


def _append_many(path: str, key: bytes, writer: str, n: int, start) -> None:
    start.wait(60)
    log = AuditLog(GovernanceStore(path), key)
    for i in range(n):
        log.append("recommendation", writer, {"i": i})


def test_concurrent_writers_share_one_contiguous_chain(tmp_path):
    path = str(tmp_path / "governance.duckdb")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_append_many, args=(path, KEY, f"proc-{p}", 25, start)) for p in range(4)]
    threads = [threading.Thread(target=_append_many, args=(path, KEY, f"thread-{t}", 10, start)) for t in range(2)]
    for w in procs + threads:
        w.start()
    start.set()
    for t in threads:
        t.join(120)
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    log = AuditLog(GovernanceStore(path), KEY)
    entries = log.entries()
    assert [e.seq for e in entries] == list(range(1, 121))
    for writer, n in [*((f"proc-{p}", 25) for p in range(4)), ("thread-0", 10), ("thread-1", 10)]:
        # Each writer's entries are all there, in its own order.
        assert [e.payload["i"] for e in log.entries(event="recommendation", subject=writer)] == list(range(n))
    result = log.verify()
    assert result.ok and result.n_entries == 120, result.reason


def test_audit_key_from_environment():
    assert audit_key({"PLE_AUDIT_KEY": "s3cret" * 6, "PLE_ENV": "prod"}) == b"s3cret" * 6
    assert audit_key({}) == DEV_AUDIT_KEY
    assert audit_key({"PLE_ENV": "dev"}) == DEV_AUDIT_KEY
    with pytest.raises(MissingSecretError, match="PLE_AUDIT_KEY is not set"):
        audit_key({"PLE_ENV": "prod"})
    with pytest.raises(MissingSecretError, match="published development audit key"):
        audit_key({"PLE_ENV": "prod", "PLE_AUDIT_KEY": DEV_AUDIT_KEY.decode()})


def test_dev_default_key_writes_a_verifiable_log(store):
    log = AuditLog(store, audit_key({}))
    log.append(AuditEvent.PROMOTION, "v1", {"decision_id": 1}, actor="sensor")
    assert log.verify().ok
    assert log.entries()[0].actor == "sensor"


def test_payload_numpy_values_are_converted(store):
    log = AuditLog(store, KEY)
    e = log.append("evaluation", "v1", {"auc": np.float32(0.25), "n": np.int64(7), "ok": np.bool_(True),
                                        "per_task": np.array([1, 2]), "month": dt.date(2015, 5, 1)})
    assert e.payload == {"auc": 0.25, "n": 7, "ok": True, "per_task": [1, 2], "month": "2015-05-01"}
    assert log.entries(subject="v1")[0].payload == e.payload
    assert log.verify().ok


@pytest.mark.parametrize(("payload", "where"), [
    ({"model": {"obj": object()}}, "payload['model']['obj']"),
    ({"metrics": [1.0, float("nan")]}, "payload['metrics'][1]"),
    ({"per_task": {3: 1.0}}, "payload['per_task']: key 3"),
])
def test_non_json_payload_is_refused_naming_the_key(store, payload, where):
    log = AuditLog(store, KEY)
    with pytest.raises(CanonicalJSONError) as err:
        log.append("report", "r", payload)
    assert isinstance(err.value, ValueError) and str(err.value).startswith(where)
    assert log.entries() == []  # nothing written


def test_bad_event_subject_or_actor_is_refused(store):
    log = AuditLog(store, KEY)
    with pytest.raises(AuditLogError, match="unknown audit event 'deploy'; expected one of: ingest"):
        log.append("deploy", "x", {})
    with pytest.raises(AuditLogError, match="subject"):
        log.append("report", "", {})
    with pytest.raises(AuditLogError, match="actor"):
        log.append("report", "x", {}, actor=" ")
    with pytest.raises(AuditLogError, match="unknown audit event"):
        log.entries(event="nope")
    with pytest.raises(AuditLogError, match="key"):
        AuditLog(store, b"")


def test_entries_filter_by_event_and_subject(store):
    n = len(AuditEvent)
    log = _filled(store, n + 2)  # one entry per event type, then ingest and feature_fit a second time
    assert [e.seq for e in log.entries(event="ingest")] == [1, n + 1]
    assert [e.seq for e in log.entries(event=AuditEvent.FEATURE_FIT, subject=f"subject-{n + 1}")] == [n + 2]
    assert log.entries(subject="nobody") == []


def test_store_transaction_rolls_back_on_error(store):
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction() as con:
            con.execute("INSERT INTO approvals VALUES (1, 'v', 'a', now()::TIMESTAMP, 'h', '')")
            raise RuntimeError("boom")
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM approvals").fetchall() == [(0,)]


def test_store_refuses_nested_transactions(store):
    with store.transaction():
        with pytest.raises(GovernanceStoreError, match="nested"):
            with store.transaction():
                pass


def test_store_lock_times_out_when_another_holder_keeps_it(store):
    AuditLog(store, KEY).append("report", "r", {})
    fd = os.open(store.lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a separate open file: conflicts like another process would
        impatient = GovernanceStore(store.path, lock_timeout_s=0.2)
        with pytest.raises(GovernanceLockTimeout, match="still held"):
            AuditLog(impatient, KEY).append("report", "r", {})
    finally:
        os.close(fd)
    assert AuditLog(store, KEY).verify().n_entries == 1


def test_append_many_group_commits_one_contiguous_chain(store):
    log = _filled(store, 2)
    items = [(AuditEvent.SERVED, f"request/{i}", {"i": i}, "serving") for i in range(300)]
    out = log.append_many(items)
    assert [e.seq for e in out] == list(range(3, 303))
    assert out[0].prev_hash == log.entries()[1].hash and out[-1].prev_hash == out[-2].hash
    assert log.verify().ok and log.verify().n_entries == 302
    log.append(AuditEvent.REPORT, "after", {})  # the head moved with the group: single appends continue it
    assert log.verify().ok and log.entries()[-1].seq == 303
    assert log.append_many([]) == []


def test_append_many_is_all_or_nothing(store):
    log = _filled(store, 1)
    with pytest.raises(AuditLogError, match="unknown audit event"):
        log.append_many([(AuditEvent.SERVED, "ok", {}, "serving"), ("nonsense", "bad", {}, "serving")])
    with pytest.raises(CanonicalJSONError):
        log.append_many([(AuditEvent.SERVED, "ok", {}, "serving"), (AuditEvent.SERVED, "bad", {"x": object()}, "s")])
    assert len(log.entries()) == 1 and log.verify().ok


def test_a_writer_session_commits_durable_groups_and_holds_the_store_until_closed(store):
    log = _filled(store, 2)
    impatient = AuditLog(GovernanceStore(store.path, lock_timeout_s=0.2), KEY)
    with log.writer() as writer:
        first = writer.append_many([(AuditEvent.SERVED, f"request/{i}", {"i": i}, "serving") for i in range(3)])
        second = writer.append_many([(AuditEvent.SERVED, "request/3", {"i": 3}, "serving")])
        assert [e.seq for e in first + second] == [3, 4, 5, 6] and second[0].prev_hash == first[-1].hash
        with pytest.raises(AuditLogError, match="unknown audit event"):  # a bad group writes nothing
            writer.append_many([("nonsense", "bad", {}, "serving")])
        assert writer.append_many([(AuditEvent.SERVED, "request/4", {"i": 4}, "serving")])[0].seq == 7
        # ...and nobody else gets the store until the session closes (another thread here waits for it).
        failed = []
        t = threading.Thread(target=lambda: failed.extend(_raises(lambda: impatient.append("report", "r", {}))))
        t.start()
        t.join()
        assert failed and isinstance(failed[0], GovernanceLockTimeout)
    impatient.append("report", "after", {})  # closed: others write again and continue the same chain
    assert [e.seq for e in log.entries()] == list(range(1, 9)) and log.verify().ok


def _commit_then_die(path: str, key: bytes) -> None:
    with AuditLog(GovernanceStore(path), key).writer() as writer:
        writer.append_many([(AuditEvent.SERVED, f"request/{i}", {"i": i}, "serving") for i in range(5)])
        os._exit(0)  # no detach, no checkpoint: what a crash right after the commit leaves


def test_a_writer_session_commit_survives_a_crash_of_the_process(store):
    _filled(store, 1)
    proc = multiprocessing.get_context("spawn").Process(target=_commit_then_die, args=(str(store.path), KEY))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    log = AuditLog(store, KEY)
    assert [e.subject for e in log.entries(event=AuditEvent.SERVED)] == [f"request/{i}" for i in range(5)]
    assert log.verify().ok


def test_a_writer_session_refuses_to_extend_a_broken_head(store):
    log = _filled(store, 3)
    _raw(store, "UPDATE audit_head SET mac = 'forged'")
    with pytest.raises(AuditIntegrityError, match="MAC"):
        with log.writer() as writer:
            writer.append_many([(AuditEvent.SERVED, "request/x", {}, "serving")])
    assert len(log.entries()) == 3


def _raises(fn) -> list[BaseException]:
    try:
        fn()
    except BaseException as err:  # noqa: BLE001 - the test inspects it
        return [err]
    return []


def test_the_audit_writer_holds_its_session_under_load_and_yields_to_a_waiting_reader(tmp_path):
    """The serving app's audit writer (no server needed): 4 threads submit continuously; one session serves many commits, and a reader thread of
    the same process gets the store well within the 5 s maximum hold."""
    from ple_platform.core.governance.audit.log import AuditLog
    from ple_platform.core.governance.audit.store import GovernanceStore
    from ple_platform.core.serving.app import AuditBatcher

    log = AuditLog(GovernanceStore(tmp_path / "g.duckdb"), b"k")
    batcher = AuditBatcher(log)
    stop, seqs = threading.Event(), []

    def submitter(w: int) -> None:
        while not stop.is_set():
            seqs.append(batcher.submit(AuditEvent.SERVED, f"request/{w}-{len(seqs)}", {"w": w}))

    threads = [threading.Thread(target=submitter, args=(w,)) for w in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        n_read = len(log.entries(event=AuditEvent.SERVED))  # waits for the writer to yield the lock
        waited = time.monotonic() - t0
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
        batcher.close()
    assert n_read > 0 and waited < 2.0, waited
    assert batcher.transactions > batcher.sessions >= 2  # held across commits, and released for the reader
    entries = log.entries(event=AuditEvent.SERVED)
    assert sorted(seqs) == [e.seq for e in entries] and log.verify().ok

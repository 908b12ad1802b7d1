"""The governance store: one small DuckDB file for the audit log and the model registry.

Writers are many and short-lived: Dagster run subprocesses, the sensor daemon, the CLI and the serving API
all record governance facts, possibly while a Dagster run holds the (large) warehouse DuckDB file open for
writing. DuckDB admits one read-write process per file, so governance lives in its own file (by default
``<data_dir>/governance.duckdb``) that nobody keeps open: every operation attaches it, works inside one
transaction and detaches it again (a few ms; see ``_attached``). The one exception is ``session()``: a
long-lived writer (the serving API's audit group commit) keeps it attached and locked while it has work and
releases it when idle or after a bounded hold, so other writers wait at most that long.

The single sequencer is an ``fcntl.flock`` on the sibling lock file ``<db>.lock``: ``transaction()`` holds it
exclusively (so "read the last audit row, append the next one" is atomic across processes), ``read()`` holds it
shared with a read-only attachment. Threads of one process are ordered first by a per-path
``threading.Lock`` (one DuckDB instance per file and process at a time). The OS releases the flock when a
process dies, so a crashed writer never wedges the store; the DuckDB transaction rolls back.

The schema (all governance tables) is created idempotently on first use, so a fresh data directory works
without a migration step. ``canonical_json`` is the one JSON encoding that hashes and HMACs are computed over.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from ple_platform.core.reporting import json_ready

SCHEMA_VERSION = 1
_ALIAS = "governance"  # catalog name of the attached file
DEFAULT_LOCK_TIMEOUT_S = 120.0

# Every governance table. Ids and sequence numbers are assigned as max + 1 under the exclusive lock, so they
# are contiguous; timestamps are naive TIMESTAMPs holding UTC.
SCHEMA_DDL: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS governance_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
    """CREATE TABLE IF NOT EXISTS audit_log (
        seq BIGINT PRIMARY KEY, ts TIMESTAMP NOT NULL, actor VARCHAR NOT NULL, event VARCHAR NOT NULL,
        subject VARCHAR NOT NULL, payload VARCHAR NOT NULL, prev_hash VARCHAR NOT NULL, hash VARCHAR NOT NULL)""",
    # One row (id = 1): the last seq and hash, HMAC'd, so a truncated tail is detectable.
    """CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY, seq BIGINT NOT NULL, hash VARCHAR NOT NULL, mac VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS model_versions (
        version VARCHAR PRIMARY KEY, created_at TIMESTAMP NOT NULL, model_month DATE NOT NULL,
        teacher_uri VARCHAR NOT NULL, teacher_sha256 VARCHAR NOT NULL, code_version VARCHAR NOT NULL,
        train_months JSON NOT NULL, validation_month DATE NOT NULL, test_month DATE NOT NULL,
        students JSON NOT NULL, routing JSON NOT NULL, feature_hashes JSON NOT NULL, run_id VARCHAR,
        bundle_sha256 VARCHAR NOT NULL, status VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS champion_history (
        seq BIGINT PRIMARY KEY, version VARCHAR NOT NULL, promoted_at TIMESTAMP NOT NULL,
        previous_version VARCHAR, decision_id BIGINT, kind VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS approvals (
        id BIGINT PRIMARY KEY, version VARCHAR NOT NULL, approver VARCHAR NOT NULL,
        approved_at TIMESTAMP NOT NULL, evidence_sha256 VARCHAR NOT NULL, note VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS decisions (
        id BIGINT PRIMARY KEY, version VARCHAR NOT NULL, champion_version VARCHAR,
        decided_at TIMESTAMP NOT NULL, outcome VARCHAR NOT NULL, reasons JSON NOT NULL, evidence JSON NOT NULL,
        evidence_sha256 VARCHAR NOT NULL)""",
)


class GovernanceStoreError(RuntimeError):
    """The governance store cannot be used as asked (nested transaction, newer schema, ...)."""


class GovernanceLockTimeout(TimeoutError):
    """The governance lock was not obtained in time (another process holds it)."""


class CanonicalJSONError(ValueError):
    """A value recorded in governance tables is not JSON-serialisable; the message names where."""


# One lock per database path and process: threads of a process take it before the flock.
_PATH_LOCKS: dict[str, threading.Lock] = {}
_PATH_LOCKS_GUARD = threading.Lock()
_IN_TRANSACTION = threading.local()
# Threads of this process waiting for a path's lock: a long-lived session holder yields to them early.
_WAITING: dict[str, int] = {}


def _path_lock(path: str) -> threading.Lock:
    with _PATH_LOCKS_GUARD:
        return _PATH_LOCKS.setdefault(path, threading.Lock())


def utc_now() -> dt.datetime:
    """Current UTC time, naive (as stored in TIMESTAMP columns), microsecond precision."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def as_utc(ts: dt.datetime) -> dt.datetime:
    """A naive UTC timestamp read from the store, made timezone-aware."""
    return ts.replace(tzinfo=dt.timezone.utc)


def to_jsonable(value: Any, where: str = "value") -> Any:
    """``value`` with numpy scalars/arrays, tuples, dates and enums converted to plain JSON types.

    Raises ``CanonicalJSONError`` naming the offending path (e.g. ``payload['metrics']['auc']``) for non-string
    mapping keys, non-finite floats (not valid JSON) and any other type.
    """
    return json_ready(value, where, nonfinite="raise", keys="raise", error=CanonicalJSONError)


def canonical_json(value: Any, where: str = "value") -> str:
    """The canonical JSON text (sorted keys, no whitespace, UTF-8 kept) that hashes are computed over."""
    return json.dumps(to_jsonable(value, where), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


class StoreSession:
    """Transactions on a connection that ``GovernanceStore.session()`` holds attached and locked."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The held connection inside BEGIN/COMMIT; rolled back on any error."""
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")


class GovernanceStore:
    """Brief, serialised access to the governance DuckDB file at ``path`` (lock file ``<path>.lock``)."""

    def __init__(self, path: str | os.PathLike[str], lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        p = Path(path)
        if p.exists() and p.is_dir():
            raise GovernanceStoreError(f"governance store path {p} is a directory; expected a DuckDB file path")
        if lock_timeout_s <= 0:
            raise ValueError(f"lock_timeout_s must be > 0, got {lock_timeout_s}")
        self.path = p.resolve()
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout_s = float(lock_timeout_s)
        self._ready = False
        self._base: duckdb.DuckDBPyConnection | None = None
        self._base_pid = 0

    def __repr__(self) -> str:
        return f"GovernanceStore({str(self.path)!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Picklable (e.g. handed to a run subprocess): the in-memory DuckDB instance stays behind.
        return {**self.__dict__, "_base": None, "_base_pid": 0}

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection inside BEGIN/COMMIT, under the exclusive lock; rolled back on any error."""
        with self.session() as held, held.transaction() as con:
            yield con

    @contextmanager
    def session(self) -> Iterator[StoreSession]:
        """The exclusive lock and the read-write attachment held across many transactions, for one long-lived
        writer (the serving API's audit group commit): each ``transaction()`` of the session is then one DuckDB
        commit (the WAL is synced, so a committed entry is durable) instead of attach + commit + the checkpoint
        on detach. While it is open no other process or thread can read or write the store, so a holder closes
        it when idle and after a bounded time (see ``serving.app.AuditBatcher``)."""
        with self._locked(exclusive=True), self._attached(read_only=False) as con:
            if not self._ready:
                self._create_schema(con)
            yield StoreSession(con)

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection under the shared lock (concurrent with other readers, never with a writer)."""
        if not self._ready and not self.path.exists():
            with self.transaction():  # first use: create the file and the schema
                pass
        with self._locked(exclusive=False), self._attached(read_only=True) as con:
            yield con

    def threads_waiting(self) -> int:
        """How many other threads of this process wait for this store (a ``session()`` holder yields to them)."""
        return _WAITING.get(str(self.path), 0)

    # -- internals -----------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        key = str(self.path)
        held = getattr(_IN_TRANSACTION, "paths", None)
        if held is None:
            held = _IN_TRANSACTION.paths = set()
        if key in held:
            raise GovernanceStoreError(
                f"nested governance transaction on {key}: finish the open transaction() / read() first")
        deadline = time.monotonic() + self.lock_timeout_s
        thread_lock = _path_lock(key)
        with _PATH_LOCKS_GUARD:
            _WAITING[key] = _WAITING.get(key, 0) + 1
        try:
            got = thread_lock.acquire(timeout=self.lock_timeout_s)
        finally:
            with _PATH_LOCKS_GUARD:
                _WAITING[key] -= 1
        if not got:
            raise GovernanceLockTimeout(f"governance store {key}: no thread lock within {self.lock_timeout_s:g} s")
        held.add(key)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                self._flock(fd, exclusive, deadline)
                try:
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        finally:
            held.discard(key)
            thread_lock.release()

    @contextmanager
    def _attached(self, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """The file ATTACHed (and made the default catalog) on this process's in-memory base connection.

        Starting a DuckDB instance costs ~25 ms, attaching a file ~1-5 ms, so each store keeps one in-memory
        instance per process and attaches the file per operation; DETACH closes the file (releasing DuckDB's own
        lock on it) before the flock is released. Callers hold the per-path thread lock, so the base
        connection is never used by two threads at once.
        """
        if self._base is None or self._base_pid != os.getpid():  # never reuse an instance inherited by fork
            self._base, self._base_pid = duckdb.connect(":memory:"), os.getpid()
        con = self._base
        path_sql = str(self.path).replace("'", "''")
        con.execute(f"ATTACH '{path_sql}' AS {_ALIAS}" + (" (READ_ONLY)" if read_only else ""))
        try:
            con.execute(f"USE {_ALIAS}")
            yield con
        finally:
            try:
                con.execute("USE memory")
                con.execute(f"DETACH {_ALIAS}")
            except BaseException:
                # A base connection that cannot detach would keep the file open: drop the whole instance.
                self._base = None
                con.close()
                raise

    def _flock(self, fd: int, exclusive: bool, deadline: float) -> None:
        # Non-blocking attempts with a capped backoff: a blocking flock could not honour the timeout.
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, mode)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise GovernanceLockTimeout(
                        f"governance store {self.path}: lock {self.lock_path} still held by another process "
                        f"after {self.lock_timeout_s:g} s") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.01)

    def _create_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute("BEGIN TRANSACTION")
        try:
            for ddl in SCHEMA_DDL:
                con.execute(ddl)
            row = con.execute("SELECT value FROM governance_meta WHERE key = 'schema_version'").fetchall()
            if not row:
                con.execute("INSERT INTO governance_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            elif int(row[0][0]) > SCHEMA_VERSION:
                raise GovernanceStoreError(
                    f"governance store {self.path} has schema version {row[0][0]}, newer than this code's "
                    f"{SCHEMA_VERSION}: upgrade ple-platform before writing to it")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._ready = True

"""Cache of gated L2 rewrites, keyed by (L1 hash, language, model, prompt version).

Only rewrites that passed the gate are stored, so a hit is served without another gate run (the one
customer-dependent rule, suitability, runs before the cache is read). Two tiers: a dict in the process (the hit
path: a key lookup) and, when a path is given, a DuckDB table ``reason_rewrites`` that survives restarts and is
shared with the monthly batch. The file is opened per read/write, not held, so the serving process and a batch
run do not lock each other out; the table is loaded into memory once when the cache is created.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

_DDL = """CREATE TABLE IF NOT EXISTS reason_rewrites (
    l1_hash VARCHAR, lang VARCHAR, model VARCHAR, prompt_version VARCHAR, text VARCHAR, verdict VARCHAR,
    created_at TIMESTAMP, PRIMARY KEY (l1_hash, lang, model, prompt_version))"""

Key = tuple[str, str, str, str]


class RewriteCache:
    def __init__(self, path: Path | str | None = None, max_entries: int = 100_000) -> None:
        self.path = Path(path) if path is not None else None
        self.max_entries = max_entries
        self._mem: dict[Key, tuple[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with duckdb.connect(str(self.path)) as con:
                con.execute(_DDL)
                rows = con.execute("SELECT l1_hash, lang, model, prompt_version, text, verdict FROM reason_rewrites "
                                   "ORDER BY created_at DESC LIMIT ?", [max_entries]).fetchall()
            for h, lang, model, version, text, verdict in rows:
                self._mem[(h, lang, model, version)] = (text, json.loads(verdict))

    def __len__(self) -> int:
        return len(self._mem)

    def get(self, key: Key) -> tuple[str, dict[str, Any]] | None:
        """(text, verdict dict) of a stored rewrite, from memory, else from the table (another process may have
        written it since this cache was created)."""
        hit = self._mem.get(key)
        if hit is not None or self.path is None:
            return hit
        with duckdb.connect(str(self.path)) as con:
            rows = con.execute("SELECT text, verdict FROM reason_rewrites WHERE l1_hash = ? AND lang = ? AND model = ? "
                              "AND prompt_version = ?", list(key)).fetchall()
        if not rows:
            return None
        self._remember(key, (rows[0][0], json.loads(rows[0][1])))
        return self._mem[key]

    def put(self, key: Key, text: str, verdict: dict[str, Any]) -> None:
        self._remember(key, (text, verdict))
        if self.path is not None:
            with duckdb.connect(str(self.path)) as con:
                con.execute("INSERT OR REPLACE INTO reason_rewrites VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [*key, text, json.dumps(verdict, ensure_ascii=False),
                             datetime.now(timezone.utc).replace(tzinfo=None)])

    def clear_memory(self) -> None:
        """Forget the in-process tier (the table keeps its rows): the next ``get`` of a key reads the table."""
        with self._lock:
            self._mem.clear()

    def _remember(self, key: Key, value: tuple[str, dict[str, Any]]) -> None:
        with self._lock:
            if len(self._mem) >= self.max_entries:
                self._mem.pop(next(iter(self._mem)))  # oldest insertion first
            self._mem[key] = value

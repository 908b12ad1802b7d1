"""Fitted feature state: computed on training months only, versioned, stored once and reused.

The fit used by feature month t is anchored at ``fit_month(t) = min(t, fit_end)`` and sees only the
months ``[fit_month - window + 1, fit_month]``: months after t are never read, so a month's features do not
change when later months land, and every partition from ``fit_end`` on reuses one fit. ``fit_end``
defaults to the last month inside the training window of the production model (see docs/features.md).

A fit is a dict of numpy arrays plus JSON metadata, saved as safetensors (deterministic bytes, no pickle)
under ``feature_fits/<group>/<fit_month>.safetensors``, and recorded with its months and SHA-256 in the
warehouse table ``features.fit_registry``. A fit records its lineage (``_inputs``: the content hashes of the raw
partitions of its months) and is reused only while they are unchanged. The stored bytes are a function of the fit's inputs only: timing
metrics (``WALL_CLOCK_KEYS``) are dropped from the metadata, so two clean runs store byte-identical fits with
the same SHA-256 (the registry's ``created_at`` is outside the hashed bytes).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Callable

import duckdb
import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ple_platform.core.data.schema import add_months
from ple_platform.core.storage import ArtifactStore, sha256_bytes
from ple_platform.core.warehouse import raw_input_lineage

FIT_WINDOW_MONTHS = 12
# Metadata keys that measure the run, not the fit (wall-clock seconds); never part of the hashed artifact.
WALL_CLOCK_KEYS = frozenset({"seconds", "fit_seconds", "wall_seconds", "elapsed", "fitted_at", "created_at"})


@dataclass(frozen=True)
class FitPolicy:
    fit_end: date
    first_month: date
    window: int = FIT_WINDOW_MONTHS

    def fit_month(self, month: date) -> date:
        return min(month, self.fit_end)

    def fit_months(self, month: date) -> list[date]:
        end = self.fit_month(month)
        start = max(self.first_month, add_months(end, -(self.window - 1)))
        out, cur = [], start
        while cur <= end:
            out.append(cur)
            cur = add_months(cur, 1)
        return out


@dataclass(frozen=True)
class FitRecord:
    group: str
    fit_month: str  # ISO month or "static" for data-independent fits (tree embeddings)
    months: tuple[str, ...]
    uri: str
    sha256: str
    reused: bool


Fit = tuple[dict[str, np.ndarray], dict]


def deterministic_meta(meta):
    """``meta`` without wall-clock entries, at any depth."""
    if isinstance(meta, dict):
        return {k: deterministic_meta(v) for k, v in meta.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(meta, (list, tuple)):
        return [deterministic_meta(v) for v in meta]
    return meta


def encode_fit(arrays: dict[str, np.ndarray], meta: dict) -> bytes:
    return st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                   metadata={"meta": json.dumps(deterministic_meta(meta), sort_keys=True)})


def decode_fit(data: bytes) -> Fit:
    # safetensors.numpy.load drops the header metadata, so read it from the 8-byte length-prefixed header.
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_len])
    meta = json.loads(header.get("__metadata__", {}).get("meta", "{}"))
    return dict(st_load(data)), meta


class FitStore:
    """Load a fit if it exists for (group, fit month), else compute, store and register it."""

    def __init__(self, store: ArtifactStore, con: duckdb.DuckDBPyConnection):
        self.store, self.con = store, con
        con.execute("CREATE SCHEMA IF NOT EXISTS features")
        con.execute(
            "CREATE TABLE IF NOT EXISTS features.fit_registry (grp VARCHAR, fit_month VARCHAR, months VARCHAR, "
            "uri VARCHAR, sha256 VARCHAR, created_at TIMESTAMP, PRIMARY KEY (grp, fit_month))"
        )

    def get_or_fit(self, group: str, fit_key: str, months: list[date], fit_fn: Callable[[], Fit]) -> tuple[Fit, FitRecord]:
        """The stored fit when it was computed from the same months **with the same contents** (its ``_inputs``
        lineage: the raw partitions' content hashes), else a new fit: a month corrected after a bad ingest is
        never served a fit computed from the bad rows."""
        key = f"feature_fits/{group}/{fit_key}.safetensors"
        month_strs = tuple(m.isoformat() for m in months)
        inputs = raw_input_lineage(self.con, months) if months else "static"
        if self.store.exists(key):
            data = self.store.get(key)
            fit = decode_fit(data)
            if tuple(fit[1].get("_months", [])) == month_strs and fit[1].get("_inputs") == inputs:
                return fit, FitRecord(group, fit_key, month_strs, self.store.uri(key), sha256_bytes(data), True)
        arrays, meta = fit_fn()
        meta = deterministic_meta({**meta, "_months": list(month_strs), "_group": group, "_inputs": inputs})
        uri, digest = self.store.put(key, encode_fit(arrays, meta))
        self.con.execute(
            "INSERT OR REPLACE INTO features.fit_registry VALUES (?, ?, ?, ?, ?, ?)",
            [group, fit_key, ",".join(month_strs), uri, digest, datetime.now(timezone.utc).replace(tzinfo=None)],
        )
        return (arrays, meta), FitRecord(group, fit_key, month_strs, uri, digest, False)

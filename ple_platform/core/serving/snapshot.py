"""The serving snapshot: what a recommendation server needs for one scoring month, and nothing more (SPEC §9).

Built once per (champion, month) from the warehouse and the registered bundle, then read by ``ple-platform
serve`` so the server never opens the warehouse and never runs the teacher. Content-addressed in the artifact
store under ``serving/<month>/<sha16>/``:

* ``features.npy`` float32 (N, C): the union of the 13 students' selected feature columns, raw values (what
  reasons quote), rows in ``customer_ids`` order; memory-mapped by the server when the store is local.
* ``arrays.npz``: ``holdings`` (N, 24) bool and the teacher's shared gate weights per task (``gate/<task>``,
  (N, experts) float32) — the gate sentence of a reason needs them and the teacher must not run at serving time.
* ``meta.json``: bundle version and sha, month, columns, customer ids, suitability profiles, opt-out flags,
  product priors, gate expert names, the month's batch rows (products and reason texts per customer) and the
  sha256 of both array files.

``serving/current.json`` points at the newest snapshot ({month, version, meta_key, meta_sha256}); the server
follows it and verifies every hash before swapping in a new state.

Opt-out of profiling is a customer flag read from ``governance.profiling_opt_outs(customer_id)`` in the
warehouse when that table exists (customers who objected to profiling; GDPR Art. 21, Korean PIPA §37-2).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import date
from typing import Any

import duckdb
import numpy as np

from ple_platform.core.distillation.bundle import load_bundle_students
from ple_platform.core.governance.promotion.registry import ModelBundle
from ple_platform.core.model.data import load_month
from ple_platform.core.model.inference import predict_month
from ple_platform.core.recommend import monthly
from ple_platform.core.storage import ArtifactStore, sha256_bytes
from ple_platform.core.features.spec import all_columns
from ple_platform.core.warehouse import customer_attributes

FORMAT_VERSION = 1
CURRENT_KEY = "serving/current.json"
OPT_OUT_TABLE = "governance.profiling_opt_outs"


class SnapshotError(ValueError):
    """A snapshot cannot be built (no customers, missing artifacts) or a stored one fails its checks."""


def snapshot_prefix(month: date, meta_sha256: str) -> str:
    return f"serving/{month.isoformat()}/{meta_sha256[:16]}"


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _opt_outs(con: duckdb.DuckDBPyConnection, ids: np.ndarray) -> np.ndarray:
    try:
        rows = con.execute(f"SELECT DISTINCT customer_id FROM {OPT_OUT_TABLE}").fetchall()
    except duckdb.CatalogException:
        return np.zeros(len(ids), dtype=bool)
    return np.isin(ids.astype(str), np.array([r[0] for r in rows], dtype=str))


def _batch_rows(con: duckdb.DuckDBPyConnection, month: date, bundle: ModelBundle) -> dict[str, list[dict]]:
    try:
        rows = con.execute(f"SELECT customer_id, rank, product, score, task, reason_en, reason_ko, recommendation_id "
                           f"FROM {monthly.TABLE} WHERE month = ? AND bundle_version = ? ORDER BY customer_id, rank",
                           [month, bundle.version]).fetchall()
    except duckdb.CatalogException:
        return {}
    out: dict[str, list[dict]] = {}
    for cid, rank, product, score, task, en, ko, rid in rows:
        out.setdefault(cid, []).append({"rank": int(rank), "product": product, "score": float(score), "task": task,
                                        "reason": {"en": en, "ko": ko}, "recommendation_id": rid})
    return out


@dataclass(frozen=True)
class SnapshotInfo:
    meta_key: str
    meta_sha256: str
    n_customers: int
    n_columns: int
    n_batch_customers: int
    n_opt_out: int


def build_snapshot(con: duckdb.DuckDBPyConnection, store: ArtifactStore, bundle: ModelBundle,
                   month: date) -> SnapshotInfo:
    """Build and store the snapshot of ``month`` for ``bundle`` and point ``serving/current.json`` at it."""
    students = load_bundle_students(store, bundle)
    md = load_month(con, month, labels=False)
    if md.n_rows == 0:
        raise SnapshotError(f"serving snapshot: no customers with features at {month:%Y-%m}")
    names = all_columns()
    used = set().union(*(s.features for s in students.values()))
    columns = [c for c in names if c in used]  # spec order, so the file layout is stable across bundles
    X = md.matrix()[:, [names.index(c) for c in columns]].astype(np.float32)
    teacher = monthly.registered_teacher(con, store, bundle)
    priors = monthly.fit_priors(con, monthly.training_months(con, bundle, teacher))
    out = predict_month(teacher.model, teacher.scaler.transform(md))
    if not np.array_equal(out.customer_ids, md.customer_ids):
        raise SnapshotError("serving snapshot: teacher gate rows are not in the feature rows' customer order")
    arrays: dict[str, np.ndarray] = {"holdings": md.holdings > 0.5}
    experts: dict[str, list[str]] = {}
    for task in sorted(monthly.gate_cited_tasks(bundle) & set(students)):  # proven or not cited
        g = out.shared_gates(task)
        experts[task] = list(g)
        arrays[f"gate/{task}"] = np.stack([g[e] for e in g], axis=1).astype(np.float32)
    ids = md.customer_ids.astype(str)
    attrs = customer_attributes(con, month, md.customer_ids)
    opt_out = _opt_outs(con, ids)
    batch = _batch_rows(con, month, bundle)

    feat_bytes = _npy(np.ascontiguousarray(X))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    arr_bytes = buf.getvalue()
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "month": month.isoformat(), "version": bundle.version,
        "bundle_sha256": bundle.bundle_sha256, "columns": columns, "customer_ids": ids.tolist(),
        "suitability_profile": [p if isinstance(p, str) else None for p in attrs["suitability_profile"]],
        "opt_out": opt_out.tolist(), "priors": priors.to_dict(), "gate_experts": experts, "batch": batch,
        "features_sha256": sha256_bytes(feat_bytes), "arrays_sha256": sha256_bytes(arr_bytes),
    }
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    meta_sha = sha256_bytes(meta_bytes)
    prefix = snapshot_prefix(month, meta_sha)
    store.put(f"{prefix}/features.npy", feat_bytes)
    store.put(f"{prefix}/arrays.npz", arr_bytes)
    store.put(f"{prefix}/meta.json", meta_bytes)  # last: a meta.json implies both array files exist
    store.put(CURRENT_KEY, json.dumps({"month": month.isoformat(), "version": bundle.version,
                                       "meta_key": f"{prefix}/meta.json", "meta_sha256": meta_sha},
                                      sort_keys=True).encode())
    return SnapshotInfo(f"{prefix}/meta.json", meta_sha, int(len(ids)), len(columns), len(batch), int(opt_out.sum()))

"""Immutable serving state (champion bundle + verified students + snapshot) and its loader.

A state is built completely off the request path: every student's model text is checked against the registry's
sha256, the snapshot's files against the hashes in its ``meta.json`` (itself addressed by its sha256), the
snapshot must belong to the registry's champion, and one known customer is scored as a self-test. Only then does
the server swap its single state reference; requests hold the state they started with, so none sees two
versions. Students are re-configured to one LightGBM thread (single-row calls are ~6x slower on two threads).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np

from ple_platform.core.distillation.bundle import load_bundle_students
from ple_platform.core.distillation.students import Student
from ple_platform.core.governance.promotion.registry import ModelBundle, Registry
from ple_platform.core.model.products import ProductPriors
from ple_platform.core.serving.snapshot import CURRENT_KEY, FORMAT_VERSION, SnapshotError
from ple_platform.core.storage import ArtifactStore, LocalArtifactStore, sha256_bytes


class NoChampionError(RuntimeError):
    """The registry has no champion (or no snapshot for it yet): nothing can be served."""


@dataclass(frozen=True, eq=False)
class ServingState:
    bundle: ModelBundle
    students: dict[str, Student]
    month: date
    snapshot_sha256: str
    columns: tuple[str, ...]
    customer_ids: np.ndarray  # (N,) str
    row_of: dict[str, int]
    features: np.ndarray  # (N, C) float32, possibly a read-only memory map
    holdings: np.ndarray  # (N, 24) bool
    gates: dict[str, np.ndarray]  # task -> (N, experts) float32
    gate_experts: dict[str, tuple[str, ...]]
    suitability: np.ndarray  # (N,) object
    opt_out: np.ndarray  # (N,) bool
    priors: ProductPriors
    batch: dict[str, list[dict]]

    @property
    def version(self) -> str:
        return self.bundle.version

    def describe(self) -> dict:
        return {"version": self.bundle.version, "bundle_sha256": self.bundle.bundle_sha256,
                "model_month": self.bundle.model_month.isoformat(), "month": self.month.isoformat(),
                "snapshot_sha256": self.snapshot_sha256, "customers": int(len(self.customer_ids)),
                "feature_columns": len(self.columns), "batch_customers": len(self.batch),
                "students": {t: {"sha256": s.model_sha256, "route": getattr(s.route, "value", s.route),
                                 "features": len(s.features)} for t, s in sorted(self.students.items())}}


def _verified(store: ArtifactStore, key: str, sha: str) -> bytes:
    data = store.get(key)
    got = sha256_bytes(data)
    if got != sha:
        raise SnapshotError(f"serving snapshot file {key}: sha256 {got[:12]}… differs from the recorded "
                            f"{sha[:12]}…; refusing to serve it")
    return data


def current_pointer(store: ArtifactStore) -> dict | None:
    """The ``serving/current.json`` pointer, or None before the first snapshot."""
    return json.loads(store.get(CURRENT_KEY)) if store.exists(CURRENT_KEY) else None


def load_state(registry: Registry, store: ArtifactStore, self_test: bool = True) -> ServingState:
    """Build a complete, verified state for the registry's champion (see the module docstring)."""
    bundle = registry.champion()
    if bundle is None:
        raise NoChampionError("no champion in the registry: promote a model bundle first")
    ptr = current_pointer(store)
    if ptr is None:
        raise NoChampionError("no serving snapshot yet: materialize the serving_snapshot asset")
    if ptr["version"] != bundle.version:
        raise NoChampionError(f"the newest serving snapshot is for {ptr['version']}, the champion is "
                              f"{bundle.version}: materialize serving_snapshot for the new champion")
    meta_bytes = _verified(store, ptr["meta_key"], ptr["meta_sha256"])
    meta = json.loads(meta_bytes)
    if meta.get("format_version") != FORMAT_VERSION:
        raise SnapshotError(f"serving snapshot format {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    if meta["bundle_sha256"] != bundle.bundle_sha256:
        raise SnapshotError(f"serving snapshot was built for bundle sha {meta['bundle_sha256'][:12]}…, the "
                            f"champion {bundle.version} has {bundle.bundle_sha256[:12]}…")
    prefix = ptr["meta_key"].rsplit("/", 1)[0]
    feat_key, arr_key = f"{prefix}/features.npy", f"{prefix}/arrays.npz"
    feat_bytes = _verified(store, feat_key, meta["features_sha256"])
    if isinstance(store, LocalArtifactStore):
        # Verified above; the page cache holds the file once however many workers map it.
        features = np.load(Path(store.uri(feat_key)), mmap_mode="r", allow_pickle=False)
    else:
        features = np.load(io.BytesIO(feat_bytes), allow_pickle=False)
    del feat_bytes
    arrays = np.load(io.BytesIO(_verified(store, arr_key, meta["arrays_sha256"])), allow_pickle=False)
    students = {t: replace(s, config=replace(s.config, num_threads=1))
                for t, s in load_bundle_students(store, bundle).items()}
    for s in students.values():
        s.booster()  # parse (and re-check the hash of) every model now, not on the first request
    ids = np.asarray(meta["customer_ids"], dtype=str)
    columns = tuple(meta["columns"])
    if features.shape != (len(ids), len(columns)):
        raise SnapshotError(f"serving snapshot features {features.shape} do not match {len(ids)} customers x "
                            f"{len(columns)} columns")
    missing = {t: [c for c in s.features if c not in set(columns)] for t, s in students.items()}
    if any(missing.values()):
        raise SnapshotError(f"serving snapshot lacks student features: { {t: m[:3] for t, m in missing.items() if m} }")
    state = ServingState(
        bundle=bundle, students=students, month=date.fromisoformat(meta["month"]), snapshot_sha256=ptr["meta_sha256"],
        columns=columns, customer_ids=ids, row_of={c: i for i, c in enumerate(ids.tolist())}, features=features,
        holdings=arrays["holdings"].astype(bool), gates={t: arrays[f"gate/{t}"] for t in meta["gate_experts"]},
        gate_experts={t: tuple(e) for t, e in meta["gate_experts"].items()},
        suitability=np.asarray(meta["suitability_profile"], dtype=object), opt_out=np.asarray(meta["opt_out"], bool),
        priors=ProductPriors.from_dict(meta["priors"]), batch=meta["batch"])
    if self_test:
        from ple_platform.core.serving.engine import RecommendationRequest, recommend

        first = str(ids[0])
        recommend(state, RecommendationRequest(customer_id=first, k=7, lang="en", explain=True, fresh=True))
    return state

"""Benchmark: a recommendation server's memory and load time at 100k customers, beside the platform's own size.

    PLE_DATA_DIR=/path/platform python benchmarks/bench_serving_memory.py --customers 100000

Needs a platform with a champion and a ``serving_snapshot`` (what ``make demo`` leaves, or the serving tests'
platform under pytest's tmp folder). The platform's snapshot is tiled to ``--customers`` rows (each customer
copied under new pseudonyms, with its features, holdings, gates, suitability, opt-out flag and batch rows) into a
temporary copy of the artifact store, and the real ``load_state`` loads it in a fresh process; the same is done
for the untiled snapshot in the same run (the baseline). Reported per size: resident memory after the imports and
after loading (VmRSS, MiB), the load time, the snapshot's files (MiB) and the p50 of 200 in-process batch hits.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
import numpy as np

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

from ple_platform.core.governance.audit.store import GovernanceStore
from ple_platform.core.governance.promotion.registry import Registry
from ple_platform.core.serving.engine import RecommendationRequest, recommend
from ple_platform.core.serving.state import load_state
from ple_platform.core.storage import artifact_store_from_uri

registry = Registry(GovernanceStore(sys.argv[1]))
store = artifact_store_from_uri(sys.argv[2])
before = rss_mib()
t0 = time.perf_counter()
state = load_state(registry, store)
seconds = time.perf_counter() - t0
after = rss_mib()
ids = [c for c in state.customer_ids[:: max(1, len(state.customer_ids) // 200)]][:200]
lat = []
for cid in ids:
    t = time.perf_counter()
    recommend(state, RecommendationRequest(customer_id=str(cid), k=7, lang="en", explain=True))
    lat.append(time.perf_counter() - t)
print(json.dumps({"customers": int(len(state.customer_ids)), "rss_after_imports_mib": round(before, 1),
                  "rss_loaded_mib": round(after, 1), "load_seconds": round(seconds, 2),
                  "batch_hit_p50_ms": round(float(np.percentile(lat, 50)) * 1000, 3)}))
"""


def _tile(snapshot: dict, n: int) -> dict:
    """The snapshot's contents repeated to ``n`` customers; copy k of customer c is ``c~k``."""
    meta, feats, arrays = snapshot["meta"], snapshot["features"], snapshot["arrays"]
    n0 = len(meta["customer_ids"])
    reps = -(-n // n0)
    idx = np.tile(np.arange(n0), reps)[:n]
    copy = np.repeat(np.arange(reps), n0)[:n]
    ids = [f"{meta['customer_ids'][i]}~{k}" for i, k in zip(idx.tolist(), copy.tolist())]
    batch = {}
    for cid, i, k in zip(ids, idx.tolist(), copy.tolist()):
        rows = meta["batch"].get(meta["customer_ids"][i])
        if rows is not None:
            batch[cid] = [dict(r, recommendation_id=f"{r['recommendation_id']}~{k}") for r in rows]
    out_meta = dict(meta, customer_ids=ids, batch=batch,
                    suitability_profile=[meta["suitability_profile"][i] for i in idx.tolist()],
                    opt_out=[meta["opt_out"][i] for i in idx.tolist()])
    return {"meta": out_meta, "features": np.ascontiguousarray(feats[idx]),
            "arrays": {k: v[idx] for k, v in arrays.items()}}


def _write(store, snapshot: dict, pointer: dict) -> float:
    from ple_platform.core.serving.snapshot import CURRENT_KEY, snapshot_prefix
    from ple_platform.core.storage import sha256_bytes

    fbuf, abuf = io.BytesIO(), io.BytesIO()
    np.save(fbuf, snapshot["features"], allow_pickle=False)
    np.savez(abuf, **snapshot["arrays"])
    meta = dict(snapshot["meta"], features_sha256=sha256_bytes(fbuf.getvalue()),
                arrays_sha256=sha256_bytes(abuf.getvalue()))
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    sha = sha256_bytes(meta_bytes)
    from datetime import date

    prefix = snapshot_prefix(date.fromisoformat(meta["month"]), sha)
    store.put(f"{prefix}/features.npy", fbuf.getvalue())
    store.put(f"{prefix}/arrays.npz", abuf.getvalue())
    store.put(f"{prefix}/meta.json", meta_bytes)
    store.put(CURRENT_KEY, json.dumps(dict(pointer, meta_key=f"{prefix}/meta.json", meta_sha256=sha)).encode())
    return (len(fbuf.getvalue()) + len(abuf.getvalue()) + len(meta_bytes)) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=100_000)
    args = ap.parse_args()

    from ple_platform.core.serving.state import current_pointer
    from ple_platform.core.settings import Settings
    from ple_platform.core.storage import artifact_store_from_uri

    settings = Settings.from_env()
    source = Path(settings.artifacts_uri)
    if not source.is_dir():
        sys.exit(f"bench_serving_memory: needs a local artifact store, got {settings.artifacts_uri}")
    store = artifact_store_from_uri(str(source))
    ptr = current_pointer(store)
    if ptr is None:
        sys.exit("bench_serving_memory: the platform has no serving snapshot (materialize serving_snapshot)")
    prefix = ptr["meta_key"].rsplit("/", 1)[0]
    with np.load(io.BytesIO(store.get(f"{prefix}/arrays.npz")), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    original = {"meta": json.loads(store.get(ptr["meta_key"])),
                "features": np.load(io.BytesIO(store.get(f"{prefix}/features.npy")), allow_pickle=False),
                "arrays": arrays}
    n0 = len(original["meta"]["customer_ids"])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (n0, args.customers):
            target = Path(tmp) / f"artifacts_{n}"
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("serving"))
            snap = original if n == n0 else _tile(original, n)
            mib = _write(artifact_store_from_uri(str(target)), snap, ptr)
            out = subprocess.run([sys.executable, "-c", CHILD, str(settings.governance_db), str(target)],
                                 capture_output=True, text=True, check=True, env={**os.environ})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["snapshot_mib"] = round(mib, 1)
            results.append(row)
    base, big = results
    grow = (big["rss_loaded_mib"] - big["rss_after_imports_mib"]) / max(
        base["rss_loaded_mib"] - base["rss_after_imports_mib"], 1e-9)
    print(json.dumps({"baseline": base, "scaled": big,
                      "state_mib_ratio_scaled_over_baseline": round(grow, 2),
                      "state_kib_per_customer": round((big["rss_loaded_mib"] - big["rss_after_imports_mib"])
                                                      * 1024 / big["customers"], 2)}, indent=1))


if __name__ == "__main__":
    main()

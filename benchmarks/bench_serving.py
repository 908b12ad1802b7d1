"""Benchmark: `ple-platform serve` over loopback HTTP beside the in-process floor, in one run.

    PLE_DATA_DIR=/path/platform python benchmarks/bench_serving.py --requests 400 --seconds 60

Needs a platform with a champion and a ``serving_snapshot`` (e.g. what ``make demo`` leaves, or the copy the
serving tests leave under pytest's tmp folder). Steps:

1. floor, in process (no HTTP, no audit): ``recommend`` on the batch path, and online with reasons
   (13 single-thread predicts + TreeSHAP of the tasks behind the returned items + text);
2. a real server (``ple-platform serve`` as a subprocess on 127.0.0.1) and a threaded load generator, bounded
   in requests and seconds, at concurrency 1 and 8, for batch hits and online explained requests
   (``fresh: true``); p50 / p99 latency, requests/s and the ratio to the floor;
3. a hot swap (``POST /admin/reload``) in the middle of a concurrency-8 run: failed requests counted;
4. the server's resident memory (VmRSS) and the audit chain verified after the load.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000
    return {"n": int(len(a)), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "min_ms": round(float(a.min()), 3)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, bodies: list[dict], concurrency: int, max_requests: int, max_seconds: float,
         during=None) -> dict:
    import httpx

    lat: list[float] = []
    failed = 0
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds
    counter = iter(range(max_requests))

    def worker() -> None:
        nonlocal failed
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                r = c.post("/v1/recommendations", json=bodies[i % len(bodies)])
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        lat.append(dt)
                    else:
                        failed += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(worker) for _ in range(concurrency)]
        if during is not None:
            time.sleep(min(1.0, max_seconds / 4))
            during()
        for f in futures:
            f.result()
    wall = time.perf_counter() - t0
    return {**_pct(lat), "failed": failed, "rps": round(len(lat) / wall, 1), "concurrency": concurrency}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400, help="per scenario")
    ap.add_argument("--seconds", type=float, default=60.0, help="per scenario")
    ap.add_argument("--customers", type=int, default=50, help="distinct customers cycled through")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from ple_platform.core.governance.audit.log import AuditLog, audit_key
    from ple_platform.core.governance.promotion.registry import Registry
    from ple_platform.core.governance.audit.store import GovernanceStore
    from ple_platform.core.runtime import compute_threads
    from ple_platform.core.serving.engine import RecommendationRequest, recommend
    from ple_platform.core.serving.state import load_state
    from ple_platform.core.settings import Settings
    from ple_platform.core.storage import artifact_store_from_uri

    settings = Settings.from_env()
    gov = GovernanceStore(settings.governance_db)
    registry, audit = Registry(gov), AuditLog(gov, audit_key())
    store = artifact_store_from_uri(settings.artifacts_uri, settings.s3_endpoint_url)
    with compute_threads():
        t0 = time.perf_counter()
        state = load_state(registry, store)
        load_s = time.perf_counter() - t0
    batch_ids = [c for c in state.batch if not state.opt_out[state.row_of[c]]][: args.customers]
    result: dict = {"version": state.version, "customers": len(state.customer_ids), "columns": len(state.columns),
                    "state_load_s": round(load_s, 3)}

    floor: dict = {}
    for name, fresh in (("batch", False), ("online_explained", True)):
        lat = []
        for i in range(min(args.requests, 200)):
            req = RecommendationRequest(batch_ids[i % len(batch_ids)], 7, "en", True, fresh)
            t = time.perf_counter()
            recommend(state, req)
            lat.append(time.perf_counter() - t)
        floor[name] = _pct(lat)
    result["floor_in_process"] = floor
    del state

    port, token = _free_port(), "bench-admin-token"
    env = {**os.environ, "PLE_SERVING_ADMIN_TOKEN": token}
    proc = subprocess.Popen([sys.executable, "-m", "ple_platform.cli", "serve", "--port", str(port),
                             "--poll-seconds", "0"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("server did not become ready")
            time.sleep(0.2)
        http: dict = {}
        for name, fresh in (("batch", False), ("online_explained", True)):
            bodies = [{"customer_id": c, "k": 7, "explain": True, "fresh": fresh} for c in batch_ids]
            for conc in (1, 8):
                r = load(url, bodies, conc, args.requests, args.seconds)
                r["p50_vs_floor"] = round(r["p50_ms"] / floor[name]["p50_ms"], 2)
                http[f"{name}_c{conc}"] = r
        reload_status: list = []

        def swap() -> None:
            reload_status.append(httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {token}"},
                                            timeout=120).status_code)

        bodies = [{"customer_id": c, "k": 7, "explain": True, "fresh": True} for c in batch_ids]
        http["hot_swap_online_c8"] = {**load(url, bodies, 8, args.requests, args.seconds, during=swap),
                                      "reload_status": reload_status}
        rss_kb = next(int(line.split()[1]) for line in open(f"/proc/{proc.pid}/status") if line.startswith("VmRSS"))
        result["http"] = http
        result["server_rss_mb"] = round(rss_kb / 1024, 1)
        result["metrics_tail"] = [line for line in httpx.get(f"{url}/metrics").text.splitlines()
                                  if line.startswith("ple_serving_audit")]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    v = audit.verify()
    result["audit_verify"] = {"ok": v.ok, "entries": v.n_entries, "reason": v.reason}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

"""Benchmark: serving cost of the 13 students vs the teacher on CPU, and the champion's fidelity table.

    PLE_DATA_DIR=data python benchmarks/bench_students.py --customers 1000

Needs a platform with a champion (e.g. after `make demo`) or a registered version (``--version``). Measured in the same run, single thread:
* per-customer latency of the 13 students in a row (one row at a time, LightGBM num_threads=1): p50 / p99;
* per-customer latency of the teacher (batch of one, torch 1 thread): p50 / p99 — the baseline;
* batch scoring throughput of the bundle (customers/s, all test-month rows at once) vs the teacher's batches;
* the fidelity table per task (route, AUC gap, Spearman, top-k agreement, ECE) from the students' metadata.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np


def _percentiles(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1000)
    ap.add_argument("--version", help="registered model version (default: the champion)")
    args = ap.parse_args()

    import torch

    from ple_platform.core.distillation.bundle import (
        distillation_dataset_key,
        load_bundle_students,
        student_meta_key,
    )
    from ple_platform.core.distillation.dataset import DistillationData
    from ple_platform.core.governance.promotion.registry import Registry
    from ple_platform.core.governance.audit.store import GovernanceStore
    from ple_platform.core.settings import Settings
    from ple_platform.core.storage import artifact_store_from_uri
    from ple_platform.defs.training.assets import teacher_checkpoint_key

    settings = Settings.from_env()
    store = artifact_store_from_uri(settings.artifacts_uri, settings.s3_endpoint_url)
    registry = Registry(GovernanceStore(settings.governance_db))
    bundle = registry.get(args.version) if args.version else registry.champion()
    if bundle is None:
        raise SystemExit("no champion in the registry: run `make demo` first, or pass --version")
    students = {t: replace(s, config=replace(s.config, num_threads=1))
                for t, s in load_bundle_students(store, bundle).items()}
    data = DistillationData.from_bytes(store.get(distillation_dataset_key(bundle.model_month)))
    test, names = data.parts["test"], data.feature_names
    n = min(args.customers, test.n_rows)
    X = test.X[:n]

    torch.set_num_threads(1)
    student_lat = []
    for i in range(n):
        t0 = time.perf_counter()
        for s in students.values():
            s.predict(X[i:i + 1], names)
        student_lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for s in students.values():
        s.predict(test.X, names)
    bundle_cps = test.n_rows / (time.perf_counter() - t0)

    from ple_platform.core.model.inference import load_checkpoint_data

    import duckdb

    with duckdb.connect(settings.warehouse_path, read_only=True) as con:
        ck = load_checkpoint_data(con, store.get(teacher_checkpoint_key(bundle.model_month, bundle.teacher_sha256)),
                                  parts=("test",))
    model, md = ck.model, ck.scaled("test")
    model.eval()
    teacher_lat = []
    with torch.no_grad():
        for i in range(min(n, md.n_rows)):
            batch = md.to_batch(np.array([i]))
            t0 = time.perf_counter()
            model(batch)
            teacher_lat.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for start in range(0, md.n_rows, 512):
            model(md.to_batch(np.arange(start, min(start + 512, md.n_rows))))
        teacher_cps = md.n_rows / (time.perf_counter() - t0)

    s50, s99 = _percentiles(student_lat)
    t50, t99 = _percentiles(teacher_lat)
    print(f"bundle {bundle.version}, {n} customers, single thread")
    print("| model | p50 ms | p99 ms | batch customers/s |\n|---|---|---|---|")
    print(f"| 13 students | {s50:.2f} | {s99:.2f} | {bundle_cps:,.0f} |")
    print(f"| teacher (baseline) | {t50:.2f} | {t99:.2f} | {teacher_cps:,.0f} |")
    print(f"students p50 speed-up over the teacher: {t50 / s50:.1f}x; batch throughput ratio {bundle_cps / teacher_cps:.1f}x")
    print("\n| task | route | AUC gap | Spearman | top-k agreement | ECE | check |\n|---|---|---|---|---|---|---|")
    for task in students:
        meta = json.loads(store.get(student_meta_key(bundle.model_month, task, bundle.students[task].sha256)))
        m, fid = meta["fidelity"]["metrics"], meta["fidelity"]
        get = lambda k: f"{m[k]:.3f}" if isinstance(m.get(k), (int, float)) else "–"  # noqa: E731
        print(f"| {task} | {meta['routing']['route']} | {get('auc_gap')} | {get('spearman')} | "
              f"{get('topk_agreement')} | {get('student_ece')} | "
              f"{'pass' if fid['check_passed'] else 'FAIL'}{'' if fid['applicable'] else ' (n/a: DIRECT)'} |")


if __name__ == "__main__":
    main()

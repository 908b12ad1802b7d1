"""Benchmark: synthetic generation + raw materialization (issue: foundation).

    python benchmarks/bench_raw.py --customers 100000 --months 17

Reports wall time, customer-months/s, transactions/s and peak RSS for (1) generating the landing files,
(2) materializing the raw group for every month (validation + HMAC pseudonymisation + partition
replace + blocking checks), and, as the baseline measured in the same run, (3) a bare DuckDB load of
the same files with no validation, pseudonymisation or checks. The ratio (2)/(3) is the cost of doing
ingest properly.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--months", type=int, default=17)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ple_bench_raw_"))
    landing, data = work / "landing", work / "data"
    shutil.rmtree(data, ignore_errors=True)
    os.environ.update(PLE_DATA_DIR=str(data), PLE_LANDING=str(landing))

    from datetime import date

    import dagster as dg
    import duckdb

    from ple_platform.core.data.schema import RAW_TABLES, month_range, add_months
    from ple_platform.core.data.synthetic import SyntheticConfig, generate
    from ple_platform.core.settings import Settings
    from ple_platform.defs.raw.assets import raw_assets
    from ple_platform.defs.resources import build_resources

    start = date(2015, 1, 1)
    months = month_range(start, add_months(start, args.months - 1))
    t0 = time.perf_counter()
    summary = generate(SyntheticConfig(n_customers=args.customers, start_month=start, n_months=args.months, seed=args.seed), landing)
    t_gen = time.perf_counter() - t0
    rss_gen = _peak_rss_mb()
    n_cm, n_tx = summary["total_rows"]["customers"], summary["total_rows"]["transactions"]

    resources = build_resources(Settings.from_env())
    instance = dg.DagsterInstance.ephemeral()
    t0 = time.perf_counter()
    for m in months:
        result = dg.materialize(raw_assets, partition_key=m.isoformat(), resources=resources, instance=instance)
        assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
    t_raw = time.perf_counter() - t0
    rss_raw = _peak_rss_mb()

    # Baseline: the same rows loaded by DuckDB with nothing else (no validation, HMAC, checks, Dagster).
    base_db = work / "baseline.duckdb"
    base_db.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with duckdb.connect(str(base_db)) as con:
        for t in RAW_TABLES:
            con.execute(f"CREATE TABLE {t} AS SELECT * FROM read_parquet('{landing}/{t}/*.parquet')")
    t_base = time.perf_counter() - t0

    rows = {
        "customers": args.customers,
        "months": args.months,
        "customer_months": n_cm,
        "transactions": n_tx,
        "generate_s": round(t_gen, 1),
        "generate_peak_rss_mb": round(rss_gen),
        "raw_materialize_s": round(t_raw, 1),
        "raw_customer_months_per_s": round(n_cm / t_raw),
        "raw_transactions_per_s": round(n_tx / t_raw),
        "total_s": round(t_gen + t_raw, 1),
        "total_customer_months_per_s": round(n_cm / (t_gen + t_raw)),
        "peak_rss_mb": round(rss_raw),
        "baseline_bare_duckdb_load_s": round(t_base, 1),
        "ratio_raw_vs_bare_load": round(t_raw / t_base, 2),
    }
    print("| metric | value |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

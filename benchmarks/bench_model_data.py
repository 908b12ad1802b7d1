"""How long the teacher's training data takes to load from the warehouse: all months in one read per table
(``load_months``) against a baseline measured in the same run, one ``load_months`` call per month (a query per
table and month, the cost before the reads were batched).

Needs a warehouse with features and labels, e.g. the demo's: ``python benchmarks/bench_model_data.py
--warehouse data/warehouse.duckdb --months 2015-06..2016-01 [--max-customers 600] [--threads 1]``. Both paths
are checked to return the same arrays.
"""

from __future__ import annotations

import argparse
import time

import duckdb
import numpy as np

from ple_platform.core.model.data import load_months
from ple_platform.core.data.schema import month_range, parse_month


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--months", default="2015-06..2016-01")
    ap.add_argument("--max-customers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="DuckDB threads (1 = what a busy 2-core machine gives)")
    args = ap.parse_args()
    start, _, end = args.months.partition("..")
    months = month_range(parse_month(start), parse_month(end or start))
    con = duckdb.connect(args.warehouse, read_only=True)
    con.execute(f"SET threads = {int(args.threads)}")

    t0 = time.perf_counter()
    per_month = [load_months(con, [m], max_customers=args.max_customers) for m in months]
    baseline = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = load_months(con, months, max_customers=args.max_customers)
    fast = time.perf_counter() - t0

    for name in batched.groups:
        assert np.array_equal(batched.groups[name], np.concatenate([p.groups[name] for p in per_month])), name
    assert np.array_equal(batched.txn_seq, np.concatenate([p.txn_seq for p in per_month]))
    print(f"{len(months)} months, {batched.n_rows:,} rows, {sum(g.shape[1] for g in batched.groups.values()) + batched.txn_seq.shape[1] * batched.txn_seq.shape[2]:,} columns")
    print(f"  one read per month (baseline): {baseline:7.1f} s")
    print(f"  one read for all months:       {fast:7.1f} s   ({baseline / fast:.1f}x faster)")


if __name__ == "__main__":
    main()

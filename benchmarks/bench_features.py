"""Benchmark: all 17 feature groups for one partition (issue: feature groups).

    python benchmarks/bench_features.py --warehouse /path/warehouse.duckdb --month 2016-05

Needs a warehouse with raw months loaded (e.g. the one bench_raw.py leaves under its --workdir).
Fits are computed first (one anchor month, as a fresh deployment would) and timed separately, then every
group is built for the month from stored fits: seconds per group, customers/s and peak RSS. The
baseline measured in the same run is the cheapest group (product_holdings: one SQL read), so each
group's cost is also printed as a multiple of it.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from datetime import date
from pathlib import Path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--month", default="2016-05")
    ap.add_argument("--fit-end", default="2015-06")
    ap.add_argument("--artifacts", default=None)
    args = ap.parse_args()

    import duckdb

    from ple_platform.core.data.schema import parse_month
    from ple_platform.core.features.build import BuildContext, build_group
    from ple_platform.core.features.fits import FitPolicy, FitStore
    from ple_platform.core.features.spec import FEATURE_GROUPS
    from ple_platform.core.storage import LocalArtifactStore

    month, fit_end = parse_month(args.month), parse_month(args.fit_end)
    store = LocalArtifactStore(Path(args.artifacts or tempfile.mkdtemp(prefix="ple_bench_fits_")))
    con = duckdb.connect(args.warehouse, config={"memory_limit": "4GB"})  # as the warehouse resource does
    policy = FitPolicy(fit_end=fit_end, first_month=date(2015, 1, 1))
    rows = []
    for spec in FEATURE_GROUPS:
        ctx = BuildContext(con, month, policy, FitStore(store, con))
        n = len(ctx.pop)
        t0 = time.perf_counter()
        build_group(spec.name, ctx)  # first call: fits (if any) + features
        first = time.perf_counter() - t0
        ctx = BuildContext(con, month, policy, FitStore(store, con))
        t0 = time.perf_counter()
        build_group(spec.name, ctx)  # second call: stored fits reused, features only
        warm = time.perf_counter() - t0
        rows.append({"group": spec.name, "dim": spec.dim, "fit_s": round(max(first - warm, 0.0), 2), "features_s": round(warm, 2),
                     "customers_per_s": round(n / warm), "peak_rss_mb": round(_rss_mb())})
        print(json.dumps(rows[-1]), flush=True)
    base = next(r for r in rows if r["group"] == "product_holdings")["features_s"] or 1e-9
    total_f = sum(r["features_s"] for r in rows)
    total_fit = sum(r["fit_s"] for r in rows)
    print(f"\ncustomers in {month:%Y-%m}: {n}")
    print("| group | dim | fit (s, once) | features (s) | customers/s | x product_holdings | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['group']} | {r['dim']} | {r['fit_s']} | {r['features_s']} | {r['customers_per_s']} | {r['features_s'] / base:.0f} | {r['peak_rss_mb']} |")
    print(f"| **all 17** | 1211 | {total_fit:.1f} | {total_f:.1f} | {round(n / total_f)} | | {round(_rss_mb())} |")


if __name__ == "__main__":
    main()

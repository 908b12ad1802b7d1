"""Raw backfill: N months as N runs (one per month) vs one run over the range (BackfillPolicy.single_run).

Both write a fresh warehouse from the same synthetic landing zone; the stored partition hashes must match.
Usage: python benchmarks/bench_raw_backfill.py [n_customers] [n_months]
"""

import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb

from ple_platform.core.data.schema import add_months
from ple_platform.core.data.synthetic import SyntheticConfig, generate
from ple_platform.core.settings import Settings
from ple_platform.core.warehouse import partition_content_hash
from ple_platform.defs.raw.assets import raw_assets
from ple_platform.defs.resources import build_resources

START = date(2015, 1, 1)


def _hashes(settings, months):
    with duckdb.connect(settings.warehouse_path, read_only=True) as con:
        return {(t, m): partition_content_hash(con, f"raw.{t}", m)
                for t in ("customers", "holdings", "transactions") for m in months}


def main(n_customers: int = 2000, n_months: int = 6) -> None:
    root = Path(tempfile.mkdtemp())
    generate(SyntheticConfig(n_customers=n_customers, start_month=START, n_months=n_months, seed=3), root / "landing")
    months = [add_months(START, i) for i in range(n_months)]
    out = {}
    for mode in ("per_month", "single_run"):
        settings = Settings.from_env({"PLE_DATA_DIR": str(root / mode), "PLE_LANDING": str(root / "landing"),
                                      "PLE_LANDING_KIND": "synthetic"})
        resources, instance = build_resources(settings), dg.DagsterInstance.ephemeral()
        t0 = time.perf_counter()
        if mode == "per_month":
            for m in months:
                assert dg.materialize(raw_assets, partition_key=m.isoformat(), resources=resources,
                                      instance=instance).success
        else:
            assert dg.materialize(raw_assets, resources=resources, instance=instance, tags={
                "dagster/asset_partition_range_start": months[0].isoformat(),
                "dagster/asset_partition_range_end": months[-1].isoformat()}).success
        out[mode] = (time.perf_counter() - t0, len(instance.get_runs()), _hashes(settings, months))
    assert out["per_month"][2] == out["single_run"][2], "the two ways stored different partitions"
    (pm, pm_runs, _), (sr, sr_runs, _) = out["per_month"], out["single_run"]
    print(f"{n_customers} customers x {n_months} months: per-month {pm:.1f} s ({pm_runs} runs), "
          f"single run {sr:.1f} s ({sr_runs} run), ratio {pm / sr:.2f}x; partition hashes identical")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))

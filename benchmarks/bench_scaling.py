"""Per-row costs that docs/scaling.md extrapolates from, each with a baseline measured in the same run.

* DuckDB bytes per customer-month of a 1,211-column FLOAT feature table (the platform's layout,
  defs/features/assets.py) and of the same rows as zstd Parquet; baseline: uncompressed float32 (4 B x columns).
* LightGBM fit seconds per 10k rows x 1,211 columns (the students' width), at two sizes to read the scaling
  exponent; baseline: the smaller fit.
* Teacher inference (forward only, no grad) samples/s against the vanilla PLE's, same synthetic batches.

    PLE_COMPUTE_THREADS=1 nice -n 10 python benchmarks/bench_scaling.py --rows 10000
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import duckdb
import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_teacher_throughput import synthetic_batch  # noqa: E402

from ple_platform.core.model.ple import PLEConfig, PLEModel  # noqa: E402

N_COLS = 1211


def feature_like(n: int, seed: int) -> np.ndarray:
    """Columns shaped like the real groups: 800 lag-tensor columns ~40% zeros (inactive months), one-hots, dense."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, N_COLS)).astype(np.float32)
    x[:, :800] *= rng.random((n, 800)) > 0.4
    x[:, 800:855] = (rng.random((n, 55)) < 0.1).astype(np.float32)  # multi-hot groups
    return x


def disk_bytes(n: int) -> dict:
    x = feature_like(n, 0)
    ids = [f"c{i:08d}" for i in range(n)]
    cols = [f"f{j}" for j in range(N_COLS)]
    table = pa.table([pa.array(ids), pa.array(np.full(n, np.datetime64("2016-05-01", "D")), pa.date32())]
                     + [pa.array(x[:, j]) for j in range(N_COLS)], names=["customer_id", "month", *cols])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.duckdb")
        con = duckdb.connect(path)
        con.execute("SET threads=1")
        con.execute("CREATE SCHEMA features")
        con.execute("CREATE TABLE features.t (customer_id VARCHAR, month DATE, "
                    + ", ".join(f'"{c}" FLOAT' for c in cols) + ")")
        con.register("rows", table)
        con.execute("INSERT INTO features.t SELECT * FROM rows")
        con.execute("CHECKPOINT")
        con.close()
        duck = os.path.getsize(path)
        pq_path = os.path.join(d, "f.parquet")
        pq.write_table(table, pq_path, compression="zstd")
        parquet = os.path.getsize(pq_path)
    raw = n * N_COLS * 4
    return {"rows": n, "duckdb_bytes_per_row": round(duck / n), "parquet_zstd_bytes_per_row": round(parquet / n),
            "baseline_float32_bytes_per_row": raw // n, "duckdb_over_float32": round(duck / raw, 2),
            "parquet_over_float32": round(parquet / raw, 2)}


def lgb_fit(n: int, rounds: int) -> float:
    x = feature_like(n, 1)
    y = x[:, 0] * 0.5 + x[:, 900] + np.random.default_rng(2).standard_normal(n) * 0.5 > 0
    params = {"objective": "binary", "num_leaves": 31, "learning_rate": 0.05, "num_threads": 1,
              "verbose": -1, "force_col_wise": True, "seed": 0}
    t0 = time.perf_counter()
    lgb.train(params, lgb.Dataset(x, y.astype(np.float32)), num_boost_round=rounds)
    return time.perf_counter() - t0


def inference(batch: int, steps: int) -> dict:
    batches = [synthetic_batch(batch, 100, s)[0] for s in range(steps)]
    out = {}
    for kind in ("mlp", "heterogeneous"):
        m = PLEModel(PLEConfig(expert_kind=kind, expert_dim=64, n_layers=3)).eval()
        with torch.no_grad():
            m(batches[0])
            t0 = time.perf_counter()
            for b in batches[1:]:
                m(b)
        out[kind] = batch * (steps - 1) / (time.perf_counter() - t0)
    return {"batch": batch, "vanilla_infer_samples_per_s": round(out["mlp"], 1),
            "teacher_infer_samples_per_s": round(out["heterogeneous"], 1),
            "vanilla_over_teacher": round(out["mlp"] / out["heterogeneous"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    res = {"disk": disk_bytes(args.rows)}
    small, big = lgb_fit(args.rows // 2, args.rounds), lgb_fit(args.rows, args.rounds)
    res["lightgbm"] = {"cols": N_COLS, "rounds": args.rounds, f"fit_s_{args.rows // 2}": round(small, 2),
                       f"fit_s_{args.rows}": round(big, 2), "ratio_2x_rows": round(big / small, 2),
                       "fit_s_per_10k_rows_per_100_rounds": round(big * 1e4 / args.rows * 100 / args.rounds, 2)}
    res["teacher_inference"] = inference(args.batch, args.steps)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

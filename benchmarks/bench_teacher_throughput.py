"""Benchmark: CPU training throughput (samples/s) of the heterogeneous teacher vs a vanilla PLE, same run.

    PYTHONPATH=. python benchmarks/bench_teacher_throughput.py --threads 2 --batch 256 --steps 12
    PLE_WAREHOUSE=/path/warehouse.duckdb python benchmarks/bench_teacher_throughput.py   # real rows

Both models take full training steps (forward, multitask loss, backward, AdamW step) on the same batches, in the
same process, with the same thread count; the ratio vanilla / teacher is what the teacher's experts cost. Without
``PLE_WAREHOUSE`` the batches are synthetic rows in the Batch contract with ``--txn`` real transactions per
customer (the lag tensor holds up to 200; dense demo customers fill it). ``--profile`` adds the forward time of
each shared expert of the teacher's first layer, so the expensive one is named.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from ple_platform.core.data.taxonomy import mcc_hierarchy
from ple_platform.core.features.spec import CATEGORICAL_COLUMNS, FEATURE_GROUPS, LAG_LENGTH
from ple_platform.core.model.losses import multitask_loss
from ple_platform.core.model.ple import PLEConfig, PLEModel
from ple_platform.core.tasks.spec import TASKS


def synthetic_batch(n: int, n_txn: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for grp in FEATURE_GROUPS:
        x = torch.randn(n, grp.dim, generator=g)
        for j, c in enumerate(grp.columns):
            if c in CATEGORICAL_COLUMNS:
                x[:, j] = torch.randint(0, 9, (n,), generator=g).float()
        batch[grp.name] = x
    holdings = (torch.rand(n, 24, generator=g) < 0.2).float()
    batch["product_holdings"], batch["holdings"] = holdings, holdings.clone()
    counts = torch.randint(max(n_txn // 2, 1), min(2 * n_txn, LAG_LENGTH) + 1, (n,), generator=g)
    real = torch.arange(LAG_LENGTH)[None, :] < counts[:, None]
    seq = torch.stack([
        torch.rand(n, LAG_LENGTH, generator=g) * 100,
        torch.randint(0, mcc_hierarchy().n_codes, (n, LAG_LENGTH), generator=g).float(),
        torch.sort(torch.rand(n, LAG_LENGTH, generator=g) * 365, dim=1).values,
        torch.randint(0, 24, (n, LAG_LENGTH), generator=g).float(),
    ], dim=2)
    batch["txn_seq"] = torch.where(real[..., None], seq, torch.full_like(seq, -1.0))
    pts = 16
    mask = torch.arange(pts)[None, :] < torch.randint(0, pts + 1, (n,), generator=g)[:, None]
    birth = torch.rand(n, pts, generator=g)
    dg = torch.stack([birth, birth + torch.rand(n, pts, generator=g), torch.randint(0, 2, (n, pts), generator=g).float(),
                      torch.randint(0, 2, (n, pts), generator=g).float()], dim=2)
    batch["diagrams"], batch["diagram_mask"] = torch.where(mask[..., None], dg, torch.zeros_like(dg)), mask
    labels = {}
    for t in TASKS:
        if t.kind == "binary":
            labels[t.name] = (torch.rand(n, generator=g) < 0.05).float()
        elif t.kind == "multiclass":
            labels[t.name] = torch.randint(0, t.n_classes, (n,), generator=g).float()
        else:
            labels[t.name] = torch.randn(n, generator=g)
    return batch, labels


def warehouse_batches(path: str, batch: int, steps: int) -> list:
    import duckdb

    from ple_platform.core.model.data import TeacherData
    from ple_platform.core.tasks.split import time_split

    with duckdb.connect(path, read_only=True) as con:
        months = [r[0] for r in con.execute("SELECT DISTINCT month FROM labels.task_labels ORDER BY 1").fetchall()]
        data = TeacherData.from_split(con, time_split(months[-1], months[0]), parts=("train",))
    md = data.part("train")
    rng = np.random.default_rng(0)
    return [(md.to_batch(r), md.label_tensors(r)) for r in (rng.choice(md.n_rows, batch) for _ in range(steps))]


def throughput(model: PLEModel, batches: list, warmup: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    n, seconds = 0, 0.0
    for i, (b, y) in enumerate(batches):
        t0 = time.perf_counter()
        out = model(b)
        loss, _ = multitask_loss(out.outputs, y, weights=model.loss_weighting, aux=out.aux_loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            seconds += time.perf_counter() - t0
            n += len(next(iter(y.values())))
    return n / seconds


def profile_experts(model: PLEModel, batch: dict) -> dict[str, float]:
    """Forward + backward seconds of each first-layer shared expert on one batch."""
    out = {}
    for name, expert in model.shared0.items():
        t0 = time.perf_counter()
        expert(batch).sum().backward()
        out[name] = round(time.perf_counter() - t0, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--txn", type=int, default=100, help="mean real transactions per customer (synthetic rows)")
    ap.add_argument("--expert-dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if os.environ.get("PLE_WAREHOUSE"):
        batches = warehouse_batches(os.environ["PLE_WAREHOUSE"], args.batch, args.steps)
    else:
        batches = [synthetic_batch(args.batch, args.txn, s) for s in range(args.steps)]
    shape = dict(expert_dim=args.expert_dim, n_layers=args.layers)
    vanilla = PLEModel(PLEConfig(expert_kind="mlp", **shape))
    teacher = PLEModel(PLEConfig(expert_kind="heterogeneous", **shape))
    result = {"threads": args.threads, "batch": args.batch, "steps": args.steps, **shape,
              "rows": "warehouse" if os.environ.get("PLE_WAREHOUSE") else f"synthetic, ~{args.txn} txn/customer"}
    result["vanilla_samples_per_s"] = round(throughput(vanilla, batches, args.warmup), 1)
    result["teacher_samples_per_s"] = round(throughput(teacher, batches, args.warmup), 1)
    result["vanilla_over_teacher"] = round(result["vanilla_samples_per_s"] / result["teacher_samples_per_s"], 2)
    if args.profile:
        result["expert_seconds_per_batch"] = profile_experts(teacher, batches[0][0])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

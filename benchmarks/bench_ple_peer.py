"""Benchmark: training-step throughput of our vanilla PLE (MLP experts) vs torch-rechub's PLE, same batches.

    uv venv /tmp/rechub_env && uv pip install -p /tmp/rechub_env/bin/python torch==2.13.0 torch-rechub
    echo /work/main/.venv/lib/python3.11/site-packages > /tmp/rechub_env/lib/python3.11/site-packages/ple.pth
    echo /work/main >> /tmp/rechub_env/lib/python3.11/site-packages/ple.pth
    PLE_WAREHOUSE=/path/warehouse.duckdb /tmp/rechub_env/bin/python benchmarks/bench_ple_peer.py

torch-rechub is a peer installed only in this benchmark environment (never a project dependency). Equal widths:
3 extraction levels, 7 shared + 1 task-specific expert per task, expert MLP 1,211 -> 128 -> 64, towers 64 -> 32,
13 task heads; Adam, batch 256, one torch thread, the same standardised rows of a real warehouse split. What
differs (and is reported, not hidden): our model embeds the 7 categorical codes, has multiclass heads
(7 and 50 classes) with softmax CE, focal and Huber losses with label masks and learned uncertainty weights;
torch-rechub's PLE has 13 sigmoid outputs trained here with BCE on the same binary-ised labels.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import date

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    import duckdb
    from torch_rechub.basic.features import DenseFeature
    from torch_rechub.models.multi_task import PLE as RechubPLE

    from ple_platform.core.model.data import TeacherData
    from ple_platform.core.model.losses import multitask_loss
    from ple_platform.core.model.ple import PLEConfig, PLEModel
    from ple_platform.core.tasks.spec import TASKS
    from ple_platform.core.tasks.split import time_split

    with duckdb.connect(os.environ["PLE_WAREHOUSE"], read_only=True) as con:
        months = [r[0] for r in con.execute("SELECT DISTINCT month FROM labels.task_labels ORDER BY 1").fetchall()]
        split = time_split(months[-1] if isinstance(months[-1], date) else date.fromisoformat(str(months[-1])),
                           months[0])
        data = TeacherData.from_split(con, split, parts=("train",))
    md = data.part("train")
    n = md.n_rows
    rng = np.random.default_rng(0)
    batches = [rng.choice(n, args.batch, replace=n < args.batch) for _ in range(args.steps + 5)]

    ours = PLEModel(PLEConfig(expert_kind="mlp", n_layers=3, expert_dim=64, mlp_hidden=(128,), tower_dims=(64, 32)))
    X = torch.from_numpy(md.matrix().astype(np.float32))
    labels = {t.name: torch.from_numpy(md.labels[t.name].astype(np.float32)) for t in TASKS}
    y_bin = torch.stack([torch.nan_to_num((labels[t.name] > 0).float()) for t in TASKS], dim=1)
    peer = RechubPLE([DenseFeature("x", embed_dim=X.shape[1])], ["classification"] * len(TASKS), n_level=3,
                     n_expert_specific=1, n_expert_shared=7,
                     expert_params={"dims": [128, 64]}, tower_params_list=[{"dims": [64, 32]}] * len(TASKS))

    def step_ours(opt, rows):
        out = ours(md.to_batch(rows))
        loss, _ = multitask_loss(out.outputs, {k: v[rows] for k, v in labels.items()},
                                 weights=ours.loss_weighting, aux=out.aux_loss)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def step_peer(opt, rows):
        p = peer({"x": X[rows]})
        loss = torch.nn.functional.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), y_bin[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()

    results = {}
    for name, model, step in (("vanilla PLE (ours)", ours, step_ours), ("torch-rechub PLE", peer, step_peer)):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for rows in batches[:5]:
            step(opt, rows)
        t0 = time.perf_counter()
        for rows in batches[5:]:
            step(opt, rows)
        secs = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        results[name] = (args.steps * args.batch / secs, params)
    base = results["torch-rechub PLE"][0]
    print(f"{n} training rows, batch {args.batch}, {args.steps} steps, 1 thread")
    print("| model | parameters | samples/s | vs torch-rechub |\n|---|---|---|---|")
    for name, (sps, params) in results.items():
        print(f"| {name} | {params:,} | {sps:,.0f} | {sps / base:.2f}x |")


if __name__ == "__main__":
    main()

"""Benchmark: do the teacher's task gates weight the expert named for a planted mechanism more on the customers
the mechanism acted on? (issue 12 item 6; mechanisms in docs/data.md §4.1)

    python benchmarks/bench_gates_vs_mechanism.py --customers 3000 --workdir /tmp/bench_gates

Two panels from the same seed: mechanisms ON, and OFF as the baseline (the same customers and draws with
nothing planted; its ground-truth flags are all 0, so the OFF comparison uses the customers flagged on the ON
panel, matched by id: a gap there comes from who gets flagged -- persona, activity -- not from the mechanism).
Each panel runs in its own process (own PLE_DATA_DIR / DAGSTER_HOME): raw
2015-01..2015-11, the 17 feature groups and labels for 2015-06..2015-10 through the production assets, a small
teacher of model month 2015-11 (train 2015-06..08, validate 09, test 10; expert_dim 32, n_layers 2), and the
layer-0 task-gate weights of every test-month customer (``predict_month``). Per (mechanism, task, expert) it prints
mean gate weight on flagged customers minus the others, with a 95% bootstrap CI (customers resampled within each
side), for ON and OFF, and writes ``<workdir>/gates_<panel>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

MODEL_MONTH = date(2015, 11, 1)
# (mechanism flag, task, experts named for it): which expert should a task lean on when the mechanism acted.
COMPARISONS = (
    ("mech_burst", "will_acquire_lending", ("temporal",)),
    ("mech_sibling_shift", "will_acquire_deposits", ("hgcn", "ot")),
    ("mech_peer_products", "will_acquire_investments", ("lightgcn",)),
    ("mech_peer_products", "will_acquire_deposits", ("lightgcn",)),
    ("mech_routine_break", "churn_signal", ("temporal", "perslay")),
)
PANEL_ENV = {"PLE_START_MONTH": "2015-01-01", "PLE_END_MONTH": "2015-11-01", "PLE_FIT_END_MONTH": "2015-06-01"}


def _run_panel(args) -> None:
    """One panel, in this process: generate, materialize, train, dump gates + ground-truth flags of the test month."""
    import duckdb
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ple_platform.cli import materialize_groups
    from ple_platform.core.data.schema import month_range
    from ple_platform.core.data.synthetic import MECHANISMS, SyntheticConfig, generate
    from ple_platform.core.model.inference import load_checkpoint_data, predict_month
    from ple_platform.core.model.teacher import TeacherSettings, fit_teacher
    from ple_platform.core.settings import Settings

    work = Path(args.workdir) / args.panel
    settings = Settings.from_env()
    mech = MECHANISMS if args.panel == "on" else ()
    if not (work / "generate.done").exists():
        generate(SyntheticConfig(n_customers=args.customers, start_month=settings.start_month,
                                 n_months=len(month_range(settings.start_month, settings.end_month)),
                                 seed=args.seed, mechanisms=mech), settings.landing_path)
        (work / "generate.done").write_text("ok")
    for name, groups, months in (("raw", ["raw"], month_range(settings.start_month, settings.end_month)),
                                 ("features", ["features"], month_range(settings.fit_end_month, date(2015, 10, 1))),
                                 ("labels", ["labels"], month_range(settings.fit_end_month, date(2015, 10, 1)))):
        if not (work / f"{name}.done").exists():
            if not materialize_groups(groups, months):
                raise SystemExit(f"{args.panel}: materializing {name} failed")
            (work / f"{name}.done").write_text("ok")
    teacher = TeacherSettings(max_customers_per_month=None, epochs=args.epochs, seed=args.seed,
                              model={"expert_dim": 32, "n_layers": 2})
    with duckdb.connect(settings.warehouse_path, read_only=True) as con:
        fitted = fit_teacher(con, MODEL_MONTH, settings.fit_end_month, teacher, work / "ckpt")
        cd = load_checkpoint_data(con, fitted.checkpoint, parts=("test",), all_customers=("test",))
    pred = predict_month(cd.model, cd.scaled("test"))
    gt = pq.read_table(Path(settings.landing_path) / "ground_truth")
    gt = gt.filter(pc.equal(gt["month"], pa.scalar(cd.split.test, pa.date32())))
    ids = [str(c) for c in pred.customer_ids]
    # The ground truth carries the generator's source ids, the warehouse the raw layer's keyed pseudonyms of them.
    from ple_platform.core.governance.audit.pseudonymise import pseudonymisation_key, pseudonymise

    key = pseudonymisation_key()
    row_of = {pseudonymise(str(c), key): i for i, c in enumerate(gt["customer_id"].to_pylist())}
    rows = np.array([row_of.get(c, -1) for c in ids])
    out = {"customers": ids, "test_month": cd.split.test.isoformat(), "teacher_seconds": fitted.seconds}
    for flag in sorted({c[0] for c in COMPARISONS}):
        v = np.asarray(pc.cast(gt[flag], pa.int64()).fill_null(0).to_numpy(), dtype=np.int64)
        out[flag] = np.where(rows >= 0, v[np.maximum(rows, 0)], 0).tolist()
    out["gates"] = {task: {e: pred.shared_gates(task)[e].astype(float).tolist() for e in pred.shared_gates(task)}
                    for task in sorted({c[1] for c in COMPARISONS})}
    (Path(args.workdir) / f"gates_{args.panel}.json").write_text(json.dumps(out))


def _flagged(flag: str, task: str, values) -> "np.ndarray":
    """Rows the mechanism acted on for the task: for peers only peer products of the task's group count."""
    import numpy as np

    from ple_platform.core.data.schema import PRODUCTS

    v = np.asarray(values, dtype=np.int64)
    if flag != "mech_peer_products":
        return v > 0
    group = task.removeprefix("will_acquire_")
    mask = sum(1 << p.index for p in PRODUCTS if p.group == group)
    return (v & mask) > 0


def _boot_diff(x, flagged, rng, n_boot=2000):
    import numpy as np

    a, b = x[flagged], x[~flagged]
    ia = rng.integers(0, len(a), (n_boot, len(a)))
    ib = rng.integers(0, len(b), (n_boot, len(b)))
    d = a[ia].mean(1) - b[ib].mean(1)
    return float(a.mean() - b.mean()), float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))


def report(workdir: Path) -> None:
    import numpy as np

    res = {p: json.loads((workdir / f"gates_{p}.json").read_text()) for p in ("on", "off")}
    on_ids = res["on"]["customers"]
    rng = np.random.default_rng(0)
    print("| mechanism | task | expert | n flagged / n (ON) | ON: mean gate flagged − others [95% CI] | "
          "OFF (same customers flagged): [95% CI] |")
    print("|---|---|---|---|---|---|")
    for flag, task, experts in COMPARISONS:
        flagged_on = _flagged(flag, task, res["on"][flag])
        by_id = dict(zip(on_ids, flagged_on))
        flagged_off = np.array([by_id.get(c, False) for c in res["off"]["customers"]])
        for e in experts:
            row = []
            for p, fl in (("on", flagged_on), ("off", flagged_off)):
                g = np.asarray(res[p]["gates"][task][e])
                if fl.sum() < 5 or (~fl).sum() < 5:
                    row.append("too few flagged")
                    continue
                m, lo, hi = _boot_diff(g, fl, rng)
                row.append(f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}] (mean {g.mean():.3f})")
            print(f"| {flag} | {task} | {e} | {int(flagged_on.sum())} / {len(flagged_on)} | {row[0]} | {row[1]} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=3000, help="1,500 is too few: a binary task lacks 5 positives")
    ap.add_argument("--workdir", default="/tmp/bench_gates")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--panel", choices=("on", "off"), help="internal: run one panel in this process")
    ap.add_argument("--report", action="store_true", help="only print the comparison of stored results")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    if args.panel:
        _run_panel(args)
        return
    if not args.report:
        procs = []
        for panel in ("on", "off"):
            work = workdir / panel
            (work / "dagster_home").mkdir(parents=True, exist_ok=True)
            env = {**os.environ, **PANEL_ENV, "PLE_DATA_DIR": str(work / "data"), "DAGSTER_HOME": str(work / "dagster_home")}
            cmd = [sys.executable, __file__, "--panel", panel, "--customers", str(args.customers),
                   "--workdir", str(workdir), "--seed", str(args.seed), "--epochs", str(args.epochs)]
            procs.append(subprocess.Popen(cmd, env=env))
        if [p.wait() for p in procs] != [0, 0]:
            raise SystemExit("a panel failed (finished steps are kept; re-run to resume)")
    report(workdir)


if __name__ == "__main__":
    main()

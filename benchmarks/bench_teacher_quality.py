"""Benchmark: teacher vs per-task LightGBM (and vanilla PLE) out of time, over seeds (issue: PLE teacher).

    python benchmarks/bench_teacher_quality.py --customers 20000 --workdir /tmp/bench_quality --seeds 0 1 2

Stage 1 (once per workdir): synthetic panel and raw for 2015-01..2016-05, the 17 feature groups and labels for
2015-06..2016-05, all through the production assets (fit anchor 2015-06). Stage 2 per seed: the teacher of model
month 2016-05 (train 2015-06..2016-02, validate 2016-03, test 2016-04) and ``assess_teacher`` — the LightGBM baseline and the vanilla PLE are
trained on the same rows and scored on the same test customers in the same run. Prints per seed the mean binary
AUC of each model with the paired 95% CI of teacher − LightGBM, the worst task, throughput (samples/s) of the
teacher and of the vanilla PLE, and the verdict against the goal (mean ≥ +0.005, no task below −0.005).
The oracle ceiling (``core/model/oracle.py``: the LightGBM recipe on the same rows plus the generator's ground
truth) is trained in the same run, and every model is also reported as a fraction of it (``--no-oracle`` skips).
Writes the full results as JSON to ``<workdir>/quality<tag>_seed<k>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date
from pathlib import Path


MODEL_MONTH = date(2016, 5, 1)


def _prepare(workdir: Path, customers: int) -> None:
    """Generate the panel and materialize raw (all months), then features and labels for the months the model reads.

    Each step leaves a marker only when it succeeded, so an interrupted stage resumes where it stopped. Features
    start at the fit anchor: earlier months are warm-up months that no split of model month 2016-05 trains on.
    """
    from ple_platform.cli import cmd_generate, materialize_groups
    from ple_platform.core.data.schema import month_range
    from ple_platform.core.settings import Settings

    settings = Settings.from_env()
    steps = [
        ("generate", None, None),
        ("raw", ["raw"], month_range(settings.start_month, settings.end_month)),
        ("features", ["features", "labels"], month_range(settings.fit_end_month, MODEL_MONTH)),
    ]
    for name, groups, months in steps:
        marker = workdir / f"{name}.done"
        if marker.exists():
            continue
        t0 = time.perf_counter()
        if groups is None:
            cmd_generate(argparse.Namespace(customers=customers, seed=7, out=str(settings.landing_path), months=None))
        elif not materialize_groups(groups, months):
            raise SystemExit(f"stage 1 step {name!r} failed; fix it and re-run (finished steps are kept)")
        print(f"stage 1 {name}: {time.perf_counter() - t0:.0f}s", flush=True)
        marker.write_text("ok")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=20000)
    ap.add_argument("--workdir", default="/tmp/bench_quality")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--per-month", type=int, default=2000, help="teacher sample per month (None = all)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--expert-dim", type=int, default=32)
    ap.add_argument("--tag", default="", help="names this configuration's outputs (several can share a workdir)")
    ap.add_argument("--summarize", action="store_true", help="only print the summary of stored results")
    ap.add_argument("--no-oracle", action="store_true", help="skip the oracle ceiling (ground truth + LightGBM)")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    if args.summarize:
        summarize(workdir, args.tag, args.seeds)
        return
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PLE_DATA_DIR", str(workdir / "data"))
    os.environ.setdefault("DAGSTER_HOME", str(workdir / "dagster_home"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    _prepare(workdir, args.customers)

    import duckdb

    from ple_platform.core.model.assessment import AssessmentSettings, assess_teacher, results_markdown
    from ple_platform.core.model.teacher import TeacherSettings, fit_teacher
    from ple_platform.core.settings import Settings

    settings = Settings.from_env()
    for seed in args.seeds:
        teacher = TeacherSettings(max_customers_per_month=args.per_month, epochs=args.epochs, seed=seed,
                                  model={"expert_dim": args.expert_dim, "n_layers": 2})
        with duckdb.connect(settings.warehouse_path, read_only=True) as con:
            fitted = fit_teacher(con, MODEL_MONTH, settings.fit_end_month, teacher, workdir / f"ckpt{args.tag}{seed}")
            result = assess_teacher(con, fitted.checkpoint, workdir / f"assess{args.tag}{seed}",
                                    AssessmentSettings(n_boot=200, lgb_num_boost_round=400))
            if not args.no_oracle:
                from ple_platform.core.governance.audit.pseudonymise import hmac_sql, pseudonymisation_key
                from ple_platform.core.model.inference import load_checkpoint_data
                from ple_platform.core.model.oracle import assess_oracle

                raw = load_checkpoint_data(con, fitted.checkpoint, all_customers=("test",)).raw
                key = pseudonymisation_key()  # the warehouse's ids are this key's pseudonyms of the source ids
                result["oracle"] = assess_oracle(raw, settings.landing_path, seed=seed,
                                                 pseudonym_sql=lambda expr: hmac_sql(expr, key))
        result["teacher_fit"] = {"samples_per_second": fitted.samples_per_second, "seconds": fitted.seconds,
                                 "epochs": args.epochs, "per_month": args.per_month}
        (workdir / f"quality{args.tag}_seed{seed}.json").write_text(json.dumps(result, default=str, indent=1))
        print(results_markdown(result), flush=True)
    summarize(workdir, args.tag, args.seeds)


def summarize(workdir: Path, tag: str, seeds: list[int]) -> None:
    """Per-seed rows and the across-seed verdict from the stored JSON results of one configuration."""
    import numpy as np
    from scipy import stats

    from ple_platform.core.tasks.spec import TASKS_BY_NAME

    results = {s: json.loads((workdir / f"quality{tag}_seed{s}.json").read_text()) for s in seeds}
    from ple_platform.core.model.oracle import fraction_of_oracle

    print("\n| seed | teacher AUC | LightGBM AUC | vanilla PLE AUC | oracle AUC | fraction of oracle (teacher / LightGBM "
          "/ vanilla) | teacher − LightGBM [95% CI] | worst task | teacher samples/s | vanilla samples/s | goal met |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for seed, r in results.items():
        auc, goal = r["mean_binary_auc"], r["goal"]
        lo, hi = goal["mean_auc_diff_ci"]
        sps = (r.get("teacher_fit") or {}).get("samples_per_second")
        oracle = (r.get("oracle") or {}).get("mean_binary_auc", float("nan"))
        frac = " / ".join(f"{fraction_of_oracle(auc.get(m, float('nan')), oracle):.2f}"
                          for m in ("teacher", "lightgbm", "vanilla_ple"))
        print(f"| {seed} | {auc['teacher']:.4f} | {auc['lightgbm']:.4f} | {auc.get('vanilla_ple', float('nan')):.4f} | "
              f"{oracle:.4f} | {frac} | "
              f"{goal['mean_auc_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {goal['worst_task']} "
              f"({goal['worst_task_diff']:+.4f}) | {'–' if sps is None else f'{sps:.0f}'} | "
              f"{r['vanilla_ple'].get('samples_per_second') or float('nan'):.0f} | {goal['met']} |")
    # Across seeds: mean and a t-interval over the per-seed differences (each seed redraws the teacher's init and
    # its training subsample, so the interval covers both).
    diffs = np.array([r["goal"]["mean_auc_diff"] for r in results.values()])
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1 else np.nan
    means = {m: np.mean([r["mean_binary_auc"][m] for r in results.values()]) for m in ("teacher", "lightgbm", "vanilla_ple")}
    per_task = {}
    for r in results.values():
        for t, d in r["differences"]["teacher_minus_lightgbm"].items():
            if t in TASKS_BY_NAME and TASKS_BY_NAME[t].kind == "binary" and "auc" in d:
                per_task.setdefault(t, []).append(d["auc"]["value"])
    task_means = {t: float(np.mean(v)) for t, v in per_task.items()}
    worst = min(task_means, key=task_means.get)
    met = diffs.mean() >= 0.005 and min(task_means.values()) >= -0.005
    print(f"\nover {len(diffs)} seeds: teacher {means['teacher']:.4f}, LightGBM {means['lightgbm']:.4f}, vanilla PLE "
          f"{means['vanilla_ple']:.4f}; teacher − LightGBM {diffs.mean():+.4f} (95% t-interval over seeds "
          f"[{diffs.mean() - half:+.4f}, {diffs.mean() + half:+.4f}]); per task: "
          + ", ".join(f"{t} {v:+.3f}" for t, v in sorted(task_means.items(), key=lambda kv: kv[1]))
          + f"; worst {worst}; goal (≥ +0.005, no task < −0.005) met: {bool(met)}")

if __name__ == "__main__":
    main()

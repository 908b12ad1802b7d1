"""``ple-platform``: the command line for ML engineers, validators and auditors.

    ple-platform generate --customers 5000 --seed 7 --out data/landing
    ple-platform demo                       # generate + materialize the demo groups for every month
    ple-platform materialize --group raw --months 2016-01..2016-05
    ple-platform registry                   # model versions, champion history, decisions with reasons
    ple-platform approve v2016.05-1a2b3c4d5e --approver risk.officer@bank --note "reviewed fairness"
    ple-platform audit verify               # OK, or the first broken entry (exit 1)
    ple-platform recover                    # after a killed run: fail it and free its warehouse pool slot
    ple-platform lineage <recommendation-id | model-version>
    ple-platform gpu-train-teacher          # the GPU pod's command (Dagster Pipes; launched by ple_teacher)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from ple_platform.core.data.schema import month_range, parse_month
from ple_platform.core.settings import Settings, SettingsError
from ple_platform.run_recovery import launch_tags, recover_dead_runs, slot_holders


class UsageError(ValueError):
    """A mistake in how a command was called (bad month, unknown group, bad option): one line, exit code 2."""

DEMO_GROUPS = ("raw", "features", "labels")
DEMO_MODEL_MONTHS = 2  # the model chain runs for the newest months (the first becomes champion, the next challenges)
# Laptop-sized model settings for the demo (the production defaults are the run-config defaults in the UI).
DEMO_RUN_CONFIG = {
    "ple_teacher": {"max_customers_per_month": 600, "epochs": 2, "batch_size": 256, "expert_dim": 32, "n_layers": 2},
    # A cheaper LightGBM recipe for the demo's baselines and students (63 bins, 31 leaves, patience 10): the demo
    # shows every step in minutes on 2 cores; production keeps 255 bins, 63 leaves and patience 30.
    "teacher_evaluation": {"n_boot": 100, "lgb_num_boost_round": 150, "lgb_early_stopping": 10, "lgb_max_bin": 63,
                           "lgb_num_leaves": 31},
    # Fidelity thresholds for 600 sampled customers per month: the production defaults (Spearman >= 0.8, top-10%
    # agreement >= 0.7) stopped a DISTILL student at Spearman 0.49 on the demo panel; the demo relaxes them and
    # says so in each student's check metadata.
    "student": {"num_boost_round": 150, "early_stopping_rounds": 10, "selection_rounds": 30, "n_boot": 100,
                "max_bin": 63, "num_leaves": 31,
                "min_spearman": 0.4, "min_topk_agreement": 0.4, "max_auc_gap": 0.1, "max_ece": 0.1},
    "challenger_evaluation": {"n_boot": 200},
}


def _months(spec: str | None, settings: Settings, within_partitions: bool = False) -> list[date]:
    """The months of ``YYYY-MM..YYYY-MM`` (or one month); a reversed range, or with ``within_partitions`` a month
    outside the configured partitions, is a ``UsageError`` naming the month and the valid range."""
    if not spec:
        return month_range(settings.start_month, settings.end_month)
    start, sep, end = spec.partition("..")
    try:
        first, last = parse_month(start), parse_month(end if sep else start)
    except ValueError as err:
        raise UsageError(f"--months {spec}: {err}") from None
    if last < first:
        raise UsageError(f"--months {spec}: the range is reversed ({last:%Y-%m} is before {first:%Y-%m}); "
                         f"write it as {last:%Y-%m}..{first:%Y-%m}")
    if within_partitions:
        for month in (first, last):
            if not settings.start_month <= month <= settings.end_month:
                raise UsageError(f"--months {spec}: {month:%Y-%m} is outside the configured partitions "
                                 f"{settings.start_month:%Y-%m}..{settings.end_month:%Y-%m} "
                                 "(PLE_START_MONTH/PLE_END_MONTH)")
    return month_range(first, last)


def _check_groups(groups: list[str]) -> None:
    """Refuse asset group names the definitions do not have (Dagster would otherwise fail mid-run)."""
    from ple_platform.definitions import load_definitions

    known = {g for a in load_definitions().assets or [] for g in getattr(a, "group_names_by_key", {}).values()}
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise UsageError(f"--group {' '.join(unknown)}: unknown asset group (known: {', '.join(sorted(known))})")


def cmd_generate(args: argparse.Namespace) -> int:
    from ple_platform.core.data.synthetic import SyntheticConfig, generate

    settings = Settings.from_env()
    out = Path(args.out) if args.out else settings.landing_path
    months = _months(args.months, settings)
    try:
        config = SyntheticConfig(n_customers=args.customers, start_month=months[0], n_months=len(months),
                                 seed=args.seed)
    except ValueError as err:
        raise UsageError(str(err)) from None
    t0 = time.perf_counter()
    summary = generate(config, out, progress=lambda msg: print(f"  {msg}", flush=True))
    print(f"generated {summary.get('total_rows', summary)} into {out} in {time.perf_counter() - t0:.1f}s")
    return 0


# Dagster's console logger would print every step's traceback in the middle of the output; the CLI prints its own
# one-line summary of each failure instead (full logs stay in the run, visible in the UI).
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def _cause(error) -> str:
    """The innermost cause's first line: the part of a Dagster error chain that says why."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return (error.message or "").strip().splitlines()[0] if error and error.message else "unknown error"


@contextmanager
def _quiet_dagster_log():
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def failure_lines(result) -> list[str]:
    """One line per failed blocking check and per failed step: what failed, why, and what to do."""
    import dagster as dg

    lines = []
    for c in result.get_asset_check_evaluations():
        if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR:
            lines.append(f"FAILED check {c.asset_key.to_user_string()}.{c.check_name}: {c.description or 'no detail'} "
                         f"-> downstream steps were skipped; see the check's metadata in the UI (run "
                         f"{result.run_id[:8]}) and docs/operations.md#when-a-check-fails")
    for event in result.get_step_failure_events():
        lines.append(f"FAILED step {event.step_key}: {_cause(event.step_failure_data.error)} -> full log: run "
                     f"{result.run_id[:8]} in the UI (make ui); fix the cause and rerun the same command")
    return lines


def _materialize(selection, month: date | None, run_config: dict | None = None, tags: dict | None = None):
    import dagster as dg

    from ple_platform.definitions import load_definitions
    from ple_platform.progress_view import terminal_progress

    defs = load_definitions()
    instance = dg.DagsterInstance.get()
    _before_launch(instance)
    config = {**(run_config or {}), **QUIET_LOGGERS}
    with terminal_progress():
        return dg.materialize(list(defs.assets or []), selection=selection,
                              partition_key=month.isoformat() if month else None,
                              instance=instance, resources=defs.resources, run_config=config,
                              raise_on_error=False, tags={"ple/launched_by": "cli", **launch_tags(), **(tags or {})})


def _before_launch(instance, echo=print, poll_s: float = 1.0) -> None:
    """Release what dead runs hold, and wait here — saying for what — while a live run holds the warehouse pool.

    Waiting here rather than inside Dagster's executor is what lets Ctrl-C stop it: a launched in-process run
    whose step is blocked on a pool defers SIGINT until the step can run."""
    from ple_platform.defs.raw.assets import WAREHOUSE_POOL

    said = False
    while True:
        recover_dead_runs(instance, echo=lambda line: echo(f"    {line}"))
        holders = slot_holders(instance, WAREHOUSE_POOL)
        if not holders:
            return
        if not said:
            echo(f"    waiting for pool {WAREHOUSE_POOL} (one warehouse writer at a time), held by "
                 f"{'; '.join(holders)}; Ctrl-C stops waiting; `ple-platform recover` frees slots of dead runs")
            said = True
        time.sleep(poll_s)


def materialize_groups(groups: list[str], months: list[date], echo=print) -> bool:
    """Materialize asset groups on the current Dagster instance (runs are visible in the UI).

    Group by group, each over all months: a month's leakage guard needs month t+1 of the layer below.
    """
    import dagster as dg

    for group in groups:
        echo(f"  group {group}")
        for i, month in enumerate(months, 1):
            t0 = time.perf_counter()
            result = _materialize(dg.AssetSelection.groups(group), month)
            checks = result.get_asset_check_evaluations()
            errors = [c for c in checks if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR]
            warns = [c for c in checks if not c.passed and c.severity == dg.AssetCheckSeverity.WARN]
            status = "ok" if result.success and not errors else "FAILED"
            echo(
                f"    {month:%Y-%m} ({i}/{len(months)})  {status:6}  {len(checks)} checks: "
                f"{len(checks) - len(errors) - len(warns)} passed, {len(warns)} warnings, {len(errors)} failed  "
                f"{time.perf_counter() - t0:5.1f}s  run {result.run_id[:8]}"
            )
            lines = failure_lines(result)
            for line in lines:
                echo(f"      {line}")
            if lines or not result.success:
                return False
    return True


def _model_run_config() -> dict:
    from ple_platform.core.tasks.spec import TASKS

    ops = {k: {"config": v} for k, v in DEMO_RUN_CONFIG.items() if k != "student"}
    ops.update({f"student_{t.name}": {"config": DEMO_RUN_CONFIG["student"]} for t in TASKS})
    return {"ops": ops}


def materialize_assets(keys: list[str], month: date, echo=print) -> bool:
    t0 = time.perf_counter()
    result = _materialize(keys, month)
    for key in keys:
        for mat in result.asset_materializations_for_node(key):
            md = {k: v.value for k, v in mat.metadata.items() if isinstance(v.value, (int, float, str))}
            shown = {k: md[k] for k in list(md)[:6]}
            echo(f"    {key}: {shown}")
    for line in failure_lines(result):
        echo(f"      {line}")
    echo(f"    {'ok' if result.success else 'FAILED'} in {time.perf_counter() - t0:.0f}s, run {result.run_id[:8]}")
    return result.success


def review_month(month: date, echo=print) -> bool:
    """ops_review and audit_review of ``month`` (rules only without an API key), with their verdict lines."""
    from ple_platform.core.reasons_llm.config import LLMConfig

    t0 = time.perf_counter()
    mode = "rules + 3-vote LLM consensus" if LLMConfig.from_env().has_key else "rules only: no API key"
    echo(f"  ops and audit reviews for {month:%Y-%m} ({mode})")
    keys = ["ops_review", "audit_review"]
    result = _materialize(keys, month)
    for key in keys:
        for mat in result.asset_materializations_for_node(key):
            md = mat.metadata
            echo(f"    {key} {month:%Y-%m}: {md['verdict'].value} ({md['mode'].value})")
            for line in md["attention"].value.splitlines():
                echo(f"      {line}")
    for line in failure_lines(result):
        echo(f"      {line}")
    echo(f"    {'ok' if result.success else 'FAILED'} in {time.perf_counter() - t0:.0f}s, run {result.run_id[:8]}")
    return result.success


def run_model_chain(months: list[date], echo=print) -> bool:
    """Teacher -> evaluation -> students -> bundle -> challenger evaluation for each month, then the same
    champion_challenger_sensor evaluation the daemon runs, with its promotion runs executed here."""
    import dagster as dg

    from ple_platform.definitions import load_definitions
    from ple_platform.defs.governance.promotion import champion_challenger_sensor

    defs = load_definitions()
    instance = dg.DagsterInstance.get()
    chain = dg.AssetSelection.groups("training", "distillation") | dg.AssetSelection.assets("challenger_evaluation")
    cursor = None
    for month in months:
        t0 = time.perf_counter()
        echo(f"    {month:%Y-%m}: teacher, evaluation, 13 students, bundle, challenger evaluation")
        result = _materialize(chain, month, run_config=_model_run_config())
        checks = result.get_asset_check_evaluations()
        failed = [c for c in checks if not c.passed]
        echo(f"    {month:%Y-%m}  {'ok' if result.success else 'FAILED':6}  "
             f"{len(checks) - len(failed)}/{len(checks)} fidelity checks passed  {time.perf_counter() - t0:5.0f}s  "
             f"run {result.run_id[:8]}")
        lines = failure_lines(result)
        for line in lines:
            echo(f"      {line}")
        if lines or not result.success:
            return False
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources)
        with _quiet_dagster_log():  # the sensor's own log line repeats the decision printed below
            tick = champion_challenger_sensor(ctx)
        cursor = tick.cursor
        for event in tick.asset_events:
            echo(f"    sensor: {event.metadata['version'].value} -> {event.metadata['decision'].value}")
            for line in event.metadata["reasons"].value.splitlines():
                echo(f"      {line}")
        for req in tick.run_requests:
            selection = ["champion_model"] if req.job_name == "promote_challenger" else ["challenger_evaluation"]
            month_of = date.fromisoformat(req.partition_key) if req.partition_key else None
            run = _materialize(selection, month_of, run_config=req.run_config, tags=req.tags)
            echo(f"    run {req.job_name} ({req.run_key}): {'ok' if run.success else 'FAILED'}")
            for line in failure_lines(run):
                echo(f"      {line}")
            if not run.success:
                return False
    return True


def cmd_demo(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if "DAGSTER_HOME" not in os.environ:
        print("DAGSTER_HOME is not set: run the demo through `make demo` so the UI sees its runs", file=sys.stderr)
        return 2
    manifest = settings.landing_path / "manifest.json"
    if not manifest.exists() or args.regenerate:
        print(f"1/3 generating {args.customers} synthetic customers x {len(_months(None, settings))} months -> {settings.landing_path}")
        cmd_generate(argparse.Namespace(customers=args.customers, seed=args.seed, out=str(settings.landing_path), months=None))
    else:
        print(f"1/3 landing data present at {settings.landing_path} (use --regenerate to rebuild)")
    groups = list(args.groups or DEMO_GROUPS)
    ok = True
    if not args.models_only:
        print(f"2/3 materializing groups {groups} for every month into {settings.warehouse_path}")
        ok = materialize_groups(groups, _months(None, settings))
    if ok and not args.groups:
        months = _months(None, settings)[-DEMO_MODEL_MONTHS:]
        print(f"3/3 models for {', '.join(f'{m:%Y-%m}' for m in months)}: teacher, students, promotion")
        ok = run_model_chain(months)
        if ok:
            print(f"  recommendations and compliance report for {months[-1]:%Y-%m}")
            ok = materialize_assets(["recommendations", "compliance_report"], months[-1])
        if ok:
            ok = review_month(months[-1])
        from ple_platform.core.governance.audit.log import verify_text

        registry, audit = _governance()
        champion = registry.champion()
        print(f"  champion: {champion.version if champion else 'none'}; audit log: {verify_text(audit.verify())}")
    print()
    print("Open the Dagster UI:  make ui   ->  http://127.0.0.1:3000/assets  (runs, checks and metadata are there)")
    return 0 if ok else 1


def cmd_materialize(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    months = _months(args.months, settings, within_partitions=True)
    _check_groups(args.group)
    return 0 if materialize_groups(args.group, months) else 1


def _governance():
    from ple_platform.core.governance.audit.log import AuditLog, audit_key
    from ple_platform.core.governance.promotion.registry import Registry
    from ple_platform.core.governance.audit.store import GovernanceStore

    store = GovernanceStore(Settings.from_env().governance_db)
    return Registry(store), AuditLog(store, audit_key())


def cmd_recover(args: argparse.Namespace) -> int:
    import dagster as dg

    done = recover_dead_runs(dg.DagsterInstance.get())
    if not done:
        print("nothing to recover: no dead run holds a pool slot")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from ple_platform.core.governance.audit.log import verify_text

    _, audit = _governance()
    result = audit.verify()
    print(verify_text(result))
    return 0 if result.ok else 1


def cmd_approve(args: argparse.Namespace) -> int:
    from ple_platform.core.governance.promotion.flow import approve_challenger

    registry, audit = _governance()
    approval_id, evidence = approve_challenger(registry, audit, args.version, args.approver, args.note or "")
    print(f"approval {approval_id}: {args.approver} approved {args.version} (evidence {evidence[:16]}…); "
          "the champion_challenger_sensor promotes it on its next tick")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    registry, _ = _governance()
    champion = registry.champion()
    print(f"champion: {champion.version if champion else 'none'}")
    for b in registry.versions():
        print(f"  {b.version:28} {b.status.value:10} month {b.model_month:%Y-%m}  bundle {b.bundle_sha256[:12]}  "
              f"run {b.run_id}")
        for d in registry.decisions(b.version):
            print(f"    decision {d.id} {d.outcome.value if hasattr(d.outcome, 'value') else d.outcome}: "
                  + "; ".join(d.reasons))
    for c in registry.champion_history():
        print(f"  champion since {c.promoted_at:%Y-%m-%d %H:%M}: {c.version} ({c.kind.value}, decision {c.decision_id})")
    return 0


class WarehouseBusy(RuntimeError):
    """The warehouse stayed locked by a writing process for longer than the command waits."""


LINEAGE_WAIT_S = 300.0


def read_only_warehouse(path: str | Path, wait_s: float = LINEAGE_WAIT_S, poll_s: float = 2.0, echo=None):
    """A read-only DuckDB connection to the warehouse, waiting while a materialization holds its write lock.

    DuckDB lets one process write a file and refuses every other connection meanwhile; a reader that only needs a
    consistent view waits for the writer (saying so once, Ctrl-C stops it) instead of failing with DuckDB's
    traceback, and after ``wait_s`` gives up with one line naming the file."""
    import duckdb

    echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            return duckdb.connect(str(path), read_only=True)
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise
            if time.monotonic() >= deadline:
                raise WarehouseBusy(f"the warehouse {path} is locked by a running materialization; waited "
                                    f"{wait_s:.0f} s — rerun when it ends (runs: make ui)") from None
            if not said:
                echo(f"waiting for the warehouse {path}: a materialization is writing it (Ctrl-C to stop)")
                said = True
            time.sleep(poll_s)


def cmd_lineage(args: argparse.Namespace) -> int:
    from ple_platform.core.governance.audit.lineage import render_text, walk
    from ple_platform.core.storage import artifact_store_from_uri

    settings = Settings.from_env()
    registry, audit = _governance()
    store = artifact_store_from_uri(settings.artifacts_uri, settings.s3_endpoint_url)
    with read_only_warehouse(settings.warehouse_path, wait_s=LINEAGE_WAIT_S) as con:
        print(render_text(walk(registry, audit, con, store, args.ident)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ple_platform.core.serving.app import create_app
    from ple_platform.core.serving.state import current_pointer, load_state
    from ple_platform.core.storage import artifact_store_from_uri

    settings = Settings.from_env()
    registry, audit = _governance()
    store = artifact_store_from_uri(settings.artifacts_uri, settings.s3_endpoint_url)

    def fingerprint():
        champion = registry.champion()
        return (champion.version if champion else None, (current_pointer(store) or {}).get("meta_sha256"))

    app = create_app(lambda: load_state(registry, store), audit, fingerprint=fingerprint,
                     poll_interval_s=args.poll_seconds)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ple-platform", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write the synthetic panel to a landing folder")
    g.add_argument("--customers", type=int, default=5000)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--months", help="YYYY-MM..YYYY-MM (default: the configured partitions)")
    g.add_argument("--out", help="landing folder (default: $PLE_LANDING)")
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="generate demo data and materialize the demo groups for every month")
    d.add_argument("--customers", type=int, default=5000)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--groups", nargs="*", help=f"asset groups (default: {' '.join(DEMO_GROUPS)})")
    d.add_argument("--regenerate", action="store_true")
    d.add_argument("--models-only", action="store_true", help="skip the data groups (already materialized)")
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("materialize", help="materialize asset groups for a range of months")
    m.add_argument("--group", nargs="+", required=True)
    m.add_argument("--months", help="YYYY-MM..YYYY-MM (default: all)")
    m.set_defaults(func=cmd_materialize)

    rc = sub.add_parser("recover", help="fail runs whose process was killed and free the pool slots they hold")
    rc.set_defaults(func=cmd_recover)

    r = sub.add_parser("registry", help="model versions, decisions with reasons, champion history")
    r.set_defaults(func=cmd_registry)

    a = sub.add_parser("approve", help="approve a challenger awaiting approval (approval mode)")
    a.add_argument("version")
    a.add_argument("--approver", required=True, help="who approves (recorded with the evidence hash)")
    a.add_argument("--note", default="")
    a.set_defaults(func=cmd_approve)

    au = sub.add_parser("audit", help="audit log tools")
    au.add_argument("action", choices=["verify"])
    au.set_defaults(func=cmd_audit)

    li = sub.add_parser("lineage", help="trace a recommendation or a model version back to its data and runs")
    li.add_argument("ident", help="recommendation id or model version")
    li.set_defaults(func=cmd_lineage)

    gt = sub.add_parser("gpu-train-teacher", help="train the teacher from exported inputs (run by ple_teacher "
                        "through Dagster Pipes: a local subprocess or a GPU pod)")
    gt.set_defaults(func=cmd_gpu_train_teacher)

    sv = sub.add_parser("serve", help="serve recommendations over HTTP from the champion's serving snapshot")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--poll-seconds", type=float, default=10.0,
                    help="how often to check the registry for a new champion or snapshot (0: only /admin/reload)")
    sv.set_defaults(func=cmd_serve)
    return p


def cmd_gpu_train_teacher(args) -> int:
    from ple_platform.gpu_worker import main as worker_main

    return worker_main(["train-teacher"])


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user can cause and fix without touching the code: call mistakes, settings and keys, unknown registry
    versions or lineage ids, a busy or invalid governance store, a raw month the validation rules refuse."""
    from ple_platform.core.data.validation import RawDataError
    from ple_platform.core.governance.audit.lineage import LineageError
    from ple_platform.core.governance.audit.log import AuditLogError
    from ple_platform.core.governance.audit.store import GovernanceLockTimeout, GovernanceStoreError
    from ple_platform.core.governance.promotion.flow import PromotionFlowError
    from ple_platform.core.governance.promotion.registry import RegistryError
    from ple_platform.core.secrets import MissingSecretError

    return (UsageError, SettingsError, MissingSecretError, RegistryError, PromotionFlowError, LineageError,
            AuditLogError, GovernanceStoreError, GovernanceLockTimeout, RawDataError, WarehouseBusy)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"ple-platform {args.command}: interrupted (Ctrl-C); a run already launched is marked failed by "
              "Dagster, one not yet launched never started", file=sys.stderr)
        return 130
    except _user_errors() as err:
        # A user error: one line saying what and why (no traceback), exit code 2. Anything else is a defect and
        # keeps its traceback.
        print(f"ple-platform {args.command}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

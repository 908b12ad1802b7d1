"""Backfills as the daemon runs them: raw months in one run (BackfillPolicy.single_run), feature months in order
(the drift check's declared t-1 self-dependency), whatever order the months were selected in.

The daemon's backfill iteration runs against a workspace of the project's definitions, with a synchronous run
launcher so each requested run executes before the next iteration.
"""

import logging
import time

import dagster as dg
import duckdb
import pytest
from dagster._core.events import DagsterEventType
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import PythonFileTarget
from dagster._daemon.backfill import execute_backfill_iteration

RAW = ["raw_customers", "raw_holdings", "raw_transactions"]
MONTHS = ["2015-03-01", "2015-01-01", "2015-02-01"]  # selected out of order on purpose
GROUP = "demographics"

# Dagster's own PartitionBackfill.from_asset_partitions calls its deprecated AssetSelection.sources internally.
pytestmark = [pytest.mark.slow,  # a code server and the daemon's backfill loop
              pytest.mark.filterwarnings("ignore:Function `AssetSelection.sources` is deprecated:DeprecationWarning")]


def _backfill(tmp_path, platform_env, selection):
    defs_file = tmp_path / "backfill_defs.py"
    defs_file.write_text("from ple_platform.definitions import defs  # noqa: F401\n")
    target = PythonFileTarget(python_file=str(defs_file), attribute="defs", working_directory=str(tmp_path),
                              location_name="backfill_test")
    with dg.instance_for_test(synchronous_run_coordinator=True, synchronous_run_launcher=True) as instance:
        with create_test_daemon_workspace_context(target, instance) as workspace:
            graph = workspace.create_request_context().asset_graph
            instance.add_backfill(PartitionBackfill.from_asset_partitions(
                backfill_id="bf", asset_graph=graph, partition_names=MONTHS,
                asset_selection=[dg.AssetKey(k) for k in selection], backfill_timestamp=time.time(), tags={},
                dynamic_partitions_store=instance, all_partitions=False, title=None, description=None,
                run_config=None))
            for _ in range(12):
                list(execute_backfill_iteration(workspace, logging.getLogger("backfill")))
                if instance.get_backfill("bf").status != BulkActionStatus.REQUESTED:
                    break
            status = instance.get_backfill("bf").status
            runs = list(reversed(instance.get_runs()))  # oldest first
            checks = {}
            for run in runs:
                for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
                    evaluation = entry.dagster_event.event_specific_data
                    if evaluation.check_name == "psi_drift_vs_previous_month":
                        checks[evaluation.partition] = evaluation
            return status, runs, checks


def test_a_backfill_ingests_raw_months_in_one_run_then_features_in_month_order(tmp_path, platform_env):
    status, runs, checks = _backfill(tmp_path, platform_env, [*RAW, GROUP])
    assert status == BulkActionStatus.COMPLETED_SUCCESS and all(r.is_success for r in runs)

    # Raw: the three months of all three tables in one run over the range.
    raw_runs = [r for r in runs if r.asset_selection == {dg.AssetKey(k) for k in RAW}]
    assert len(raw_runs) == 1
    assert (raw_runs[0].tags["dagster/asset_partition_range_start"],
            raw_runs[0].tags["dagster/asset_partition_range_end"]) == ("2015-01-01", "2015-03-01")
    with duckdb.connect(platform_env.warehouse_path, read_only=True) as con:
        for t in ("customers", "holdings", "transactions"):
            stored = {str(m) for (m,) in con.execute(f"SELECT DISTINCT month FROM raw.{t}").fetchall()}
            assert stored == set(MONTHS), t

    # Features: one run per month (no single-run policy), in calendar order although the selection listed March
    # first: each month waits for its own t-1, so every drift check after the first compares against it. The
    # backfill also targets the later months whose lookback window reads the selected raw months (Dagster maps
    # the raw range downstream through the window), which store "unavailable" without their own raw month.
    feature_runs = [r.tags["dagster/partition"] for r in runs if r.asset_selection == {dg.AssetKey(GROUP)}]
    assert feature_runs == sorted(feature_runs) and feature_runs[:len(MONTHS)] == sorted(MONTHS)
    assert len(runs) == 1 + len(feature_runs)
    first, *later = sorted(MONTHS)
    assert checks[first].passed and checks[first].metadata["evaluated"].value is False
    for month in later:
        assert "max_psi" in checks[month].metadata, (month, checks[month].description)

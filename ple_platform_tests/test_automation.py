"""Declarative automation: a new raw month requests its features, the previous month's labels and the newest
month's model chain; nothing is requested while an input is missing; the monthly outputs carry freshness.

Upstream state is reported as runless materializations (no asset runs), and time is pinned with
``evaluation_time``: on 2015-11-15 the newest complete monthly partition is 2015-10, on 2015-12-15 it is 2015-11.
The first evaluation happens before November exists, as in a running deployment: conditions such as
``on_missing`` act on partitions that appear after they were first evaluated.
"""

from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from ple_platform.core.features.spec import FEATURE_GROUPS
from ple_platform.definitions import load_definitions

RAW = ("raw_customers", "raw_holdings", "raw_transactions")
MODEL_CHAIN = ("ple_teacher", "teacher_evaluation", "distillation_dataset", "model_bundle", "challenger_evaluation")
HISTORY = [f"2015-{m:02d}-01" for m in range(1, 11)]  # months already processed
NEW = "2015-11-01"
BEFORE = datetime(2015, 11, 15, tzinfo=timezone.utc)
EVALUATED_AT = datetime(2015, 12, 15, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    return load_definitions()


def _materialize(instance: dg.DagsterInstance, keys, months) -> None:
    # Hundreds of events per test: an in-memory instance (an on-disk SQLite one spends ~20 s syncing them; the
    # conditions read the same event log either way).
    for key in keys:
        for month in months:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=month))


def _requested(result) -> dict[str, set[str]]:
    out = {}
    for res in result.results:
        if res.true_subset.size:
            out[res.key.to_user_string()] = set(result.get_requested_partitions(res.key))
    return out


def test_a_new_raw_month_requests_its_features_the_previous_labels_and_the_model_chain(defs):
    graph = defs.resolve_asset_graph()
    processed = [k for k in graph.get_all_asset_keys() if graph.get(k).partitions_def is not None
                 and k.to_user_string() not in ("compliance_report", "ops_review", "audit_review", "serving_snapshot",
                                                "recommendations")]
    students = [k.to_user_string() for k in processed if k.to_user_string().startswith("student_")]
    assert len(students) == 13
    # Each feature group depends on its own month t-1 (the drift check's input): the request must still be t alone.
    for g in FEATURE_GROUPS:
        assert dg.AssetKey(g.name) in graph.get(dg.AssetKey(g.name)).parent_keys, g.name
    with dg.DagsterInstance.ephemeral() as instance:
        _materialize(instance, processed, HISTORY)
        settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=BEFORE)
        assert settled.total_requested == 0, _requested(settled)

        # Holdings and transactions of the new month land first; customers (read by every feature group and by
        # the labels of the previous month) are still missing, so nothing may start.
        _materialize(instance, ["raw_holdings", "raw_transactions"], [NEW])
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor,
                                                  evaluation_time=EVALUATED_AT)
        assert first.total_requested == 0, _requested(first)

        _materialize(instance, ["raw_customers"], [NEW])
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor,
                                                   evaluation_time=EVALUATED_AT + timedelta(minutes=1))
        requested = _requested(second)

        # The model chain waits until its inputs are written, then builds one step per tick.
        _materialize(instance, [g.name for g in FEATURE_GROUPS], [NEW])
        _materialize(instance, ["task_labels"], ["2015-10-01", NEW])
        third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor,
                                                  evaluation_time=EVALUATED_AT + timedelta(minutes=2))
        _materialize(instance, ["ple_teacher"], [NEW])
        fourth = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=third.cursor,
                                                   evaluation_time=EVALUATED_AT + timedelta(minutes=3))
        _materialize(instance, ["teacher_evaluation", "distillation_dataset"], [NEW])
        fifth = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=fourth.cursor,
                                                  evaluation_time=EVALUATED_AT + timedelta(minutes=4))
        chain = [_requested(third), _requested(fourth), _requested(fifth)]

    assert {name: requested.get(name) for name in (g.name for g in FEATURE_GROUPS)} == {
        g.name: {NEW} for g in FEATURE_GROUPS}
    # Labels of October become measurable with November's raw data; November's own are re-done when December lands.
    assert requested["task_labels"] == {"2015-10-01", NEW}
    # Raw ingestion is launched by people or a landing process, never by automation; reports wait for a champion;
    # the model chain waits for its inputs to be written.
    assert not set(requested) & {*RAW, *MODEL_CHAIN, *students, "recommendations", "compliance_report",
                                 "champion_model"}
    assert chain == [{"ple_teacher": {NEW}},
                     {"teacher_evaluation": {NEW}, "distillation_dataset": {NEW}},
                     {name: {NEW} for name in students}]


def test_a_corrected_old_month_does_not_cascade_into_its_own_partitions(defs):
    """Automation looks at the newest months only: an old month is rebuilt by an explicit backfill of the whole
    selection (docs/operations.md). Its correction may still refresh the newest features whose lookback reads it."""
    graph = defs.resolve_asset_graph()
    processed = [k for k in graph.get_all_asset_keys() if graph.get(k).partitions_def is not None]
    with dg.DagsterInstance.ephemeral() as instance:
        _materialize(instance, processed, [*HISTORY, NEW])
        settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=EVALUATED_AT)
        _materialize(instance, RAW, ["2015-06-01"])
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor,
                                                  evaluation_time=EVALUATED_AT + timedelta(minutes=1))
        requested = _requested(after)
    assert settled.total_requested == 0, _requested(settled)
    assert requested, "the newest features read June through their lookback window and must be refreshed"
    assert set().union(*requested.values()) <= {"2015-10-01", NEW}, requested


def test_recommendations_and_reports_are_due_monthly(defs):
    graph = defs.resolve_asset_graph()
    for name in ("recommendations", "compliance_report"):
        policy = graph.get(dg.AssetKey(name)).freshness_policy
        assert policy == dg.FreshnessPolicy.time_window(fail_window=timedelta(days=35),
                                                        warn_window=timedelta(days=32)), name

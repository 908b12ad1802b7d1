"""Labels (group ``labels``): the 13 task labels of month t, from raw month t+1.

The newest month has no t+1 yet: its partition materializes with ``labels_available = False`` and a
reason, stores no rows and reports its checks as not evaluable, instead of crashing or writing zeros.
"""

from datetime import date

import dagster as dg

from ple_platform.core.data.schema import add_months
from ple_platform.core.features.fits import FitPolicy, FitStore
from ple_platform.core.tasks.labels import (
    LABEL_TABLE,
    LabelsUnavailable,
    ensure_label_table,
    fit_next_mcc_vocabulary,
    label_health,
    label_summary,
    read_labels,
    write_labels,
)
from ple_platform.core.tasks.spec import TASKS
from ple_platform.core.reporting import md_table
from ple_platform.core.warehouse import partition_content_hash
from ple_platform.core.versioning import source_version
from ple_platform.defs.automation import LABELS
from ple_platform.defs.partitions import MONTHLY
from ple_platform.defs.raw.assets import WAREHOUSE_POOL
from ple_platform.defs.resources import ArtifactStoreResource, PlatformSettings, WarehouseResource

# Changes with the source that computes these assets (docs/architecture.md, code versions).
CODE_VERSION = source_version("ple_platform.core.tasks", __name__)

CHECK = "every_task_learnable"


def _summary_md(summary: dict[str, dict]) -> str:
    rows = []
    for name, s in summary.items():
        if "positive_rate" in s:
            stat = f"{s['positive_rate']:.2%} positive"
        elif "n_classes_present" in s:
            stat = f"{s['n_classes_present']} classes, majority {s['majority_share']:.1%}"
        else:
            stat = f"{s['mean']:.3f} ± {s['std']:.3f}"
        rows.append((name, s["rows"], f"{s['null_rate']:.1%}", stat))
    return md_table(["task", "rows", "null rate", "rate / classes / mean±std"], rows)


@dg.asset(
    group_name="labels",
    partitions_def=MONTHLY,
    deps=[
        dg.AssetDep(
            f"raw_{t}",
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=-2 if t == "transactions" else 0, end_offset=1, allow_nonexistent_upstream_partitions=True
            ),
        )
        for t in ("customers", "holdings", "transactions")
    ],
    check_specs=[dg.AssetCheckSpec(CHECK, asset="task_labels", blocking=True, partitions_def=MONTHLY)],
    pool=WAREHOUSE_POOL,
    kinds={"duckdb"},
    owners=["team:ml-modeling"],
    code_version=CODE_VERSION,
    automation_condition=LABELS,
    metadata={"dagster/table_name": LABEL_TABLE, "tasks": len(TASKS)},
)
def task_labels(context: dg.AssetExecutionContext, warehouse: WarehouseResource, artifacts: ArtifactStoreResource,
                settings: PlatformSettings):
    """The 13 task labels of month t (7 binary, 2 multiclass, 4 regression), measured between snapshot t
    and snapshot t+1. NULL = undefined for that customer, never a fake zero."""
    month = date.fromisoformat(context.partition_key)
    settings = settings.settings()
    policy = FitPolicy(fit_end=settings.fit_end_month, first_month=settings.start_month)
    with warehouse.get_connection() as con:
        ensure_label_table(con)
        (_, meta), record = FitStore(artifacts.store(), con).get_or_fit(
            "task_next_mcc_vocabulary",
            policy.fit_month(month).isoformat(),
            policy.fit_months(month),
            lambda: ({}, {"vocabulary": fit_next_mcc_vocabulary(con, policy.fit_months(month))}),
        )
        try:
            ids, values = read_labels(con, month, meta["vocabulary"])
        except LabelsUnavailable as why:
            con.execute(f"DELETE FROM {LABEL_TABLE} WHERE month = ?", [month])
            context.log.info(str(why))
            return dg.MaterializeResult(
                metadata={"labels_available": False, "reason": str(why), "dagster/row_count": 0},
                check_results=[dg.AssetCheckResult(check_name=CHECK, passed=False, severity=dg.AssetCheckSeverity.WARN,
                                                   description=f"Not evaluable: {why}")],
                data_version=dg.DataVersion(f"unavailable-{month}"),
            )
        n = write_labels(con, month, ids, values)
        content_hash = partition_content_hash(con, LABEL_TABLE, month)
    summary = label_summary(values)
    health = label_health(summary)
    bad = {k: why for k, (ok, why) in health.items() if not ok}
    return dg.MaterializeResult(
        metadata={
            "labels_available": True,
            "dagster/row_count": n,
            "content_hash": content_hash,
            "label_month_source": f"raw month {add_months(month, 1):%Y-%m} (t+1)",
            "tasks": dg.MetadataValue.md(_summary_md(summary)),
            "next_mcc_vocabulary_sha256": record.sha256,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK,
                passed=not bad,
                severity=dg.AssetCheckSeverity.ERROR,
                description="Every binary task has both classes (>= 5 each), multiclass >= 2 classes, regression has variance",
                metadata={"failing_tasks": dg.MetadataValue.json(bad)},
            )
        ],
        data_version=dg.DataVersion(content_hash),
    )

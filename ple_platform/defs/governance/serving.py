"""``serving_snapshot`` (group ``governance``): what ``ple-platform serve`` reads for a month (thin wiring).

Built from the champion and the month's batch ``recommendations`` by ``core/serving/snapshot.py``; content-hashed
in the artifact store and pointed at by ``serving/current.json``, which the server's watcher follows.
"""

from datetime import date

import dagster as dg

from ple_platform.core.features.spec import FEATURE_GROUPS
from ple_platform.core.governance.audit.log import AuditEvent
from ple_platform.core.versioning import source_version
from ple_platform.defs.partitions import MONTHLY
from ple_platform.defs.raw.assets import WAREHOUSE_POOL
from ple_platform.defs.resources import (
    ArtifactStoreResource,
    GovernanceResource,
    WarehouseResource,
    retry_transient_io,
)

# Changes with the source that computes these assets (docs/architecture.md, code versions).
CODE_VERSION = source_version("ple_platform.core.serving", __name__)


@dg.asset(
    group_name="governance",
    partitions_def=MONTHLY,
    deps=[dg.AssetDep("champion_model"), "recommendations", "raw_customers", *(g.name for g in FEATURE_GROUPS)],
    pool=WAREHOUSE_POOL,
    kinds={"numpy"},
    owners=["team:ml-platform"],
    code_version=CODE_VERSION,
)
@retry_transient_io
def serving_snapshot(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     artifacts: ArtifactStoreResource, governance: GovernanceResource) -> dg.MaterializeResult:
    """The serving snapshot of month t for the champion: the students' feature columns (float32, memory-mappable),
    teacher gate weights, product priors, suitability and opt-out flags and the month's batch rows, content-hashed;
    the recommendation server hot-swaps to it without opening the warehouse or running the teacher."""
    # Imported here: the snapshot reads model data (torch); loading the definitions must stay light.
    from ple_platform.core.recommend.monthly import RecommendationError
    from ple_platform.core.serving.snapshot import SnapshotError, build_snapshot

    month = date.fromisoformat(context.partition_key)
    bundle = governance.registry().champion()
    if bundle is None:
        raise dg.Failure(description="no champion yet: promote a model bundle before building a serving snapshot")
    with warehouse.get_connection() as con:
        try:
            info = build_snapshot(con, artifacts.store(), bundle, month)
        except (SnapshotError, RecommendationError) as err:
            raise dg.Failure(description=str(err)) from None
    governance.audit_log().append(AuditEvent.SERVING, f"serving_snapshot/{month.isoformat()}", {
        "action": "snapshot", "version": bundle.version, "bundle_sha256": bundle.bundle_sha256,
        "meta_key": info.meta_key, "meta_sha256": info.meta_sha256, "customers": info.n_customers,
        "run_id": context.run.run_id}, actor=f"dagster-run:{context.run.run_id}")
    return dg.MaterializeResult(
        metadata={"customers": info.n_customers, "feature_columns": info.n_columns,
                  "batch_customers": info.n_batch_customers, "opt_out_customers": info.n_opt_out,
                  "bundle_version": bundle.version, "snapshot_sha256": info.meta_sha256, "meta_key": info.meta_key},
        data_version=dg.DataVersion(info.meta_sha256),
    )


serving_assets = [serving_snapshot]

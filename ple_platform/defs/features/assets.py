"""Feature layer (group ``features``): the 17 groups of ``FEATURE_GROUPS``, built by one factory.

Each asset reads raw months <= t through a trailing ``TimeWindowPartitionMapping`` (its lookback), writes
``features.<group>`` for month t, records the fitted state it used, and reports partitioned checks.
"""


from datetime import date

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa

from ple_platform.core.data.schema import PRODUCT_NAMES, add_months
from ple_platform.core.features import quality
from ple_platform.core.features.build import BuildContext, build_group
from ple_platform.core.features.fits import FitPolicy, FitStore
from ple_platform.core.features.spec import FEATURE_GROUPS, FeatureGroupSpec
from ple_platform.core.reporting import md_table
from ple_platform.core.warehouse import partition_content_hash, replace_partition
from ple_platform.core.versioning import source_version
from ple_platform.defs.gpu import GPU_OP_TAGS
from ple_platform.defs.automation import FEATURES
from ple_platform.defs.partitions import MONTHLY
from ple_platform.defs.raw.assets import WAREHOUSE_POOL
from ple_platform.defs.resources import ArtifactStoreResource, PlatformSettings, WarehouseResource

CHECK_NAMES = (
    "width_and_dtypes",
    "all_finite",
    "null_rate",
    "no_constant_columns",
    "no_all_zero_rows_with_data",
    "psi_drift_vs_previous_month",
    "leakage_guard",
)

# Changes with the source that computes these assets (docs/architecture.md, code versions).
CODE_VERSION = source_version("ple_platform.core.features", __name__)
# Drift only warns. The leakage guard blocks when it fails; while month t+1 is not loaded it reports a
# WARN "not evaluable", which does not block.
NON_BLOCKING = {"psi_drift_vs_previous_month"}
GPU_GROUPS = {"mamba_temporal"}


def _ensure_table(con: duckdb.DuckDBPyConnection, spec: FeatureGroupSpec) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS features")
    cols = ", ".join(f'"{c}" FLOAT' for c in spec.columns)
    con.execute(f"CREATE TABLE IF NOT EXISTS {spec.table} (customer_id VARCHAR, month DATE, {cols})")


def _write(con: duckdb.DuckDBPyConnection, spec: FeatureGroupSpec, month: date, ids: np.ndarray, values: np.ndarray,
           before_commit=None) -> int:
    _ensure_table(con, spec)
    table = pa.table(
        [pa.array(ids.tolist(), pa.string()), pa.array(np.full(len(ids), np.datetime64(month, "D")), pa.date32())]
        + [pa.array(values[:, j]) for j in range(values.shape[1])],
        names=["customer_id", "month", *spec.columns],
    )
    con.register("feature_rows", table)
    try:
        return replace_partition(con, spec.table, month, "SELECT * FROM feature_rows", before_commit=before_commit)
    finally:
        con.unregister("feature_rows")


def _write_diagrams(con: duckdb.DuckDBPyConnection, month: date, ids: np.ndarray, diagrams: dict) -> int:
    con.execute(
        "CREATE TABLE IF NOT EXISTS features.tda_diagrams (customer_id VARCHAR, month DATE, kind VARCHAR, dim TINYINT, birth DOUBLE, death DOUBLE)"
    )
    kind = str(diagrams["kind"][0]) if len(diagrams["kind"]) else None
    table = pa.table({
        "customer_id": pa.array(ids[diagrams["customer"]].tolist(), pa.string()),
        "month": pa.array(np.full(len(diagrams["customer"]), np.datetime64(month, "D")), pa.date32()),
        "kind": pa.array(np.asarray(diagrams["kind"]).astype(str).tolist(), pa.string()),
        "dim": pa.array(np.asarray(diagrams["dim"], dtype=np.int8)),
        "birth": pa.array(np.asarray(diagrams["birth"], dtype=np.float64)),
        "death": pa.array(np.asarray(diagrams["death"], dtype=np.float64)),
    })
    con.register("diagram_rows", table)
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM features.tda_diagrams WHERE month = ? AND kind = ?", [month, kind])
        con.execute("INSERT INTO features.tda_diagrams SELECT * FROM diagram_rows")
        con.execute("COMMIT")
    finally:
        con.unregister("diagram_rows")
    return len(table)


def _previous_values(con, spec: FeatureGroupSpec, month: date) -> np.ndarray | None:
    try:
        rows = con.execute(f"SELECT * EXCLUDE (customer_id, month) FROM {spec.table} WHERE month = ?", [add_months(month, -1)]).fetchnumpy()
    except duckdb.CatalogException:
        return None
    if not rows or len(next(iter(rows.values()))) == 0:
        return None
    return np.stack([np.asarray(rows[c], dtype=np.float64) for c in spec.columns], axis=1)


def _next_month_changes(con, month: date, ids: np.ndarray) -> np.ndarray | None:
    nxt = add_months(month, 1)
    try:
        (n,) = con.execute("SELECT count(*) FROM raw.holdings WHERE month = ?", [nxt]).fetchall()[0]
    except duckdb.CatalogException:  # holdings not ingested yet (e.g. raw and features in one first run)
        return None
    if n == 0:
        return None
    diff = " + ".join(f'abs(coalesce(b."{p}",0) - coalesce(a."{p}",0))' for p in PRODUCT_NAMES)
    con.register("ids", pa.table({"customer_id": pa.array(ids.tolist(), pa.string()), "i": pa.array(np.arange(len(ids)))}))
    try:
        rows = con.execute(
            f"SELECT ids.i, coalesce({diff}, 0) FROM ids JOIN raw.holdings a ON a.customer_id = ids.customer_id AND a.month = ? "
            f"LEFT JOIN raw.holdings b ON b.customer_id = ids.customer_id AND b.month = ? ORDER BY ids.i",
            [month, nxt],
        ).fetchnumpy()
    finally:
        con.unregister("ids")
    out = np.zeros(len(ids))
    out[rows["i"].astype(np.int64)] = next(v for k, v in rows.items() if k != "i")
    return out


def _has_source_data(con, spec: FeatureGroupSpec, month: date, ids: np.ndarray) -> np.ndarray | None:
    """Customers with transactions in month t: for them a transaction-based group must not be all zero."""
    if spec.zero_ok_without != "transactions":
        return None
    con.register("ids", pa.table({"customer_id": pa.array(ids.tolist(), pa.string()), "i": pa.array(np.arange(len(ids)))}))
    try:
        rows = con.execute(
            "SELECT ids.i FROM ids SEMI JOIN (SELECT DISTINCT customer_id FROM raw.transactions WHERE month = ?) t USING (customer_id)",
            [month],
        ).fetchnumpy()
    finally:
        con.unregister("ids")
    out = np.zeros(len(ids), dtype=bool)
    out[rows["i"].astype(np.int64)] = True
    return out


def _unavailable_sources(con, spec: FeatureGroupSpec, month: date) -> list[str]:
    out = []
    for src in spec.sources:
        n = con.execute(f"SELECT count(*) FROM raw.{src} WHERE month = ?", [month]).fetchall()[0][0]
        if n == 0:
            out.append(f"raw.{src}")
    return out


def _history_months(con, month: date) -> int:
    return con.execute("SELECT count(DISTINCT month) FROM raw.customers WHERE month <= ?", [month]).fetchall()[0][0]


def _stored_null_rate(con, spec: FeatureGroupSpec, month: date) -> float:
    any_null = " OR ".join(f'"{c}" IS NULL' for c in spec.columns)
    n, bad = con.execute(f"SELECT count(*), count(*) FILTER ({any_null}) FROM {spec.table} WHERE month = ?", [month]).fetchall()[0]
    return bad / n if n else 0.0


def _summary_table(values: np.ndarray, spec: FeatureGroupSpec, k: int = 8) -> str:
    head = values[:, :k]  # column statistics in one vectorised pass each
    stats = zip(head.mean(axis=0), head.std(axis=0), head.min(axis=0), head.max(axis=0))
    rows = [(spec.columns[j], *(f"{x:.4g}" for x in st)) for j, st in enumerate(stats)]
    if spec.dim > k:
        rows.append((f"... {spec.dim - k} more", "", "", "", ""))
    return md_table(["column", "mean", "std", "min", "max"], rows)


def build_feature_asset(spec: FeatureGroupSpec) -> dg.AssetsDefinition:
    deps = [
        dg.AssetDep(
            f"raw_{src}",
            # Holdings are read one month further back: the first window month's product changes need it.
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=-(spec.lookback_months - (0 if src == "holdings" else 1)),
                end_offset=0,
                allow_nonexistent_upstream_partitions=True,
            ),
        )
        for src in sorted(set(spec.sources) | {"customers"})
    ] + [
        # The drift check compares month t with the stored month t-1: declared so a backfill runs the months
        # in order whatever order they were requested in. The first month has no t-1 and does not wait.
        dg.AssetDep(spec.name, partition_mapping=dg.TimeWindowPartitionMapping(
            start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True)),
    ]
    check_specs = [
        dg.AssetCheckSpec(name, asset=spec.name, blocking=name not in NON_BLOCKING, partitions_def=MONTHLY)
        for name in CHECK_NAMES
        if name != "no_all_zero_rows_with_data" or spec.zero_ok_without
    ]

    # A multi-asset of one spec, only to be subsettable: for a non-subsettable asset Dagster's automation widens a
    # request to the asset's whole execution set by mapping the requested months through the asset's own deps, and
    # the t-1 self-dependency then turned a request for month t into one for t-1 and t (docs/architecture.md).
    @dg.multi_asset(
        name=spec.name,
        specs=[dg.AssetSpec(
            spec.name,
            group_name="features",
            deps=deps,
            kinds={"duckdb", "pytorch" if spec.name in {"mamba_temporal", "graph_collaborative", "product_hierarchy",
                                                        "merchant_hierarchy"} else "python"},
            owners=["team:ml-features"],
            description=f"{spec.algorithm}. {spec.dim} columns; consumed by {', '.join(spec.experts)}.",
            metadata={
                "dagster/table_name": spec.table,
                "width": spec.dim,
                "fitted": spec.fitted,
                "lookback_months": spec.lookback_months,
                "experts": ", ".join(spec.experts),
            },
            code_version=CODE_VERSION,
            automation_condition=FEATURES,
        )],
        partitions_def=MONTHLY,
        check_specs=check_specs,
        can_subset=True,
        pool=WAREHOUSE_POOL,
        op_tags=GPU_OP_TAGS if spec.name in GPU_GROUPS else None,
    )
    def _feature(context: dg.AssetExecutionContext, warehouse: WarehouseResource, artifacts: ArtifactStoreResource,
                 settings: PlatformSettings):
        month = date.fromisoformat(context.partition_key)
        settings = settings.settings()
        policy = FitPolicy(fit_end=settings.fit_end_month, first_month=settings.start_month)
        with warehouse.get_connection() as con:
            missing = _unavailable_sources(con, spec, month)
            if missing:
                # Explicitly unavailable (e.g. a Santander source without transactions): no rows, no zeros.
                _ensure_table(con, spec)
                con.execute(f"DELETE FROM {spec.table} WHERE month = ?", [month])
                reason = f"source table(s) {', '.join(missing)} have no rows for {month:%Y-%m}: {spec.name} is unavailable"
                return dg.MaterializeResult(
                    metadata={"available": False, "reason": reason, "dagster/row_count": 0},
                    data_version=dg.DataVersion(f"unavailable-{month}"),
                    check_results=[
                        dg.AssetCheckResult(check_name=c.name, passed=False, severity=dg.AssetCheckSeverity.WARN, description=reason)
                        for c in check_specs
                    ],
                )
            ctx = BuildContext(con, month, policy, FitStore(artifacts.store(), con))
            out = build_group(spec.name, ctx)
            ids = ctx.pop.customer_ids
            if len(ids) == 0:
                raise dg.Failure(f"{spec.name} {month}: raw.customers has no rows for this month; materialize raw_customers first")
            # The checks' other inputs are read before the write's transaction: they do not depend on the new rows,
            # and a lookup that fails inside a DuckDB transaction (a table not there yet) would abort it.
            has_source = _has_source_data(con, spec, month, ids)
            previous = _previous_values(con, spec, month)
            next_changes = _next_month_changes(con, month, ids)
            history = _history_months(con, month)
            seen: dict = {}

            def checked(n: int) -> None:
                # Inside the write's transaction: a month failing a blocking check is rolled back, so no later
                # run (or fit) ever reads it; the previous version of the month stays.
                seen["hash"] = partition_content_hash(con, spec.table, month)
                seen["results"] = results = quality.evaluate(
                    spec, out.values, _stored_null_rate(con, spec, month), has_source, previous, next_changes,
                    full_history=history >= spec.lookback_months, first_month=history == 1,
                )
                failed = [r for r in results if r.blocking and not r.passed]
                if failed:
                    raise dg.Failure(
                        description=f"{spec.name} {month:%Y-%m} refused, nothing written (the month keeps its "
                                    "previous rows): " + "; ".join(f"check '{r.name}' failed: {r.description}"
                                                                  for r in failed),
                        metadata={"failed_checks": [r.name for r in failed]})

            n_rows = _write(con, spec, month, ids, out.values, before_commit=checked)
            content_hash, results = seen["hash"], seen["results"]
            n_diagram_points = _write_diagrams(con, month, ids, out.diagrams) if out.diagrams is not None else None
        metadata = {
            "available": True,
            "dagster/row_count": n_rows,
            "content_hash": content_hash,
            "width": spec.dim,
            "summary": dg.MetadataValue.md(_summary_table(out.values, spec)),
            "fits": dg.MetadataValue.json([r.__dict__ for r in out.fit_records]),
        }
        if n_diagram_points is not None:
            metadata["diagram_points"] = n_diagram_points
        return dg.MaterializeResult(
            metadata=metadata,
            data_version=dg.DataVersion(content_hash),
            check_results=[
                dg.AssetCheckResult(
                    check_name=r.name,
                    passed=r.passed,
                    severity=dg.AssetCheckSeverity.ERROR if r.blocking else dg.AssetCheckSeverity.WARN,
                    description=r.description,
                    metadata={k: v for k, v in r.metadata.items() if v is not None},
                )
                for r in results
            ],
        )

    return _feature


feature_assets = [build_feature_asset(spec) for spec in FEATURE_GROUPS]

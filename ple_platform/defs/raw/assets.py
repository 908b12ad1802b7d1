"""Raw layer (group ``raw``): each month's landing files, validated, pseudonymised and stored in DuckDB.

One factory builds the three assets from ``RAW_TABLES``. A bad file fails the run with a message naming
the file, column, rule and offending row count, before anything is written; the blocking checks then
prove the stored month is sound, so nothing downstream runs on a broken partition.
"""


import hashlib
from datetime import date

import dagster as dg

from ple_platform.core.data import raw_checks
from ple_platform.core.data.landing import validated_month
from ple_platform.core.data.schema import RAW_TABLES, TABLE_SCHEMAS
from ple_platform.core.data.validation import RawDataError
from ple_platform.core.governance.audit.pseudonymise import hmac_sql
from ple_platform.core.warehouse import (
    duckdb_type,
    ensure_raw_table,
    null_rates,
    partition_content_hash,
    raw_table_columns,
    record_partition_hash,
    replace_partition,
)
from ple_platform.defs.partitions import MONTHLY
from ple_platform.core.governance.audit.log import AuditEvent
from ple_platform.core.reporting import md_table
from ple_platform.core.versioning import source_version
from ple_platform.defs.resources import (
    GovernanceResource,
    LandingZoneResource,
    PlatformSettings,
    WarehouseResource,
    retry_transient_io,
)

# Changes with the source that computes these assets (docs/architecture.md, code versions).
CODE_VERSION = source_version("ple_platform.core.data", __name__)

WAREHOUSE_POOL = "duckdb_warehouse"

_DESCRIPTIONS = {
    "customers": "Monthly customer snapshot: demographics, income, tenure, activity, suitability profile. "
    "Customer ids are keyed-HMAC pseudonyms.",
    "holdings": "Monthly holdings of the 24 Santander products (0/1, NULL = unknown in the source).",
    "transactions": "Card transactions of the month: timestamp, amount, ISO 18245 MCC, merchant id.",
}


def _insert_select(table: str, validated_sql: str, key: bytes) -> str:
    exprs = []
    for name, _ in raw_table_columns(table):
        if name == "customer_id":
            exprs.append(f"{hmac_sql('customer_id', key)} AS customer_id")
        elif name == "month" and table == "transactions":
            exprs.append("CAST(date_trunc('month', ts) AS DATE) AS month")
        else:
            exprs.append(f'"{name}"')
    return f"SELECT {', '.join(exprs)} FROM ({validated_sql}) src"


def _null_rate_table(rates: dict[str, float]) -> str:
    return md_table(["column", "null rate"], [(c, f"{r:.1%}") for c, r in rates.items()
                                              if c not in ("customer_id", "month")])


def _column_schema(table: str) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(n, t) for n, t in raw_table_columns(table)])


def build_raw_asset(table: str) -> dg.AssetsDefinition:
    check_specs = [
        dg.AssetCheckSpec(name, asset=f"raw_{table}", blocking=True, partitions_def=MONTHLY)
        for name in raw_checks.check_names(table)
    ]
    deps = [] if table == "customers" else ["raw_customers"]

    @dg.asset(
        name=f"raw_{table}",
        group_name="raw",
        partitions_def=MONTHLY,
        deps=deps,
        check_specs=check_specs,
        pool=WAREHOUSE_POOL,
        kinds={"duckdb"},
        owners=["team:data-platform"],
        code_version=CODE_VERSION,
        description=_DESCRIPTIONS[table],
        metadata={"dagster/table_name": f"raw.{table}", "dagster/column_schema": _column_schema(table)},
        # A backfill of N months is one run: one process, one warehouse connection, each month still validated
        # and written in its own transaction (docs/benchmarks.md, raw backfill).
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def _raw(context: dg.AssetExecutionContext, warehouse: WarehouseResource, landing: LandingZoneResource,
             governance: GovernanceResource, settings: PlatformSettings):
        yield from _ingest_range(context, warehouse, landing, governance, settings)

    @retry_transient_io
    def _ingest_range(context: dg.AssetExecutionContext, warehouse: WarehouseResource, landing: LandingZoneResource,
                      governance: GovernanceResource, settings: PlatformSettings) -> list:
        months = [date.fromisoformat(k) for k in context.partition_keys]
        key = settings.pseudonymisation_key_bytes()
        with warehouse.get_connection() as con:
            # Months in order, each committed on its own: a failing month stops the run with the earlier ones
            # stored (and audited) and itself rolled back; a rerun rewrites them idempotently.
            outcomes = [_ingest_month(context, con, landing, governance, key, month) for month in months]
        if len(months) == 1:
            return [outcomes[0]]
        # A range run has one output: each month's metadata and check results are attached to its own partition;
        # the run-level data version combines the months' content hashes.
        events = []
        for month, outcome in zip(months, outcomes):
            context.add_asset_metadata(outcome.metadata, partition_key=month.isoformat())
            events.extend(dg.AssetCheckEvaluation(
                asset_key=context.asset_key, check_name=r.check_name, passed=r.passed, severity=r.severity,
                description=r.description, metadata=r.metadata, partition=month.isoformat(),
                blocking=True) for r in outcome.check_results)
        combined = hashlib.sha256("".join(str(o.data_version.value) for o in outcomes).encode()).hexdigest()
        # The checks' own outputs carry no value; their per-month evaluations are the events above.
        check_outputs = [dg.Output(None, output_name=out.name) for out in context.op_def.output_defs
                         if out.name != "result"]
        return [*events, *check_outputs, dg.MaterializeResult(data_version=dg.DataVersion(combined))]

    def _ingest_month(context: dg.AssetExecutionContext, con, landing: LandingZoneResource,
                      governance: GovernanceResource, key: bytes, month: date) -> dg.MaterializeResult:
        try:
            # Errors quote customers by pseudonym: the message lands in run storage and the UI.
            validated = validated_month(con, landing.source(), table, month,
                                        pseudonym_sql=lambda expr: hmac_sql(expr, key))
        except RawDataError as err:
            # The message already names file, column, rule and row count: show it, not a traceback.
            raise dg.Failure(description=str(err), metadata={"rule": err.rule, "offending_rows": err.n_rows}) from None
        qualified = ensure_raw_table(con, table)
        if validated is None:
            # Source without this table (e.g. Santander without transactions): explicitly unavailable.
            n_rows = replace_partition(con, qualified, month, _insert_select(table, _empty_sql(table), b"x"))
            return dg.MaterializeResult(
                metadata={"available": False, "dagster/row_count": n_rows},
                check_results=[
                    dg.AssetCheckResult(
                        check_name=name,
                        passed=False,
                        severity=dg.AssetCheckSeverity.WARN,
                        description=f"{table} is unavailable from the {landing.kind} source",
                    )
                    for name in raw_checks.check_names(table)
                ],
                data_version=dg.DataVersion("unavailable"),
            )
        seen: dict = {}

        def verify_and_audit(n: int) -> None:
            # Inside the write's transaction: a month failing a rule is rolled back, never visible downstream;
            # the audit entry (whose ingest hash lineage compares against) lands before the rows are committed.
            seen["hash"] = partition_content_hash(con, qualified, month)
            seen["results"] = results = raw_checks.run_rules(con, table, month)
            failed = [r for r in results if not r.passed]
            if failed:
                raise dg.Failure(
                    description=f"raw.{table} {month:%Y-%m} refused, nothing written (the month keeps its "
                                "previous rows): " + "; ".join(f"rule '{r.name}' failed on {r.offending_rows} "
                                                              f"row(s): {r.description}" for r in failed),
                    metadata={"failed_rules": [r.name for r in failed]})
            record_partition_hash(con, qualified, month, seen["hash"], n)  # fits' lineage reads it
            governance.audit_log().append(AuditEvent.INGEST, f"raw.{table}/{month.isoformat()}", {
                "table": f"raw.{table}", "month": month.isoformat(), "content_hash": seen["hash"], "rows": n,
                "source": str(validated.source), "run_id": context.run.run_id})

        n_rows = replace_partition(con, qualified, month, _insert_select(table, validated.sql, key),
                                   before_commit=verify_and_audit)
        content_hash, results = seen["hash"], seen["results"]
        rates = null_rates(con, qualified, month)
        context.log.info(f"raw.{table} {month}: {n_rows} rows from {validated.source}")
        return dg.MaterializeResult(
            metadata={
                "available": True,
                "dagster/row_count": n_rows,
                "dagster/partition_row_count": n_rows,
                "content_hash": content_hash,
                "source": validated.source,
                # Source values the adapter mapped to NULL (e.g. Santander's -999999 tenure): counted, never hidden.
                "coerced_to_null": dg.MetadataValue.json(dict(getattr(validated, "coerced", {}) or {})),
                "null_rates": dg.MetadataValue.md(_null_rate_table(rates)),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=r.name,
                    passed=r.passed,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=r.description,
                    metadata={"offending_rows": r.offending_rows},
                )
                for r in results
            ],
            data_version=dg.DataVersion(content_hash),
        )

    return _raw


def _empty_sql(table: str) -> str:
    cols = ", ".join(f'CAST(NULL AS {duckdb_type(f.type)}) AS "{f.name}"' for f in TABLE_SCHEMAS[table])
    return f"SELECT {cols} WHERE false"


raw_assets = [build_raw_asset(t) for t in RAW_TABLES]

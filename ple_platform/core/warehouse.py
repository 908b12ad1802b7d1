"""DuckDB warehouse conventions: one schema per layer, one ``month`` column per table, and partition
writes that replace exactly one month inside a single transaction.

Concurrency: a DuckDB file accepts one writing process at a time. Writers open short-lived connections
(the Dagster ``DuckDBResource`` retries on lock) and the writing assets share the ``duckdb_warehouse``
concurrency pool (limit 1 in dagster.yaml), so parallel steps queue instead of failing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import date

import duckdb
import numpy as np
import pyarrow as pa

from ple_platform.core.data.schema import RAW_TABLES, TABLE_SCHEMAS

_ARROW_TO_DUCKDB = {
    pa.string(): "VARCHAR",
    pa.date32(): "DATE",
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us"): "TIMESTAMP",
}


def duckdb_type(t: pa.DataType) -> str:
    return _ARROW_TO_DUCKDB[t]


def raw_table_columns(table: str) -> list[tuple[str, str]]:
    """(name, DuckDB type) of a raw warehouse table: the canonical columns, plus ``month`` for transactions."""
    cols = [(f.name, duckdb_type(f.type)) for f in TABLE_SCHEMAS[table]]
    if "month" not in {n for n, _ in cols}:
        cols.insert(1, ("month", "DATE"))
    return cols


def ensure_raw_table(con: duckdb.DuckDBPyConnection, table: str) -> str:
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    cols = ", ".join(f'"{n}" {t}' for n, t in raw_table_columns(table))
    con.execute(f"CREATE TABLE IF NOT EXISTS raw.{table} ({cols})")
    return f"raw.{table}"


def replace_partition(con: duckdb.DuckDBPyConnection, qualified_table: str, month: date, select_sql: str,
                      before_commit: Callable[[int], None] | None = None) -> int:
    """Atomically replace the rows of ``month`` with the rows of ``select_sql``; returns the new row count.

    Either the whole month is replaced or, on any error, the table is left exactly as it was. ``before_commit(n)``
    runs inside the transaction, seeing the new rows (other connections still see the old ones): it validates them
    and records the write (the audit entry) first, and anything it raises rolls the month back — so no month that
    fails its rules is ever visible, and none is written without its audit entry.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"DELETE FROM {qualified_table} WHERE month = ?", [month])
        con.execute(f"INSERT INTO {qualified_table} {select_sql}")
        (n,) = con.execute(f"SELECT count(*) FROM {qualified_table} WHERE month = ?", [month]).fetchall()[0]
        if before_commit is not None:
            before_commit(int(n))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return int(n)


def partition_content_hash(con: duckdb.DuckDBPyConnection, qualified_table: str, month: date) -> str:
    """Order-independent SHA-256 of a month's rows: the same rows give the same hash in any order."""
    (n, acc) = con.execute(
        f"""SELECT count(*), coalesce(sum(('0x' || left(md5(CAST(t AS VARCHAR)), 16))::UBIGINT::HUGEINT), 0)
            FROM {qualified_table} t WHERE month = ?""",
        [month],
    ).fetchall()[0]
    return hashlib.sha256(f"{qualified_table}|{month}|{n}|{acc}".encode()).hexdigest()


PARTITION_HASHES = "raw.partition_hashes"


def record_partition_hash(con: duckdb.DuckDBPyConnection, qualified_table: str, month: date, content_hash: str,
                          rows: int) -> None:
    """Remember a stored month's content hash (call inside the write's transaction, so the two cannot disagree)."""
    con.execute(f"CREATE TABLE IF NOT EXISTS {PARTITION_HASHES} (tbl VARCHAR, month DATE, content_hash VARCHAR, "
                "rows BIGINT, PRIMARY KEY (tbl, month))")
    con.execute(f"INSERT OR REPLACE INTO {PARTITION_HASHES} VALUES (?, ?, ?, ?)",
                [qualified_table, month, content_hash, rows])


def raw_input_lineage(con: duckdb.DuckDBPyConnection, months: list[date]) -> str:
    """SHA-256 over the content hashes of every raw table's partitions of ``months``: what a fit on those months
    was computed from. Recorded hashes are used where the raw assets wrote them; others are computed (a table or
    month that is absent counts as absent), so a re-ingested month with different rows changes the lineage."""
    have = {r[0] for r in con.execute("SELECT table_schema || '.' || table_name FROM information_schema.tables "
                                      "WHERE table_schema = 'raw'").fetchall()}
    recorded = {}
    if PARTITION_HASHES in have and months:
        recorded = {(t, m): h for t, m, h in con.execute(
            f"SELECT tbl, month, content_hash FROM {PARTITION_HASHES} WHERE month IN ({', '.join('?' * len(months))})",
            list(months)).fetchall()}
    parts = []
    for table in RAW_TABLES:
        qualified = f"raw.{table}"
        for m in months:
            if qualified not in have:
                h = "absent"
            else:
                h = recorded.get((qualified, m)) or partition_content_hash(con, qualified, m)
            parts.append(f"{qualified}|{m.isoformat()}|{h}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def null_rates(con: duckdb.DuckDBPyConnection, qualified_table: str, month: date) -> dict[str, float]:
    cols = [r[0] for r in con.execute(f"DESCRIBE {qualified_table}").fetchall()]
    exprs = ", ".join(f'avg(CASE WHEN "{c}" IS NULL THEN 1.0 ELSE 0.0 END)' for c in cols)
    row = con.execute(f"SELECT {exprs} FROM {qualified_table} WHERE month = ?", [month]).fetchall()[0]
    return {c: float(v or 0.0) for c, v in zip(cols, row)}


CUSTOMER_ATTRIBUTES = ("age", "gender", "province", "suitability_profile")


def customer_attributes(con: duckdb.DuckDBPyConnection, month: date, ids: np.ndarray) -> dict[str, np.ndarray]:
    """age (float, NaN unknown), gender, province and suitability profile (object, None unknown) of ``ids`` at
    ``month``, in ``ids`` order — the protected attributes fairness reads and the profile suitability reads."""
    con.register("_attr_ids", pa.table({"customer_id": pa.array(np.asarray(ids).tolist(), pa.string()),
                                        "i": pa.array(np.arange(len(ids)))}))
    try:
        rows = con.execute("SELECT r.i, c.age, c.gender, c.province, c.suitability_profile FROM _attr_ids r "
                           "LEFT JOIN raw.customers c ON c.customer_id = r.customer_id AND c.month = ? ORDER BY r.i",
                           [month]).fetchnumpy()
    finally:
        con.unregister("_attr_ids")
    return {"age": np.asarray(rows["age"], dtype=float),
            **{c: np.asarray(rows[c], dtype=object) for c in CUSTOMER_ATTRIBUTES[1:]}}

"""Where a month of raw data lands, and the validated SELECT that loads it into the warehouse.

Layouts (one month = one Dagster partition, month key = first day of the month):

* ``synthetic`` (canonical): ``<path>/<table>/month=YYYY-MM-01.parquet`` for customers, holdings, transactions
  (and ground_truth), with the columns of ``TABLE_SCHEMAS``.
* ``santander``: ``<path>`` is the Kaggle ``train_ver2.csv`` (all months in one file) for customers and holdings;
  transactions come from the optional ``transactions_path``: a directory in the canonical layout
  (``<dir>/transactions/month=...parquet`` or ``<dir>/month=...parquet``) or one Parquet file holding every
  month (rows selected by ``ts``). Without it the table is *unavailable* (``validated_month`` returns None) and
  the caller marks the dependent feature groups unavailable; nothing is zero-filled.

``transactions_path`` overrides the transaction location for either kind.

Manifest: when a ``manifest.json`` (the generator's format: ``{"files": {"<table>/month=...parquet": {"rows": n,
"sha256": hex}}}``) sits in the landing root beside the table folders, a one-month file it lists must have exactly
that row count (rule ``manifest_rows``) and content hash (``manifest_sha256``); both are checked after the content
rules, so a bad value is named by its own rule first. Files it does not list, and the all-months files (the
Santander CSV, a single transactions file), are checked by content only.

Empty months: customers and holdings must have rows. A transactions month with no rows is an error (``non_empty``)
unless declared empty: its manifest entry records ``"rows": 0``, or the manifest lists the month under
``"declared_empty": {"transactions": ["YYYY-MM-01", ...]}``.

Usage by a raw asset::

    vm = validated_month(con, source, "customers", month)       # raises RawDataError on bad input
    con.execute(f"DELETE FROM customers WHERE month = DATE '{month}'")
    con.execute(f"INSERT INTO customers {vm.sql}")
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable, Literal

import duckdb

from ple_platform.core.data.santander import SANTANDER_TABLES, santander_months, santander_staging
from ple_platform.core.data.schema import TABLE_SCHEMAS, add_months, month_start
from ple_platform.core.data.taxonomy import mcc_hierarchy
from ple_platform.core.data.validation import (
    RawDataError,
    StagedColumn,
    Staging,
    duckdb_type,
    ident,
    readable_error,
    sql_str,
    validate_staging,
)

SourceKind = Literal["synthetic", "santander"]
# Tables that must have rows in every month (a month without customers is a broken landing, not "no data").
NON_EMPTY_TABLES = frozenset({"customers", "holdings"})
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ManifestEntry:
    """What the landing manifest says about one file/month (None where it says nothing)."""

    path: Path  # the manifest file
    rows: int | None = None
    sha256: str | None = None
    declared_empty: bool = False


def manifest_entry(table: str, data_file: Path, month: date, *, all_months: bool) -> ManifestEntry | None:
    """The manifest's record of ``data_file`` (looked up in the file's folder and the one above), or None."""
    for root in (data_file.parent, data_file.parent.parent):
        path = root / MANIFEST_NAME
        if not path.is_file():
            continue
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            files = manifest.get("files") or {}
            declared = (manifest.get("declared_empty") or {}).get(table) or []
        except (OSError, ValueError, AttributeError) as exc:
            raise readable_error(table, str(path), f"manifest is not a readable JSON object ({exc})") from None
        entry = None if all_months else files.get(data_file.relative_to(root).as_posix())
        rows = entry.get("rows") if isinstance(entry, dict) else None
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        return ManifestEntry(path, rows=rows, sha256=sha,
                             declared_empty=rows == 0 or month.isoformat() in {str(m) for m in declared})
    return None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_manifest(table: str, source: str, entry: ManifestEntry | None, n_rows: int) -> None:
    """Raise RawDataError when the file disagrees with its manifest entry (row count first, then hash)."""
    if entry is None:
        return
    if entry.rows is not None and int(entry.rows) != n_rows:
        raise RawDataError(table=table, source=source, rule="manifest_rows",
                           detail=f"{entry.path} records {entry.rows} rows, the file has {n_rows} "
                                  "(truncated, replaced or partly written)")
    if entry.sha256 is not None:
        actual = _file_sha256(Path(source))
        if actual != entry.sha256:
            raise RawDataError(table=table, source=source, rule="manifest_sha256",
                               detail=f"{entry.path} records sha256 {entry.sha256[:16]}…, the file has "
                                      f"{actual[:16]}… (the file changed after the manifest was written)")


@dataclass(frozen=True)
class LandingSource:
    kind: SourceKind
    path: Path
    transactions_path: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("synthetic", "santander"):
            raise ValueError(f"unknown landing source kind {self.kind!r} (expected 'synthetic' or 'santander')")
        object.__setattr__(self, "path", Path(self.path))
        if self.transactions_path is not None:
            object.__setattr__(self, "transactions_path", Path(self.transactions_path))


@dataclass(frozen=True)
class ValidatedMonth:
    """A month that passed every rule. ``sql`` yields exactly the canonical columns (order and types)."""

    sql: str
    source: str
    n_rows: int
    null_rates: dict[str, float]
    table: str = ""
    month: date | None = None
    # column -> rows whose parsed value the source mapping turned into NULL (documented sentinels, e.g. the
    # Santander antiguedad -999999 or implausible Kaggle ages); reported as metadata, never silently dropped.
    coerced: dict[str, int] = field(default_factory=dict)


def month_file(root: Path, table: str, month: date) -> Path:
    """``<root>/<table>/month=YYYY-MM-01.parquet`` (the canonical landing layout)."""
    return Path(root) / table / f"month={month.isoformat()}.parquet"


def parquet_reader(path: str | Path) -> str:
    return f"read_parquet({sql_str(path)}, hive_partitioning = false)"


def canonical_staging(table: str, path: Path, month: date, *, all_months: bool = False) -> Staging:
    """Staging of a canonical Parquet file. ``all_months``: the file holds many months, keep this one's rows
    (by ``month``/``ts``) plus rows whose month/ts is missing or unparseable (so validation reports them)."""
    schema = TABLE_SCHEMAS[table]
    columns = []
    for f in schema:
        sql_type = duckdb_type(f.type)
        value = f"DATE '{month.isoformat()}'" if f.name == "month" else "{p}"
        columns.append(StagedColumn(f.name, sql_type, raw=ident(f.name), value=value, nullable=f.nullable))
    where = None
    if all_months:
        key, sql_type = ("month", "DATE") if "month" in schema.names else ("ts", "TIMESTAMP")
        parsed = f"TRY_CAST({ident(key)} AS {sql_type})"
        lo, hi = month.isoformat(), add_months(month, 1).isoformat()
        where = f"(({parsed} >= {sql_type} '{lo}' AND {parsed} < {sql_type} '{hi}') OR {parsed} IS NULL)"
    return Staging(
        table=table,
        source=str(path),
        reader=parquet_reader(path),
        columns=tuple(columns),
        month=month,
        where=where,
        required_columns=tuple(schema.names),
    )


def _transactions_location(tp: Path, month: date) -> tuple[Path, bool]:
    """(file, holds_all_months) for an explicit transactions_path."""
    if tp.is_dir():
        root = tp / "transactions" if (tp / "transactions").is_dir() else tp
        return root / f"month={month.isoformat()}.parquet", False
    return tp, True


def staging_for(source: LandingSource, table: str, month: date) -> Staging | None:
    """The staging of ``table``/``month`` for ``source``; None when the source does not provide the table."""
    if table == "transactions" and source.transactions_path is not None:
        path, all_months = _transactions_location(source.transactions_path, month)
        return canonical_staging(table, path, month, all_months=all_months)
    if source.kind == "synthetic":
        return canonical_staging(table, month_file(source.path, table, month), month)
    if table in SANTANDER_TABLES:
        return santander_staging(source.path, table, month)
    return None  # santander without a transaction file (or ground_truth): unavailable


def validated_month(
    con: duckdb.DuckDBPyConnection, source: LandingSource, table: str, month: date,
    *, pseudonym_sql: Callable[[str], str] | None = None,
) -> ValidatedMonth | None:
    """Validate one landing month of ``table`` and return the SELECT that loads it.

    Returns None only when ``source`` does not provide ``table`` at all (Santander without a transaction
    file): the caller marks the dependent groups unavailable. Raises :class:`RawDataError` for every bad input,
    including a missing or unreadable file (rule ``readable``). Errors quote customers by the pseudonym
    ``pseudonym_sql`` computes (SQL expression -> SQL expression), never by their source id.
    """
    if table not in TABLE_SCHEMAS:
        raise ValueError(f"unknown table {table!r} (expected one of {sorted(TABLE_SCHEMAS)})")
    if month_start(month) != month:
        raise ValueError(f"month must be the first day of a month, got {month}")
    staging = staging_for(source, table, month)
    if staging is None:
        return None
    path = Path(staging.source)
    if not path.is_file():
        reason = "file not found" if not path.exists() else "not a regular file"
        raise readable_error(table, staging.source, reason)

    all_months = staging.where is not None  # one file holds every month (Santander CSV, single transactions file)
    entry = manifest_entry(table, path, month, all_months=all_months)
    declared_empty = entry is not None and entry.declared_empty

    def empty_detail() -> str:
        if table == "transactions":
            return (f"no rows for month {month:%Y-%m}; an empty transactions month must be declared in "
                    f"{MANIFEST_NAME} (rows 0 or declared_empty)")
        if source.kind == "santander" and staging.reader.startswith("read_csv"):
            try:
                months = santander_months(source.path, con)
            except RawDataError:
                months = []
            covered = f"{months[0]:%Y-%m}..{months[-1]:%Y-%m}" if months else "no parseable month"
            return f"no rows for month {month:%Y-%m}; the file covers {covered}"
        return f"no rows for month {month:%Y-%m}"

    result = validate_staging(
        con,
        staging,
        known_mcc=[int(c) for c in mcc_hierarchy().codes] if table == "transactions" else (),
        require_rows=table in NON_EMPTY_TABLES or (table == "transactions" and not declared_empty),
        empty_detail=empty_detail,
        pseudonym_sql=pseudonym_sql,
    )
    check_manifest(table, staging.source, entry, result.n_rows)
    return ValidatedMonth(
        sql=staging.output_sql(),
        source=staging.source,
        n_rows=result.n_rows,
        null_rates=result.null_rates,
        table=table,
        month=month,
        coerced=result.coerced,
    )

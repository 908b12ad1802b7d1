"""Validation of one landing month, in DuckDB SQL, before anything is written to the warehouse.

Every source (synthetic/canonical Parquet, the Santander Kaggle CSV, an optional canonical transaction file) is
described as a :class:`Staging`: a reader expression (``read_parquet(...)`` / ``read_csv(...)``), an optional
row filter, and per canonical column three SQL expressions:

* ``raw``    the value as it sits in the file (for Santander: trimmed, ``NA``/empty -> NULL),
* ``parsed`` the strict cast of ``raw`` to the canonical type (NULL when not castable),
* ``value``  the canonical value written to the warehouse (usually ``parsed``; a source may map
  documented sentinels to NULL, e.g. Santander ``antiguedad = -999999``; such rows are counted as *coerced*).

:func:`validate_staging` checks every rule in **one aggregate scan** of the file (plus one ``DESCRIBE`` for the
column list); only when a rule fails are the offending rows looked at again to collect up to 3 examples. Nothing
is materialised in Python, so a 20M-row month costs one streaming pass.

A raw customer id never appears in an error: where an example would be an id (duplicates, NULLs in another
column, an id that does not parse), it is quoted as its pseudonym when the caller passes ``pseudonym_sql`` (the
raw asset passes the ingest HMAC), and left out otherwise. Messages go to Dagster's run storage and the UI.

Rules, in the order they are reported (the first failing one is raised; the others are listed in
:attr:`RawDataError.failures` and in the message):

``readable``                    the file exists and DuckDB can read it (parse errors included)
``required_columns``            every column the mapping needs is present
``non_empty``                   customers/holdings: the month has at least one row
``type``                        a non-NULL raw value is not castable to the canonical type (TRY_CAST)
``not_null``                    a non-nullable canonical column is NULL
``month_matches_partition``     the row's month/ts lies outside the partition month (months out of order)
``unique_customer_month``       more than one row per (customer_id, month); n_rows counts every row involved
``amount_finite_non_negative``  transaction amount is NaN, +/-inf or negative
``plausible_amount``            transaction amount above ``AMOUNT_MAX``
``known_mcc``                   MCC code outside the shipped ISO 18245 hierarchy
``plausible_age``               age outside ``AGE_MIN..AGE_MAX`` (NULL is allowed)
``plausible_income``            income NaN, +/-inf, negative or above ``INCOME_MAX`` (NULL is allowed)
``plausible_tenure``            tenure_months outside ``0..TENURE_MAX_MONTHS`` (NULL is allowed)
``plausible_join_date``         join_date before ``JOIN_DATE_MIN`` or after the snapshot month (in the future)
``known_code``                  gender, segment or suitability_profile not in the documented code list
``binary_flags``                holdings product flags other than 0/1/NULL

After these content rules, landing.py checks the source's manifest (``manifest_rows``, ``manifest_sha256``) and
that a transactions month is not empty unless declared (``non_empty``).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Sequence

import duckdb
import pyarrow as pa

from ple_platform.core.data.schema import (
    AGE_MAX, AGE_MIN, AMOUNT_MAX, GENDERS, INCOME_MAX, JOIN_DATE_MIN, PRODUCT_NAMES, SEGMENTS, SUITABILITY_PROFILES,
    TABLE_SCHEMAS, TENURE_MAX_MONTHS, add_months)
from ple_platform.core.warehouse import duckdb_type as warehouse_duckdb_type

RULES: tuple[str, ...] = (
    "readable",
    "required_columns",
    "non_empty",
    "type",
    "not_null",
    "month_matches_partition",
    "unique_customer_month",
    "amount_finite_non_negative",
    "plausible_amount",
    "known_mcc",
    "plausible_age",
    "plausible_income",
    "plausible_tenure",
    "plausible_join_date",
    "known_code",
    "binary_flags",
    "manifest_rows",
    "manifest_sha256",
)
# Errors DuckDB raises for a file it cannot open or parse (not for a bug in the generated SQL).
READ_ERRORS: tuple[type[Exception], ...] = (
    duckdb.IOException,
    duckdb.InvalidInputException,
    duckdb.ConversionException,
)
MAX_EXAMPLES = 3
_FILE_LEVEL_RULES = frozenset({"readable", "non_empty", "manifest_rows", "manifest_sha256"})  # no row count shown
# Code lists of the canonical text columns (NULL = unknown is allowed).
KNOWN_CODES: dict[str, tuple[str, ...]] = {"gender": GENDERS, "segment": SEGMENTS,
                                           "suitability_profile": SUITABILITY_PROFILES}


class RawDataError(ValueError):
    """A landing file violates a rule. Names the table, source file, column, rule, row count and examples."""

    def __init__(
        self,
        *,
        table: str,
        source: str,
        rule: str,
        column: str | None = None,
        n_rows: int = 0,
        examples: Sequence[Any] = (),
        detail: str | None = None,
        failures: Sequence[tuple[str, str | None, int]] = (),
        examples_label: str = "",
    ) -> None:
        self.table = table
        self.source = str(source)
        self.rule = rule
        self.column = column
        self.n_rows = int(n_rows)
        self.examples = list(examples)[:MAX_EXAMPLES]
        self.detail = detail
        self.examples_label = examples_label  # e.g. "customer pseudonym(s) " when examples identify customers
        # Every failure found in the same scan, (rule, column, n_rows), the raised one first.
        self.failures: list[tuple[str, str | None, int]] = list(failures) or [(rule, column, self.n_rows)]
        super().__init__(self._message())

    def _message(self) -> str:
        msg = f"{self.table} ({self.source}): rule '{self.rule}' failed"
        if self.column is not None:
            msg += f" on column '{self.column}'"
        if self.rule not in _FILE_LEVEL_RULES:
            msg += f": {self.n_rows} offending row(s)"
            if self.examples:
                msg += f", e.g. {self.examples_label}{self.examples!r}"
        if self.detail:
            msg += f": {self.detail}" if self.rule in _FILE_LEVEL_RULES else f" ({self.detail})"
        others = self.failures[1:]
        if others:
            msg += "; also failing: " + ", ".join(
                f"'{r}'" + (f" on '{c}'" if c else "") + f" ({n} row(s))" for r, c, n in others
            )
        return msg

    def as_metadata(self) -> dict[str, Any]:
        """Plain-JSON description (for asset-check / run metadata)."""
        return {
            "table": self.table,
            "source": self.source,
            "rule": self.rule,
            "column": self.column,
            "n_rows": self.n_rows,
            "examples": [str(e) for e in self.examples],
            "failures": [{"rule": r, "column": c, "n_rows": n} for r, c, n in self.failures],
        }


# --- SQL helpers ------------------------------------------------------------------------------------------

_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT"}


def duckdb_type(arrow_type: pa.DataType) -> str:
    try:
        return warehouse_duckdb_type(arrow_type)
    except KeyError:
        raise TypeError(f"no DuckDB type for Arrow type {arrow_type}") from None


def sql_str(text: str | Path) -> str:
    """A single-quoted SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def strict_cast_template(sql_type: str) -> str:
    """``parsed`` template (``{r}`` = raw) casting to ``sql_type``; integers must not lose a fractional part
    (DuckDB's TRY_CAST rounds ``'3.7'`` to 4, which would hide a wrong type)."""
    if sql_type in _INTEGER_TYPES:
        return f"CASE WHEN TRY_CAST({{r}} AS DOUBLE) = TRY_CAST({{r}} AS {sql_type}) THEN TRY_CAST({{r}} AS {sql_type}) END"
    return f"TRY_CAST({{r}} AS {sql_type})"


@dataclass(frozen=True)
class StagedColumn:
    """One canonical column of a staging. ``parsed`` may use ``{r}`` (the raw column), ``value`` ``{p}``."""

    name: str
    sql_type: str
    raw: str
    parsed: str | None = None  # default: strict cast of raw to sql_type
    value: str = "{p}"
    source_column: str | None = None  # column named in errors (defaults to ``name``)
    nullable: bool = True

    @property
    def parsed_template(self) -> str:
        return self.parsed if self.parsed is not None else strict_cast_template(self.sql_type)

    @property
    def reported_column(self) -> str:
        return self.source_column or self.name


def _r(c: str) -> str:
    return ident(f"r:{c}")


def _p(c: str) -> str:
    return ident(f"p:{c}")


def _v(c: str) -> str:
    return ident(f"v:{c}")


@dataclass(frozen=True)
class Check:
    """A row-level rule: ``predicate`` is true on offending rows; ``example`` is what gets shown."""

    rule: str
    column: str | None
    predicate: str
    example: str


@dataclass(frozen=True)
class Staging:
    table: str
    source: str  # file path shown in errors and lineage
    reader: str  # FROM-clause expression, e.g. read_parquet('...')
    columns: tuple[StagedColumn, ...]
    month: date
    where: str | None = None  # filter on reader columns (e.g. the month of an all-months file)
    required_columns: tuple[str, ...] = ()  # reader columns that must exist

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        expected = [f.name for f in TABLE_SCHEMAS[self.table]]
        if names != expected:
            raise ValueError(f"staging for {self.table} has columns {names}, expected {expected}")

    def stage_sql(self) -> str:
        """SELECT exposing ``r:<col>``, ``p:<col>`` and ``v:<col>`` for every canonical column."""
        raw = ", ".join(f"{c.raw} AS {_r(c.name)}" for c in self.columns)
        level1 = f"SELECT {raw} FROM {self.reader}" + (f" WHERE {self.where}" if self.where else "")
        parsed = ", ".join(f"{c.parsed_template.format(r=_r(c.name))} AS {_p(c.name)}" for c in self.columns)
        level2 = f"SELECT *, {parsed} FROM ({level1})"
        value = ", ".join(f"{c.value.format(p=_p(c.name))} AS {_v(c.name)}" for c in self.columns)
        return f"SELECT *, {value} FROM ({level2})"

    def output_sql(self) -> str:
        """SELECT of exactly the canonical columns, in canonical order and types, straight from the file."""
        cols = ", ".join(f"CAST({_v(c.name)} AS {c.sql_type}) AS {ident(c.name)}" for c in self.columns)
        return f"SELECT {cols} FROM ({self.stage_sql()})"


@dataclass(frozen=True)
class ValidationResult:
    n_rows: int
    null_rates: dict[str, float]
    coerced: dict[str, int] = field(default_factory=dict)  # column -> rows whose parsed value was mapped to NULL


@dataclass(frozen=True)
class DataProfile:
    n_rows: int
    null_rates: dict[str, float]


# --- the checks ---------------------------------------------------------------------------------------------


def _example_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, (date, datetime)):
        return v.isoformat(sep=" ") if isinstance(v, datetime) else v.isoformat()
    return str(v)


_CSV_LINE_ERROR = re.compile(r"CSV Error on Line: (\d+)")
_CSV_DIAGNOSE_BYTES = 64 << 20  # a sniffing failure comes from the file's first rows: look at the first 64 MiB
_LIKELY = {"encoding": "likely cause: encoding (the file is not UTF-8; re-export it as UTF-8)",
           "delimiter": "likely cause: delimiter (fields must be separated by ',')",
           "fields": "likely cause: a stray delimiter or an unbalanced quote in that row",
           "truncation": "likely cause: truncation (the file ends in the middle of a row)"}


def _csv_diagnosis(path: Path) -> str | None:
    """Line and likely cause of a CSV that DuckDB cannot sniff (it reports neither). Never quotes row content:
    rows carry customer ids."""
    try:
        with Path(path).open("rb") as fh:
            data = fh.read(_CSV_DIAGNOSE_BYTES)
    except OSError:
        return None
    complete = len(data) < _CSV_DIAGNOSE_BYTES
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        if complete or err.start < len(data) - 4:  # not just a character cut by the read limit
            line = data.count(b"\n", 0, err.start) + 1
            return f"line {line}: byte 0x{data[err.start]:02x} is not UTF-8 -> {_LIKELY['encoding']}"
        text = data[:err.start].decode("utf-8")
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=",", quotechar='"')
    try:
        header = next(rows)
    except (StopIteration, csv.Error):
        return None
    if len(header) == 1:
        seps = {sep: header[0].count(sep) for sep in (";", "\t", "|")}
        sep, n = max(seps.items(), key=lambda kv: kv[1])
        if n:
            shown = "tab" if sep == "\t" else repr(sep)
            return f"line 1: the header has no ',' but {n} {shown} -> {_LIKELY['delimiter']}"
    try:
        for row in rows:
            if len(row) != len(header):
                last = rows.line_num == text.count("\n") + 1 and not text.endswith("\n")
                why = _LIKELY["truncation"] if last and complete and len(row) < len(header) else _LIKELY["fields"]
                return f"line {rows.line_num}: {len(row)} fields, the header has {len(header)} -> {why}"
    except csv.Error as err:
        return f"line {rows.line_num}: {err} -> {_LIKELY['fields']}"
    return None


def _read_error_reason(exc: BaseException, source: str | None = None) -> str:
    """DuckDB's reason, shortened to what says why: for CSVs the line and the likely cause (never the line's
    content, which DuckDB quotes as 'Original Line' and which holds customer ids)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0]
    line = _CSV_LINE_ERROR.search(first)
    if line:
        causes = [ln for ln in lines[1:] if not ln.startswith(("Original Line", "Possible", "file =", "*"))]
        cause = causes[0] if causes else "unparseable row"
        kind = ("encoding" if "unicode" in cause.lower() or "utf-8" in cause.lower()
                else "fields" if "column" in cause.lower() else None)
        return f"line {line.group(1)}: {cause[:200]}" + (f" -> {_LIKELY[kind]}" if kind else "")
    if "Error when sniffing file" in first and source is not None:
        diagnosis = _csv_diagnosis(Path(source))
        if diagnosis:
            return f"cannot parse the CSV: {diagnosis}"
    return first[:300]


def readable_error(table: str, source: str, exc: BaseException | str) -> RawDataError:
    reason = exc if isinstance(exc, str) else _read_error_reason(exc, source)
    return RawDataError(table=table, source=source, rule="readable", detail=reason)


def reader_columns(con: duckdb.DuckDBPyConnection, table: str, source: str, reader: str) -> dict[str, str]:
    """Column name -> DuckDB type of a reader expression; RawDataError('readable') if it cannot be opened."""
    try:
        rows = con.sql(f"DESCRIBE SELECT * FROM {reader}").fetchall()
    except READ_ERRORS as exc:
        raise readable_error(table, source, exc) from exc
    return {r[0]: r[1] for r in rows}


def check_required_columns(
    con: duckdb.DuckDBPyConnection, table: str, source: str, reader: str, required: Sequence[str]
) -> dict[str, str]:
    """Raise RawDataError('required_columns') naming the first missing column; return the column types."""
    present = reader_columns(con, table, source, reader)
    missing = [c for c in required if c not in present]
    if missing:
        try:
            n = int(con.sql(f"SELECT count(*) FROM {reader}").fetchall()[0][0])
        except READ_ERRORS:
            n = 0
        raise RawDataError(
            table=table,
            source=source,
            rule="required_columns",
            column=missing[0],
            n_rows=n,
            examples=missing,
            detail=f"missing {len(missing)} of {len(required)} required column(s); present: {sorted(present)[:12]}",
            failures=[("required_columns", c, n) for c in missing],
        )
    return present


def table_checks(table: str, month: date, known_mcc: Sequence[int]) -> list[Check]:
    """Table-specific row rules on the staged columns (in reporting order)."""
    lo, hi = month.isoformat(), add_months(month, 1).isoformat()
    names = {f.name for f in TABLE_SCHEMAS[table]}
    checks: list[Check] = []
    if "month" in names:
        checks.append(
            Check(
                "month_matches_partition",
                "month",
                f"{_p('month')} < DATE '{lo}' OR {_p('month')} >= DATE '{hi}'",
                _p("month"),
            )
        )
    if "ts" in names:
        checks.append(
            Check(
                "month_matches_partition",
                "ts",
                f"{_p('ts')} < TIMESTAMP '{lo}' OR {_p('ts')} >= TIMESTAMP '{hi}'",
                _p("ts"),
            )
        )
    if table == "transactions":
        checks.append(
            Check(
                "amount_finite_non_negative",
                "amount",
                f"NOT isfinite({_v('amount')}) OR {_v('amount')} < 0",
                _v("amount"),
            )
        )
        checks.append(Check("plausible_amount", "amount", f"isfinite({_v('amount')}) AND {_v('amount')} > {AMOUNT_MAX!r}", _v("amount")))
        codes = ", ".join(str(int(c)) for c in known_mcc)
        checks.append(Check("known_mcc", "mcc", f"{_v('mcc')} NOT IN ({codes})", _v("mcc")))
    if "age" in names:
        checks.append(
            Check("plausible_age", "age", f"{_v('age')} < {AGE_MIN} OR {_v('age')} > {AGE_MAX}", _v("age"))
        )
    if "income" in names:
        inc = _v("income")
        checks.append(Check("plausible_income", "income",
                            f"NOT isfinite({inc}) OR {inc} < 0 OR {inc} > {INCOME_MAX!r}", inc))
    if "tenure_months" in names:
        ten = _v("tenure_months")
        checks.append(Check("plausible_tenure", "tenure_months", f"{ten} < 0 OR {ten} > {TENURE_MAX_MONTHS}", ten))
    if "join_date" in names:
        jd = _v("join_date")
        checks.append(Check("plausible_join_date", "join_date",
                            f"{jd} < DATE '{JOIN_DATE_MIN.isoformat()}' OR {jd} >= DATE '{hi}'", jd))
    for column, allowed in KNOWN_CODES.items():
        if column in names:
            listed = ", ".join(sql_str(c) for c in allowed)
            checks.append(Check("known_code", column, f"{_v(column)} NOT IN ({listed})", _v(column)))
    if table == "holdings":
        for p in PRODUCT_NAMES:
            checks.append(Check("binary_flags", p, f"{_v(p)} NOT IN (0, 1)", _v(p)))
    return checks


def _examples(con: duckdb.DuckDBPyConnection, stage: str, predicate: str, example: str) -> list[Any]:
    rows = con.sql(
        f"SELECT ex FROM (SELECT DISTINCT {example} AS ex FROM ({stage}) WHERE ({predicate}) AND {example} IS NOT NULL)"
        f" ORDER BY ex LIMIT {MAX_EXAMPLES}"
    ).fetchall()
    return [_example_value(r[0]) for r in rows]


ID_COLUMN = "customer_id"
PSEUDONYM_LABEL = "customer pseudonym(s) "


def validate_staging(
    con: duckdb.DuckDBPyConnection,
    staging: Staging,
    *,
    known_mcc: Sequence[int] = (),
    require_rows: bool = False,
    empty_detail: Callable[[], str] | None = None,
    pseudonym_sql: Callable[[str], str] | None = None,
) -> ValidationResult:
    """Run every rule over the staged month in one aggregate scan; raise RawDataError on the first failure.

    ``pseudonym_sql`` maps a VARCHAR SQL expression to the expression of its pseudonym; examples that would show
    a customer id show that instead (or nothing without it)."""
    table, source = staging.table, staging.source

    id_examples: set[str] = set()  # example expressions that show pseudonyms

    def id_example(expr: str) -> str | None:
        if pseudonym_sql is None:
            return None
        shown = pseudonym_sql(f"CAST({expr} AS VARCHAR)")
        id_examples.add(shown)
        return shown

    check_required_columns(con, table, source, staging.reader, staging.required_columns)
    stage = staging.stage_sql()
    unique = "month" in {c.name for c in staging.columns} and table != "transactions"

    # (key, aggregate expression) pairs evaluated in a single pass.
    aggs: list[tuple[tuple, str]] = [(("n",), "count(*)")]
    for c in staging.columns:
        aggs.append((("type", c.name), f"count_if({_r(c.name)} IS NOT NULL AND {_p(c.name)} IS NULL)"))
        aggs.append((("null", c.name), f"count_if({_v(c.name)} IS NULL)"))
        if c.value != "{p}":
            aggs.append((("coerced", c.name), f"count_if({_p(c.name)} IS NOT NULL AND {_v(c.name)} IS NULL)"))
        if not c.nullable:
            aggs.append((("not_null", c.name), f"count_if({_r(c.name)} IS NULL)"))
    if unique:
        aggs.append((("dup",), f"count({_v('customer_id')}) - count(DISTINCT {_v('customer_id')})"))
    checks = table_checks(table, staging.month, known_mcc)
    for i, chk in enumerate(checks):
        aggs.append((("check", i), f"count_if({chk.predicate})"))

    try:
        row = con.sql(f"SELECT {', '.join(a for _, a in aggs)} FROM ({stage})").fetchall()[0]
    except READ_ERRORS as exc:
        raise readable_error(table, source, exc) from exc
    res = {k: int(v or 0) for (k, _), v in zip(aggs, row)}
    n = res[("n",)]
    by_name = {c.name: c for c in staging.columns}

    # Collect failures in reporting order: (rule, reported column, n_rows, predicate, example expr).
    failures: list[tuple[str, str | None, int, str | None, str | None]] = []
    if require_rows and n == 0:
        failures.append(("non_empty", None, 0, None, None))
    for c in staging.columns:
        k = res[("type", c.name)]
        if k:
            ex = id_example(_r(c.name)) if c.name == ID_COLUMN else _r(c.name)
            failures.append(("type", c.reported_column, k, f"{_r(c.name)} IS NOT NULL AND {_p(c.name)} IS NULL", ex))
    for c in staging.columns:
        k = res.get(("not_null", c.name), 0)
        if k:
            ex = id_example(_v(ID_COLUMN)) if c.name != ID_COLUMN and ID_COLUMN in by_name else None
            failures.append(("not_null", c.reported_column, k, f"{_r(c.name)} IS NULL", ex))
    dup_index = len(failures)
    has_dup = unique and res[("dup",)] > 0
    for i, chk in enumerate(checks):
        k = res[("check", i)]
        if k:
            col = by_name[chk.column].reported_column if chk.column in by_name else chk.column
            failures.append((chk.rule, col, k, chk.predicate, chk.example))
    if has_dup:
        # after month_matches_partition (a month-mismatch often produces the duplicates), before the rest
        pos = dup_index + sum(1 for f in failures[dup_index:] if f[0] == "month_matches_partition")
        failures.insert(pos, ("unique_customer_month", by_name["customer_id"].reported_column, -1, None, None))

    if not failures:
        coerced = {c: res[("coerced", c)] for c in by_name if res.get(("coerced", c), 0)}
        null_rates = {c: (res[("null", c)] / n if n else 0.0) for c in by_name}
        return ValidationResult(n_rows=n, null_rates=null_rates, coerced=coerced)

    try:
        resolved: list[tuple[str, str | None, int, list[Any]]] = []
        for rule, col, k, predicate, example in failures:
            examples: list[Any] = []
            if rule == "unique_customer_month":
                key = _v(ID_COLUMN)
                shown = id_example("key") or "NULL"
                dup_rows = con.sql(
                    f"SELECT {shown}, c FROM (SELECT {key} AS key, count(*) AS c FROM ({stage}) WHERE {key} IS NOT NULL"
                    " GROUP BY 1 HAVING count(*) > 1) ORDER BY 1"
                ).fetchall()
                k = sum(int(r[1]) for r in dup_rows)
                examples = [r[0] for r in dup_rows[:MAX_EXAMPLES] if r[0] is not None]
            elif predicate is not None and example is not None and not resolved:
                examples = _examples(con, stage, predicate, example)  # examples only for the raised failure
            resolved.append((rule, col, k, examples))
    except READ_ERRORS as exc:
        raise readable_error(table, source, exc) from exc
    rule, col, k, examples = resolved[0]
    label = PSEUDONYM_LABEL if examples and (rule == "unique_customer_month" or failures[0][4] in id_examples) else ""
    detail = empty_detail() if rule == "non_empty" and empty_detail is not None else None
    raise RawDataError(
        table=table,
        source=source,
        rule=rule,
        column=col,
        n_rows=k,
        examples=examples,
        detail=detail,
        failures=[(r, c, kk) for r, c, kk, _ in resolved],
        examples_label=label,
    )


def profile(con: duckdb.DuckDBPyConnection, sql: str) -> DataProfile:
    """Row count and per-column null rate of any SELECT (one aggregate scan)."""
    cols = [r[0] for r in con.sql(f"DESCRIBE {sql}").fetchall()]
    aggs = ["count(*)"] + [f"count_if({ident(c)} IS NULL)" for c in cols]
    row = con.sql(f"SELECT {', '.join(aggs)} FROM ({sql})").fetchall()[0]
    n = int(row[0])
    return DataProfile(n_rows=n, null_rates={c: (int(v) / n if n else 0.0) for c, v in zip(cols, row[1:])})

"""Santander Product Recommendation (Kaggle ``train_ver2.csv``) -> canonical ``customers`` / ``holdings``.

The whole CSV holds every month (``fecha_dato`` is the 28th of each month). One month is selected with a
filter on ``fecha_dato``; everything is read as VARCHAR and mapped with ``TRIM`` + ``TRY_CAST`` in DuckDB SQL, so
a 2 GB file streams through a single scan. Rows whose ``fecha_dato`` cannot be parsed are included in *every*
month's staging so that validation reports them (rule ``not_null``/``type`` on ``fecha_dato``) instead of
silently dropping them.

Mapping (source column -> canonical column):

==========================  =================  ==============================================================
``ncodpers``                ``customer_id``    integer id rendered as a string (pseudonymised later)
``fecha_dato``              ``month``          the partition month (first day)
``age``                     ``age``            space-padded integer; values outside AGE_MIN..AGE_MAX -> NULL
                                               (Kaggle has ages 2..164; counted in ``coerced['age']``)
``sexo``                    ``gender``         ``V`` (varón) -> ``M``, ``H`` (hembra) -> ``F``
``nomprov``                 ``province``       as is (e.g. ``CORUÑA, A``)
``canal_entrada``           ``channel``        as is (e.g. ``KHE``)
``segmento``                ``segment``        ``02 - PARTICULARES`` -> ``02-PARTICULARES`` (must be in SEGMENTS)
``renta``                   ``income``         float; empty/``NA`` -> NULL
``fecha_alta``              ``join_date``      ``YYYY-MM-DD``
``antiguedad``              ``tenure_months``  space-padded integer; ``-999999`` (unknown) -> NULL
``ind_actividad_cliente``   ``is_active``      1 -> true, 0 -> false
(none)                      ``suitability_profile``  NULL: the source has no questionnaire
``ind_*_ult1``              product flags      0/1; ``NA`` stays NULL (never zero-filled)
==========================  =================  ==============================================================

Everywhere, a value that is empty or ``NA`` after trimming is NULL; any other value that does not map is a
``type`` failure naming the *source* column.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb

from ple_platform.core.data.schema import AGE_MAX, AGE_MIN, PRODUCTS, SEGMENTS, TABLE_SCHEMAS, add_months
from ple_platform.core.data.validation import (
    READ_ERRORS,
    Staging,
    StagedColumn,
    check_required_columns,
    duckdb_type,
    ident,
    readable_error,
    sql_str,
    strict_cast_template,
)

SANTANDER_COLUMNS: tuple[str, ...] = (
    "fecha_dato",
    "ncodpers",
    "ind_empleado",
    "pais_residencia",
    "sexo",
    "age",
    "fecha_alta",
    "ind_nuevo",
    "antiguedad",
    "indrel",
    "ult_fec_cli_1t",
    "indrel_1mes",
    "tiprel_1mes",
    "indresi",
    "indext",
    "conyuemp",
    "canal_entrada",
    "indfall",
    "tipodom",
    "cod_prov",
    "nomprov",
    "ind_actividad_cliente",
    "renta",
    "segmento",
) + tuple(p.santander_column for p in PRODUCTS)

SANTANDER_TABLES: tuple[str, ...] = ("customers", "holdings")
TENURE_UNKNOWN = -999999


def csv_reader(csv_path: str | Path) -> str:
    """FROM-clause expression reading the Kaggle CSV with every column as VARCHAR."""
    return (
        f"read_csv({sql_str(csv_path)}, header = true, all_varchar = true, delim = ',', quote = '\"', "
        "escape = '\"')"
    )


def clean(column: str) -> str:
    """Trimmed text of a source column; empty and ``NA`` become NULL."""
    c = ident(column)
    return f"CASE WHEN TRIM({c}) IN ('', 'NA') THEN NULL ELSE TRIM({c}) END"


def _parsed_date(column: str) -> str:
    return f"TRY_CAST(TRIM({ident(column)}) AS DATE)"


def month_filter(month: date) -> str:
    """Rows of ``month`` plus rows whose fecha_dato is missing/unparseable (reported by validation)."""
    d = _parsed_date("fecha_dato")
    lo, hi = month.isoformat(), add_months(month, 1).isoformat()
    return f"(({d} >= DATE '{lo}' AND {d} < DATE '{hi}') OR {d} IS NULL)"


def _key_columns(month: date) -> list[StagedColumn]:
    return [
        StagedColumn(
            "customer_id",
            "VARCHAR",
            raw=clean("ncodpers"),
            parsed=f"CAST(({strict_cast_template('BIGINT')}) AS VARCHAR)",
            source_column="ncodpers",
            nullable=False,
        ),
        StagedColumn(
            "month",
            "DATE",
            raw=clean("fecha_dato"),
            value=f"DATE '{month.isoformat()}'",
            source_column="fecha_dato",
            nullable=False,
        ),
    ]


def _segments_list() -> str:
    return "[" + ", ".join(f"'{s}'" for s in SEGMENTS) + "]"


def customer_columns(month: date) -> list[StagedColumn]:
    segment = "regexp_replace({r}, '\\s*-\\s*', '-')"
    return _key_columns(month) + [
        StagedColumn(
            "age",
            "SMALLINT",
            raw=clean("age"),
            value=f"CASE WHEN {{p}} BETWEEN {AGE_MIN} AND {AGE_MAX} THEN {{p}} END",
        ),
        StagedColumn(
            "gender", "VARCHAR", raw=clean("sexo"), parsed="CASE {r} WHEN 'V' THEN 'M' WHEN 'H' THEN 'F' END",
            source_column="sexo",
        ),
        StagedColumn("province", "VARCHAR", raw=clean("nomprov"), parsed="{r}", source_column="nomprov"),
        StagedColumn("channel", "VARCHAR", raw=clean("canal_entrada"), parsed="{r}", source_column="canal_entrada"),
        StagedColumn(
            "segment",
            "VARCHAR",
            raw=clean("segmento"),
            parsed=f"CASE WHEN list_contains({_segments_list()}, {segment}) THEN {segment} END",
            source_column="segmento",
        ),
        StagedColumn("income", "DOUBLE", raw=clean("renta"), source_column="renta"),
        StagedColumn("join_date", "DATE", raw=clean("fecha_alta"), source_column="fecha_alta"),
        StagedColumn(
            "tenure_months",
            "INTEGER",
            raw=clean("antiguedad"),
            value=f"CASE WHEN {{p}} = {TENURE_UNKNOWN} THEN NULL ELSE {{p}} END",
            source_column="antiguedad",
        ),
        StagedColumn(
            "is_active",
            "BOOLEAN",
            raw=clean("ind_actividad_cliente"),
            parsed="CASE TRY_CAST({r} AS DOUBLE) WHEN 1 THEN true WHEN 0 THEN false END",
            source_column="ind_actividad_cliente",
        ),
        # No investor-risk questionnaire in this source: unknown, so investment products stay unrecommendable.
        StagedColumn("suitability_profile", "VARCHAR", raw="NULL::VARCHAR", parsed="{r}"),
    ]


def holdings_columns(month: date) -> list[StagedColumn]:
    return _key_columns(month) + [
        StagedColumn(p.name, "TINYINT", raw=clean(p.santander_column), source_column=p.santander_column)
        for p in PRODUCTS
    ]


def santander_staging(csv_path: str | Path, table: str, month: date) -> Staging:
    """The staging (reader, month filter, column mapping) of one month of ``table`` from the Kaggle CSV."""
    if table == "customers":
        columns = customer_columns(month)
    elif table == "holdings":
        columns = holdings_columns(month)
    else:
        raise ValueError(f"the Santander CSV has no {table!r} table (only {SANTANDER_TABLES})")
    # Sanity: the declared SQL types are the canonical ones.
    for c, f in zip(columns, TABLE_SCHEMAS[table]):
        assert c.sql_type == duckdb_type(f.type), (c.name, c.sql_type, f.type)
    required = tuple(dict.fromkeys(["fecha_dato", "ncodpers"] + [
        c.source_column for c in columns if c.source_column in SANTANDER_COLUMNS
    ]))
    return Staging(
        table=table,
        source=str(csv_path),
        reader=csv_reader(csv_path),
        columns=tuple(columns),
        month=month,
        where=month_filter(month),
        required_columns=required,
    )


def santander_sql(csv_path: str | Path, table: str, month: date) -> str:
    """SELECT of the canonical ``table`` for ``month`` (unvalidated; use landing.validated_month)."""
    return santander_staging(csv_path, table, month).output_sql()


def santander_months(csv_path: str | Path, con: duckdb.DuckDBPyConnection | None = None) -> list[date]:
    """Sorted month starts present in ``fecha_dato`` (one scan of the file); unparseable dates are skipped."""
    own = con is None
    con = con or duckdb.connect()
    try:
        if not Path(csv_path).is_file():
            raise readable_error("santander", str(csv_path), "file not found")
        check_required_columns(con, "santander", str(csv_path), csv_reader(csv_path), ["fecha_dato"])
        d = _parsed_date("fecha_dato")
        rows = con.sql(
            f"SELECT DISTINCT year({d}) AS y, month({d}) AS m FROM {csv_reader(csv_path)} WHERE {d} IS NOT NULL ORDER BY 1, 2"
        ).fetchall()
    except READ_ERRORS as exc:
        raise readable_error("santander", str(csv_path), exc) from exc
    finally:
        if own:
            con.close()
    return [date(int(y), int(m), 1) for y, m in rows]

"""Bad-input catalogue: implausible, malformed, truncated and mis-declared landing months in both formats.

Each case corrupts February 2015 in a private copy of a clean landing zone and ingests it the way the raw asset
does (validate, then replace the partition). Every case must fail with a RawDataError naming the file, the column
(or, for unreadable CSVs, the line and likely cause) and the rule, and must leave every stored partition
(January and the clean February, all tables) exactly as it was.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from datetime import date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ple_platform.core.data.landing import LandingSource, month_file, validated_month
from ple_platform.core.data.validation import RULES, RawDataError
from ple_platform.core.governance.audit.pseudonymise import hmac_sql
from ple_platform.core.warehouse import ensure_raw_table, partition_content_hash, replace_partition
from ple_platform.defs.raw.assets import _insert_select

JAN, FEB = date(2015, 1, 1), date(2015, 2, 1)
KEY = b"catalogue-pseudonymisation-key-0123456789"
SAMPLE = Path(__file__).parent / "data" / "santander_train_ver2_sample.csv"
TABLES = ("customers", "holdings", "transactions")


def ingest(con, source: LandingSource, table: str, month: date) -> int:
    """What the raw asset does: validate the landing month, then atomically replace the stored partition."""
    vm = validated_month(con, source, table, month, pseudonym_sql=lambda e: hmac_sql(e, KEY))
    return replace_partition(con, ensure_raw_table(con, table), month, _insert_select(table, vm.sql, KEY))


def hashes(con) -> dict:
    return {(t, m): partition_content_hash(con, f"raw.{t}", m) for t in TABLES for m in (JAN, FEB)}


# --- clean landing zones and their warehouses ----------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_base(tmp_path_factory, landing_dir):
    """January and February of the session landing (files + the generator's manifest), ingested."""
    base = tmp_path_factory.mktemp("catalogue_synthetic")
    landing = base / "landing"
    for table in TABLES:
        (landing / table).mkdir(parents=True)
        for m in (JAN, FEB):
            shutil.copy(month_file(landing_dir, table, m), landing / table)
    shutil.copy(landing_dir / "manifest.json", landing)
    con = duckdb.connect(str(base / "warehouse.duckdb"))
    for m in (JAN, FEB):
        for table in TABLES:
            assert ingest(con, LandingSource("synthetic", landing), table, m) > 0
    yield {"landing": landing, "con": con, "hashes": hashes(con)}
    con.close()


@pytest.fixture(scope="module")
def santander_base(tmp_path_factory, landing_dir):
    """The Kaggle-format sample plus canonical transaction months in a transactions folder, ingested."""
    base = tmp_path_factory.mktemp("catalogue_santander")
    (base / "tx").mkdir()
    for m in (JAN, FEB):
        shutil.copy(month_file(landing_dir, "transactions", m), base / "tx")
    shutil.copy(SAMPLE, base / "train_ver2.csv")
    con = duckdb.connect(str(base / "warehouse.duckdb"))
    src = LandingSource("santander", base / "train_ver2.csv", transactions_path=base / "tx")
    for m in (JAN, FEB):
        for table in TABLES:
            assert ingest(con, src, table, m) > 0
    yield {"base": base, "con": con, "hashes": hashes(con)}
    con.close()


# --- synthetic (canonical Parquet) cases --------------------------------------------------------------------


def _loose(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema])


def set_value(column, value, row=3):
    def edit(rows, schema):
        rows[row][column] = value
        return rows, schema
    return edit


def duplicate_row(rows, schema):
    return rows + [dict(rows[4])], schema


def drop_row(rows, schema):
    return rows[:-1], schema


def no_rows(rows, schema):
    return [], schema


def drop_column(column):
    def edit(rows, schema):
        for r in rows:
            del r[column]
        return rows, pa.schema([f for f in schema if f.name != column])
    return edit


def retype(column, arrow_type, value):
    def edit(rows, schema):
        for r in rows:
            r[column] = None if r[column] is None else (value if value is not None else float(r[column]))
        rows[2][column] = value if value is not None else 0.5
        return rows, pa.schema([pa.field(f.name, arrow_type) if f.name == column else f for f in schema])
    return edit


def scale(column, factor):
    """A plausible edit (same row count, valid values): only the manifest hash can notice it."""
    def edit(rows, schema):
        for r in rows:
            if r[column] is not None:
                r[column] = round(r[column] * factor, 2)
        return rows, schema
    return edit


def corrupt_bytes(path: Path):
    path.write_bytes(b"PAR1 not a parquet file")


def remove_file(path: Path):
    path.unlink()


S = "synthetic"
SYNTHETIC_CASES = [
    # (id, table, edit, rule, column)
    ("age_7", "customers", set_value("age", 7), "plausible_age", "age"),
    ("age_500", "customers", set_value("age", 500), "plausible_age", "age"),
    ("income_1e300", "customers", set_value("income", 1e300), "plausible_income", "income"),
    ("income_negative", "customers", set_value("income", -1.0), "plausible_income", "income"),
    ("income_nan", "customers", set_value("income", math.nan), "plausible_income", "income"),
    ("income_inf", "customers", set_value("income", math.inf), "plausible_income", "income"),
    ("tenure_sentinel", "customers", set_value("tenure_months", -999999), "plausible_tenure", "tenure_months"),
    ("tenure_5000", "customers", set_value("tenure_months", 5000), "plausible_tenure", "tenure_months"),
    ("join_future", "customers", set_value("join_date", date(2030, 1, 1)), "plausible_join_date", "join_date"),
    ("join_next_month", "customers", set_value("join_date", date(2015, 3, 1)), "plausible_join_date", "join_date"),
    ("join_1850", "customers", set_value("join_date", date(1850, 1, 1)), "plausible_join_date", "join_date"),
    ("gender_X", "customers", set_value("gender", "X"), "known_code", "gender"),
    ("gender_word", "customers", set_value("gender", "male"), "known_code", "gender"),
    ("suitability_unknown", "customers", set_value("suitability_profile", "aggressive"), "known_code",
     "suitability_profile"),
    ("segment_unknown", "customers", set_value("segment", "04-OTHER"), "known_code", "segment"),
    ("customers_duplicate", "customers", duplicate_row, "unique_customer_month", "customer_id"),
    ("customers_null_id", "customers", set_value("customer_id", None), "not_null", "customer_id"),
    ("customers_other_month", "customers", set_value("month", date(2015, 3, 1)), "month_matches_partition",
     "month"),
    ("customers_null_month", "customers", set_value("month", None), "not_null", "month"),
    ("customers_missing_column", "customers", drop_column("income"), "required_columns", "income"),
    ("age_as_text", "customers", retype("age", pa.string(), "abc"), "type", "age"),
    ("customers_empty", "customers", no_rows, "non_empty", None),
    ("customers_corrupt", "customers", corrupt_bytes, "readable", None),
    ("customers_missing_file", "customers", remove_file, "readable", None),
    ("customers_row_dropped", "customers", drop_row, "manifest_rows", None),
    ("customers_edited", "customers", scale("income", 1.01), "manifest_sha256", None),
    ("flag_2", "holdings", set_value("credit_card", 2), "binary_flags", "credit_card"),
    ("flag_negative", "holdings", set_value("mortgage", -1), "binary_flags", "mortgage"),
    ("flag_fractional", "holdings", retype("loans", pa.float64(), None), "type", "loans"),
    ("holdings_duplicate", "holdings", duplicate_row, "unique_customer_month", "customer_id"),
    ("holdings_empty", "holdings", no_rows, "non_empty", None),
    ("holdings_row_dropped", "holdings", drop_row, "manifest_rows", None),
    ("holdings_missing_column", "holdings", drop_column("payroll"), "required_columns", "payroll"),
    ("amount_1e300", "transactions", set_value("amount", 1e300), "plausible_amount", "amount"),
    ("amount_2e6", "transactions", set_value("amount", 2e6), "plausible_amount", "amount"),
    ("amount_negative", "transactions", set_value("amount", -5.0), "amount_finite_non_negative", "amount"),
    ("amount_nan", "transactions", set_value("amount", math.nan), "amount_finite_non_negative", "amount"),
    ("amount_inf", "transactions", set_value("amount", math.inf), "amount_finite_non_negative", "amount"),
    ("amount_null", "transactions", set_value("amount", None), "not_null", "amount"),
    ("mcc_unknown", "transactions", set_value("mcc", 9999), "known_mcc", "mcc"),
    ("ts_next_month", "transactions", set_value("ts", datetime(2015, 3, 1)), "month_matches_partition", "ts"),
    ("ts_previous_month", "transactions", set_value("ts", datetime(2015, 1, 31, 23, 59)), "month_matches_partition",
     "ts"),
    ("merchant_null", "transactions", set_value("merchant_id", None), "not_null", "merchant_id"),
    ("transactions_empty", "transactions", no_rows, "non_empty", None),
    ("transactions_rows_dropped", "transactions", drop_row, "manifest_rows", None),
    ("transactions_edited", "transactions", scale("amount", 1.5), "manifest_sha256", None),
    ("transactions_corrupt", "transactions", corrupt_bytes, "readable", None),
    ("transactions_missing_column", "transactions", drop_column("mcc"), "required_columns", "mcc"),
]


def assert_named(err: RawDataError, path: Path, rule: str, column: str | None):
    text = str(err)
    assert err.rule == rule and err.rule in RULES, text
    assert err.source == str(path) and str(path) in text, text
    assert f"rule '{rule}'" in text, text
    if column is not None:
        assert err.column == column and f"column '{column}'" in text, text
    assert "\n" not in text and len(text) < 1000


@pytest.mark.parametrize("case", SYNTHETIC_CASES, ids=[c[0] for c in SYNTHETIC_CASES])
def test_synthetic_bad_input(case, synthetic_base, tmp_path):
    _, table, edit, rule, column = case
    landing = tmp_path / "landing"
    shutil.copytree(synthetic_base["landing"], landing)
    path = month_file(landing, table, FEB)
    if edit in (corrupt_bytes, remove_file):
        edit(path)
    else:
        f = pq.read_table(path)
        rows, schema = edit(f.to_pylist(), _loose(f.schema))
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    con = synthetic_base["con"]
    with pytest.raises(RawDataError) as info:
        ingest(con, LandingSource(S, landing), table, FEB)
    assert_named(info.value, path, rule, column)
    assert hashes(con) == synthetic_base["hashes"]


def test_declared_empty_transactions_month_is_accepted(synthetic_base, tmp_path):
    landing = tmp_path / "landing"
    shutil.copytree(synthetic_base["landing"], landing)
    path = month_file(landing, "transactions", FEB)
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    manifest = json.loads((landing / "manifest.json").read_text())
    manifest["declared_empty"] = {"transactions": [FEB.isoformat()]}
    del manifest["files"]["transactions/month=2015-02-01.parquet"]["sha256"]
    manifest["files"]["transactions/month=2015-02-01.parquet"]["rows"] = 0
    (landing / "manifest.json").write_text(json.dumps(manifest))
    con = duckdb.connect()
    assert ingest(con, LandingSource(S, landing), "transactions", FEB) == 0
    # Without a manifest nothing declares the month empty.
    (landing / "manifest.json").unlink()
    with pytest.raises(RawDataError) as info:
        ingest(con, LandingSource(S, landing), "transactions", FEB)
    assert info.value.rule == "non_empty" and "declared" in str(info.value)


# --- Santander (Kaggle CSV) cases ---------------------------------------------------------------------------


def _sample() -> list[list[str]]:
    with SAMPLE.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def edit_cell(column, value):
    def edit(rows):
        col = rows[0].index(column)
        row = next(r for r in rows[1:] if r[0] == "2015-02-28")
        row[col] = value
        return rows
    return edit


def csv_duplicate(rows):
    return rows + [list(next(r for r in rows[1:] if r[0] == "2015-02-28"))]


def csv_drop_column(column):
    def edit(rows):
        col = rows[0].index(column)
        return [r[:col] + r[col + 1:] for r in rows]
    return edit


def csv_header_only(rows):
    return rows[:1]


def _write_csv(path: Path, rows):
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


def raw_semicolons(path: Path):
    path.write_bytes(SAMPLE.read_bytes().replace(b",", b";"))


def raw_latin1(path: Path):
    path.write_bytes(SAMPLE.read_bytes().replace(b"MALAGA", "MÁLAGA".encode("latin-1")))


def raw_truncated(path: Path):
    lines = SAMPLE.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:9]) + b"\n" + lines[9][:40])


def raw_extra_field(path: Path):
    lines = SAMPLE.read_bytes().split(b"\n")
    lines[8] += b",EXTRA"
    path.write_bytes(b"\n".join(lines))


def raw_missing(path: Path):
    path.unlink()


def tx_edit(column, value):
    def edit(path: Path):
        f = pq.read_table(path)
        rows = f.to_pylist()
        rows[5][column] = value
        pq.write_table(pa.Table.from_pylist(rows, schema=_loose(f.schema)), path)
    return edit


def tx_empty(path: Path):
    pq.write_table(pq.read_table(path).slice(0, 0), path)


SANTANDER_CASES = [
    # (id, table, edit, rule, column, line): edits of rows go through csv; raw_* write bytes; tx_* edit transactions
    ("age_text", "customers", edit_cell("age", "abc"), "type", "age", None),
    ("age_fraction", "customers", edit_cell("age", "35.5"), "type", "age", None),
    ("sexo_unknown", "customers", edit_cell("sexo", "X"), "type", "sexo", None),
    ("renta_1e300", "customers", edit_cell("renta", "1e300"), "plausible_income", "renta", None),
    ("renta_negative", "customers", edit_cell("renta", "-5"), "plausible_income", "renta", None),
    ("renta_nan", "customers", edit_cell("renta", "nan"), "plausible_income", "renta", None),
    ("renta_text", "customers", edit_cell("renta", "lots"), "type", "renta", None),
    ("antiguedad_negative", "customers", edit_cell("antiguedad", "-5"), "plausible_tenure", "antiguedad", None),
    ("antiguedad_huge", "customers", edit_cell("antiguedad", "99999"), "plausible_tenure", "antiguedad", None),
    ("fecha_alta_future", "customers", edit_cell("fecha_alta", "2030-01-01"), "plausible_join_date", "fecha_alta",
     None),
    ("fecha_alta_1800", "customers", edit_cell("fecha_alta", "1800-01-01"), "plausible_join_date", "fecha_alta",
     None),
    ("fecha_alta_text", "customers", edit_cell("fecha_alta", "yesterday"), "type", "fecha_alta", None),
    ("segmento_unknown", "customers", edit_cell("segmento", "05 - OTROS"), "type", "segmento", None),
    ("actividad_7", "customers", edit_cell("ind_actividad_cliente", "7"), "type", "ind_actividad_cliente", None),
    ("ncodpers_missing", "customers", edit_cell("ncodpers", "NA"), "not_null", "ncodpers", None),
    ("ncodpers_text", "customers", edit_cell("ncodpers", "12a"), "type", "ncodpers", None),
    ("fecha_dato_format", "customers", edit_cell("fecha_dato", "28/02/2015"), "type", "fecha_dato", None),
    ("renta_column_missing", "customers", csv_drop_column("renta"), "required_columns", "renta", None),
    ("header_only", "customers", csv_header_only, "non_empty", None, None),
    ("flag_2", "holdings", edit_cell("ind_recibo_ult1", "2"), "binary_flags", "ind_recibo_ult1", None),
    ("flag_text", "holdings", edit_cell("ind_cco_fin_ult1", "yes"), "type", "ind_cco_fin_ult1", None),
    ("holdings_duplicate", "holdings", csv_duplicate, "unique_customer_month", "ncodpers", None),
    ("flag_column_missing", "holdings", csv_drop_column("ind_tjcr_fin_ult1"), "required_columns",
     "ind_tjcr_fin_ult1", None),
    ("semicolon_delimiter", "customers", raw_semicolons, "readable", None, ("line 1", "delimiter")),
    ("latin1_encoding", "customers", raw_latin1, "readable", None, ("line 2", "encoding")),
    ("truncated_file", "customers", raw_truncated, "readable", None, ("line 10", "truncation")),
    ("extra_field", "holdings", raw_extra_field, "readable", None, ("line 9", "stray delimiter")),
    ("csv_missing", "customers", raw_missing, "readable", None, ("file not found",)),
    ("tx_amount_1e300", "transactions", tx_edit("amount", 1e300), "plausible_amount", "amount", None),
    ("tx_amount_negative", "transactions", tx_edit("amount", -1.0), "amount_finite_non_negative", "amount", None),
    ("tx_mcc_unknown", "transactions", tx_edit("mcc", 1), "known_mcc", "mcc", None),
    ("tx_empty_undeclared", "transactions", tx_empty, "non_empty", None, ("declared",)),
]


@pytest.mark.parametrize("case", SANTANDER_CASES, ids=[c[0] for c in SANTANDER_CASES])
def test_santander_bad_input(case, santander_base, tmp_path):
    _, table, edit, rule, column, line = case
    shutil.copy(santander_base["base"] / "train_ver2.csv", tmp_path / "train_ver2.csv")
    shutil.copytree(santander_base["base"] / "tx", tmp_path / "tx")
    csv_path, path = tmp_path / "train_ver2.csv", tmp_path / "train_ver2.csv"
    if table == "transactions":
        path = tmp_path / "tx" / f"month={FEB.isoformat()}.parquet"
        edit(path)
    elif edit.__name__.startswith("raw_"):
        edit(path)
    else:
        _write_csv(path, edit(_sample()))
    con = santander_base["con"]
    with pytest.raises(RawDataError) as info:
        ingest(con, LandingSource("santander", csv_path, transactions_path=tmp_path / "tx"), table, FEB)
    assert_named(info.value, path, rule, column)
    for text in line or ():
        assert text in str(info.value), str(info.value)
    assert hashes(con) == santander_base["hashes"]


def test_catalogue_size():
    assert len(SYNTHETIC_CASES) + len(SANTANDER_CASES) >= 60
    assert {c[3] for c in SYNTHETIC_CASES + SANTANDER_CASES} >= set(RULES)

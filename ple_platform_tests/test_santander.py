"""Santander (Kaggle train_ver2.csv) adapter: mapping, month filtering and bad input."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import duckdb
import pytest

from ple_platform.core.data.landing import LandingSource, validated_month
from ple_platform.core.data.santander import SANTANDER_COLUMNS, santander_months, santander_sql
from ple_platform.core.data.schema import PRODUCT_NAMES, PRODUCTS, TABLE_SCHEMAS
from ple_platform.core.governance.audit.pseudonymise import hmac_sql, pseudonymise
from ple_platform.core.data.validation import RawDataError

SAMPLE = Path(__file__).parent / "data" / "santander_train_ver2_sample.csv"
JAN, FEB = date(2015, 1, 1), date(2015, 2, 1)


KEY = b"test-pseudonymisation-key"  # errors quote customers by their pseudonym under this key


@pytest.fixture
def con():
    c = duckdb.connect()
    yield c
    c.close()


def load(con, table: str, month: date, path: Path = SAMPLE) -> tuple[dict[str, dict], object]:
    vm = validated_month(con, LandingSource("santander", path), table, month)
    tbl = con.sql(vm.sql).to_arrow_table()
    assert tbl.schema.names == TABLE_SCHEMAS[table].names
    assert [f.type for f in tbl.schema] == [f.type for f in TABLE_SCHEMAS[table]]
    return {r["customer_id"]: r for r in tbl.to_pylist()}, vm


def sample_rows() -> list[list[str]]:
    with SAMPLE.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def write_variant(tmp_path: Path, rows: list[list[str]]) -> Path:
    path = tmp_path / "train_ver2.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, quoting=csv.QUOTE_MINIMAL).writerows(rows)
    return path


def edited(tmp_path: Path, customer: str, fecha: str, **changes: str) -> Path:
    """The sample with ``changes`` (source column -> text) applied to one (ncodpers, fecha_dato) row."""
    rows = sample_rows()
    header = rows[0]
    for r in rows[1:]:
        if r[1] == customer and r[0] == fecha:
            for col, val in changes.items():
                r[header.index(col)] = val
    return write_variant(tmp_path, rows)


def raises(con, path: Path, table: str, month: date) -> RawDataError:
    with pytest.raises(RawDataError) as info:
        validated_month(con, LandingSource("santander", path), table, month, pseudonym_sql=lambda e: hmac_sql(e, KEY))
    err = info.value
    assert err.table == table and err.source == str(path)
    return err


# --- the fixture itself is in the Kaggle format -----------------------------------------------------------


def test_fixture_has_the_kaggle_layout():
    rows = sample_rows()
    assert tuple(rows[0]) == SANTANDER_COLUMNS and len(SANTANDER_COLUMNS) == 48
    assert SANTANDER_COLUMNS[24:] == tuple(p.santander_column for p in PRODUCTS)
    assert all(len(r) == 48 for r in rows) and len(rows) == 13
    assert rows[0][SANTANDER_COLUMNS.index("ind_nomina_ult1")] == "ind_nomina_ult1"
    assert rows[0][SANTANDER_COLUMNS.index("ind_ahor_fin_ult1")] == "ind_ahor_fin_ult1"


def test_santander_months(tmp_path):
    assert santander_months(SAMPLE) == [JAN, FEB]
    with pytest.raises(RawDataError) as info:
        santander_months(tmp_path / "missing.csv")
    assert info.value.rule == "readable"


# --- mapping ----------------------------------------------------------------------------------------------


def test_customers_mapping_field_by_field(con):
    rows, vm = load(con, "customers", JAN)
    assert vm.n_rows == 6 and vm.source == str(SAMPLE)
    assert rows["1375586"] == dict(
        customer_id="1375586", month=JAN, age=35, gender="F", province="MALAGA", channel="KHL",
        segment="02-PARTICULARES", income=87218.1, join_date=date(2015, 1, 12), tenure_months=6,
        is_active=True, suitability_profile=None,
    )
    assert rows["1050611"] == dict(
        customer_id="1050611", month=JAN, age=23, gender="M", province="CIUDAD REAL", channel="KHE",
        segment="03-UNIVERSITARIO", income=35548.74, join_date=date(2012, 8, 10), tenure_months=35,
        is_active=False, suitability_profile=None,
    )
    # quoted province with a comma; empty renta -> NULL income
    assert rows["1050613"]["province"] == "CORUÑA, A"
    assert rows["1050613"]["income"] is None
    # antiguedad -999999 -> unknown tenure; 'NA' renta -> NULL; 01 - TOP segment
    assert rows["1050615"]["tenure_months"] is None
    assert rows["1050615"]["income"] is None
    assert rows["1050615"]["segment"] == "01-TOP"
    assert rows["1050615"]["join_date"] == date(2014, 12, 1)
    # the all-NA Kaggle row: every attribute NULL, the row itself kept
    assert rows["1029063"] == dict(
        customer_id="1029063", month=JAN, age=None, gender=None, province=None, channel=None, segment=None,
        income=None, join_date=None, tenure_months=None, is_active=None, suitability_profile=None,
    )
    # no questionnaire in this source
    assert vm.null_rates["suitability_profile"] == 1.0
    assert vm.null_rates["income"] == pytest.approx(3 / 6)
    assert vm.coerced == {"tenure_months": 1}


def test_out_of_range_kaggle_age_becomes_null_and_is_counted(con):
    rows, vm = load(con, "customers", FEB)
    assert rows["1050616"]["age"] is None  # "  9": a junior-account holder below AGE_MIN
    assert rows["1050616"]["tenure_months"] == 0
    assert rows["1050612"]["age"] == 24 and rows["1050612"]["is_active"] is True
    assert vm.coerced == {"age": 1}


def test_holdings_mapping(con):
    rows, vm = load(con, "holdings", JAN)
    assert vm.n_rows == 6
    r = rows["1050615"]
    held = {p for p in PRODUCT_NAMES if r[p] == 1}
    assert held == {"current_account", "long_deposit", "credit_card", "direct_debit"}
    # NA payroll / pensions flags stay NULL, never zero-filled
    assert r["payroll"] is None and r["pensions"] is None
    assert rows["1029063"]["payroll"] is None and rows["1029063"]["pensions"] is None
    assert rows["1029063"]["current_account"] == 0
    assert {p for p in PRODUCT_NAMES if rows["1050613"][p] == 1} == {"e_account"}
    assert vm.null_rates["payroll"] == pytest.approx(2 / 6)
    assert vm.null_rates["current_account"] == 0.0
    feb, _ = load(con, "holdings", FEB)
    assert {p for p in PRODUCT_NAMES if feb["1375586"][p] == 1} == {
        "current_account", "credit_card", "payroll", "pensions", "direct_debit"
    }
    assert feb["1050616"]["junior_account"] == 1


def test_month_filtering(con):
    jan, _ = load(con, "customers", JAN)
    feb, _ = load(con, "customers", FEB)
    assert set(jan) == {"1375586", "1050611", "1050612", "1050613", "1029063", "1050615"}
    assert set(feb) == {"1375586", "1050611", "1050612", "1050613", "1050616", "1050617"}
    assert {r["month"] for r in jan.values()} == {JAN}
    assert {r["month"] for r in feb.values()} == {FEB}
    assert jan["1375586"]["tenure_months"] == 6 and feb["1375586"]["tenure_months"] == 7


def test_month_absent_from_file(con):
    err = raises(con, SAMPLE, "customers", date(2016, 6, 1))
    assert (err.rule, err.n_rows) == ("non_empty", 0)
    assert "2015-01..2015-02" in str(err)


def test_santander_sql_is_standalone(con):
    """The SELECT reads straight from the file (no temp views), so any connection can INSERT it."""
    other = duckdb.connect()
    try:
        assert other.sql(f"SELECT count(*) FROM ({santander_sql(SAMPLE, 'holdings', FEB)})").fetchall() == [(6,)]
    finally:
        other.close()


# --- bad input --------------------------------------------------------------------------------------------


def test_missing_column(con, tmp_path):
    rows = sample_rows()
    i = rows[0].index("renta")
    path = write_variant(tmp_path, [r[:i] + r[i + 1:] for r in rows])
    err = raises(con, path, "customers", JAN)
    assert (err.rule, err.column, err.n_rows) == ("required_columns", "renta", 12)
    # holdings do not need renta
    assert validated_month(con, LandingSource("santander", path), "holdings", JAN).n_rows == 6


def test_wrong_type_age(con, tmp_path):
    path = edited(tmp_path, "1050611", "2015-01-28", age=" 2x")
    err = raises(con, path, "customers", JAN)
    assert (err.rule, err.column, err.n_rows, err.examples) == ("type", "age", 1, ["2x"])
    # the other month is untouched
    assert validated_month(con, LandingSource("santander", path), "customers", FEB).n_rows == 6


def test_unknown_sexo_and_segment_are_type_errors(con, tmp_path):
    path = edited(tmp_path, "1050611", "2015-01-28", sexo="X", segmento="04 - OTHER")
    err = raises(con, path, "customers", JAN)
    assert (err.rule, err.column, err.n_rows, err.examples) == ("type", "sexo", 1, ["X"])
    assert ("type", "segmento", 1) in err.failures


def test_wrong_type_product_flag(con, tmp_path):
    path = edited(tmp_path, "1050612", "2015-02-28", ind_tjcr_fin_ult1="yes")
    err = raises(con, path, "holdings", FEB)
    assert (err.rule, err.column, err.n_rows) == ("type", "ind_tjcr_fin_ult1", 1)


def test_non_binary_product_flag(con, tmp_path):
    path = edited(tmp_path, "1050612", "2015-02-28", ind_recibo_ult1="2")
    err = raises(con, path, "holdings", FEB)
    assert (err.rule, err.column, err.n_rows, err.examples) == ("binary_flags", "ind_recibo_ult1", 1, [2])


def test_duplicate_customer_month(con, tmp_path):
    rows = sample_rows()
    rows.append(list(rows[2]))
    path = write_variant(tmp_path, rows)
    err = raises(con, path, "holdings", JAN)
    assert (err.rule, err.column, err.n_rows, err.examples) == ("unique_customer_month", "ncodpers", 2,
                                                                 [pseudonymise("1050611", KEY)])


def test_unparseable_fecha_dato_fails_every_month(con, tmp_path):
    path = edited(tmp_path, "1050617", "2015-02-28", fecha_dato="28/02/2015")
    for month in (JAN, FEB):
        err = raises(con, path, "customers", month)
        assert (err.rule, err.column, err.n_rows, err.examples) == ("type", "fecha_dato", 1, ["28/02/2015"])
    path = edited(tmp_path, "1050617", "2015-02-28", fecha_dato="NA")
    err = raises(con, path, "holdings", JAN)
    assert (err.rule, err.column, err.n_rows) == ("not_null", "fecha_dato", 1)


def test_missing_ncodpers(con, tmp_path):
    path = edited(tmp_path, "1050611", "2015-01-28", ncodpers="NA")
    err = raises(con, path, "customers", JAN)
    assert (err.rule, err.column, err.n_rows) == ("not_null", "ncodpers", 1)


def test_unreadable_files(con, tmp_path):
    err = raises(con, tmp_path / "train_ver2.csv", "customers", JAN)
    assert (err.rule, err.n_rows) == ("readable", 0) and "file not found" in str(err)
    rows = sample_rows()
    rows[3] = rows[3][:20]  # a truncated line
    path = write_variant(tmp_path, rows)
    err = raises(con, path, "customers", JAN)
    assert err.rule == "readable"

"""Landing layouts and raw-data validation on canonical Parquet months (synthetic layout)."""

from __future__ import annotations

import math
from datetime import date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ple_platform.core.data.landing import LandingSource, ValidatedMonth, month_file, validated_month
from ple_platform.core.data.schema import PRODUCT_NAMES, TABLE_SCHEMAS
from ple_platform.core.data.taxonomy import mcc_hierarchy
from ple_platform.core.governance.audit.pseudonymise import hmac_sql, pseudonymise
from ple_platform.core.data.validation import RULES, RawDataError, profile

MARCH = date(2015, 3, 1)
MCC_A, MCC_B = (int(c) for c in mcc_hierarchy().codes[:2])


KEY = b"test-pseudonymisation-key"  # errors quote customers by their pseudonym under this key


@pytest.fixture
def con():
    c = duckdb.connect()
    yield c
    c.close()


def _loose(schema: pa.Schema) -> pa.Schema:
    """Same schema with every field nullable (so a fixture can carry the NULLs validation must catch)."""
    return pa.schema([f.with_nullable(True) for f in schema])


def customer_rows(month: date = MARCH) -> list[dict]:
    return [
        dict(customer_id="c1", month=month, age=35, gender="F", province="MADRID", channel="CH001",
             segment="02-PARTICULARES", income=41000.0, join_date=date(2010, 5, 1), tenure_months=58,
             is_active=True, suitability_profile="balanced"),
        dict(customer_id="c2", month=month, age=71, gender="M", province="MALAGA", channel="CH002",
             segment="01-TOP", income=None, join_date=date(2014, 1, 1), tenure_months=14,
             is_active=False, suitability_profile=None),
        dict(customer_id="c3", month=month, age=None, gender="M", province=None, channel="CH000",
             segment="03-UNIVERSITARIO", income=12000.0, join_date=None, tenure_months=None,
             is_active=True, suitability_profile="growth"),
    ]


def holding_rows(month: date = MARCH) -> list[dict]:
    rows = []
    for i, cid in enumerate(["c1", "c2", "c3"]):
        r = {"customer_id": cid, "month": month}
        r.update({p: (1 if (j + i) % 5 == 0 else 0) for j, p in enumerate(PRODUCT_NAMES)})
        rows.append(r)
    rows[2]["payroll"] = None  # unknown flag stays NULL
    return rows


def transaction_rows(month: date = MARCH) -> list[dict]:
    ts = datetime(month.year, month.month, 1, 9, 30)
    return [
        dict(customer_id="c1", ts=ts, amount=12.5, mcc=MCC_A, merchant_id="m1"),
        dict(customer_id="c1", ts=ts.replace(day=15, hour=21), amount=0.0, mcc=MCC_B, merchant_id="m2"),
        dict(customer_id="c2", ts=ts.replace(day=28, hour=23, minute=59), amount=250.0, mcc=MCC_A, merchant_id="m1"),
        dict(customer_id="c3", ts=ts.replace(day=2), amount=3.99, mcc=MCC_B, merchant_id="m3"),
    ]


ROWS = {"customers": customer_rows, "holdings": holding_rows, "transactions": transaction_rows}


def write_month(root: Path, table: str, rows: list[dict], month: date = MARCH, schema: pa.Schema | None = None) -> Path:
    path = month_file(root, table, month)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema or _loose(TABLE_SCHEMAS[table])), path)
    return path


def landing(tmp_path: Path, **override: list[dict]) -> LandingSource:
    for table, make in ROWS.items():
        write_month(tmp_path, table, override.get(table, make()))
    return LandingSource("synthetic", tmp_path)


def raises(con, source: LandingSource, table: str, month: date = MARCH) -> RawDataError:
    with pytest.raises(RawDataError) as info:
        validated_month(con, source, table, month, pseudonym_sql=lambda e: hmac_sql(e, KEY))
    err = info.value
    assert err.rule in RULES
    assert err.table == table
    # The message names table, source, rule and (when known) the column and the row count.
    assert table in str(err) and err.source in str(err) and f"'{err.rule}'" in str(err)
    if err.column:
        assert f"'{err.column}'" in str(err)
    return err


# --- valid months -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["customers", "holdings", "transactions"])
def test_valid_month_yields_canonical_columns_and_types(con, tmp_path, table):
    src = landing(tmp_path)
    vm = validated_month(con, src, table, MARCH)
    assert isinstance(vm, ValidatedMonth)
    assert vm.source == str(month_file(tmp_path, table, MARCH))
    assert vm.n_rows == len(ROWS[table]())
    assert vm.table == table and vm.month == MARCH
    out = con.sql(vm.sql).to_arrow_table()
    expected = TABLE_SCHEMAS[table]
    assert out.schema.names == expected.names
    assert [f.type for f in out.schema] == [f.type for f in expected]
    assert set(vm.null_rates) == set(expected.names)
    # The caller's pattern: INSERT INTO <canonical table> <vm.sql>
    con.register("empty_canonical", pa.Table.from_pylist([], schema=expected))
    con.execute(f"CREATE TABLE {table} AS SELECT * FROM empty_canonical")
    con.execute(f"INSERT INTO {table} {vm.sql}")
    assert con.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0] == vm.n_rows


def test_valid_customers_values_and_null_rates(con, tmp_path):
    vm = validated_month(con, landing(tmp_path), "customers", MARCH)
    rows = con.sql(vm.sql + " ORDER BY customer_id").to_arrow_table().to_pylist()
    assert rows == customer_rows()
    assert vm.null_rates["income"] == pytest.approx(1 / 3)
    assert vm.null_rates["suitability_profile"] == pytest.approx(1 / 3)
    assert vm.null_rates["customer_id"] == 0.0
    assert vm.coerced == {}


def test_holdings_unknown_flag_stays_null(con, tmp_path):
    vm = validated_month(con, landing(tmp_path), "holdings", MARCH)
    rows = {r["customer_id"]: r for r in con.sql(vm.sql).to_arrow_table().to_pylist()}
    assert rows["c3"]["payroll"] is None
    assert vm.null_rates["payroll"] == pytest.approx(1 / 3)


def test_castable_types_are_accepted(con, tmp_path):
    """Values stored with another but castable type (int64 age, string dates) load with canonical types."""
    schema = pa.schema([("customer_id", pa.string()), ("month", pa.string())] + [
        (f.name, pa.int64() if f.name in ("age", "tenure_months") else f.type) for f in TABLE_SCHEMAS["customers"]
        if f.name not in ("customer_id", "month")
    ])
    rows = [dict(r, month="2015-03-01") for r in customer_rows()]
    src = landing(tmp_path)
    write_month(tmp_path, "customers", rows, schema=schema)
    vm = validated_month(con, src, "customers", MARCH)
    out = con.sql(vm.sql).to_arrow_table()
    assert [f.type for f in out.schema] == [f.type for f in TABLE_SCHEMAS["customers"]]


def test_profile(con, tmp_path):
    vm = validated_month(con, landing(tmp_path), "customers", MARCH)
    prof = profile(con, vm.sql)
    assert prof.n_rows == 3
    assert prof.null_rates == vm.null_rates


# --- bad input --------------------------------------------------------------------------------------------


def test_missing_column(con, tmp_path):
    src = landing(tmp_path)
    table = pa.Table.from_pylist(transaction_rows(), schema=_loose(TABLE_SCHEMAS["transactions"])).drop_columns(["amount"])
    path = month_file(tmp_path, "transactions", MARCH)
    pq.write_table(table, path)
    err = raises(con, src, "transactions")
    assert (err.rule, err.column, err.source, err.n_rows) == ("required_columns", "amount", str(path), 4)
    assert err.examples == ["amount"]


def test_wrong_type(con, tmp_path):
    src = landing(tmp_path)
    schema = pa.schema([f.with_type(pa.string()) if f.name == "mcc" else f.with_nullable(True)
                        for f in TABLE_SCHEMAS["transactions"]])
    rows = transaction_rows()
    for r in rows:
        r["mcc"] = str(r["mcc"])
    rows[1]["mcc"], rows[3]["mcc"] = "grocery", "54x1"
    path = write_month(tmp_path, "transactions", rows, schema=schema)
    err = raises(con, src, "transactions")
    assert (err.rule, err.column, err.source, err.n_rows) == ("type", "mcc", str(path), 2)
    assert err.examples == ["54x1", "grocery"]


def test_fractional_value_in_integer_column_is_a_type_error(con, tmp_path):
    schema = pa.schema([f.with_type(pa.float64()) if f.name == "age" else f.with_nullable(True)
                        for f in TABLE_SCHEMAS["customers"]])
    rows = customer_rows()
    rows[0]["age"] = 35.5  # TRY_CAST alone would round this to 36
    src = landing(tmp_path)
    write_month(tmp_path, "customers", rows, schema=schema)
    err = raises(con, src, "customers")
    assert (err.rule, err.column, err.n_rows, err.examples) == ("type", "age", 1, [35.5])


def test_negative_amount(con, tmp_path):
    rows = transaction_rows()
    rows[2]["amount"] = -3.5
    err = raises(con, landing(tmp_path, transactions=rows), "transactions")
    assert (err.rule, err.column, err.n_rows, err.examples) == ("amount_finite_non_negative", "amount", 1, [-3.5])
    assert err.source == str(month_file(tmp_path, "transactions", MARCH))


def test_nan_and_negative_amount_message(con, tmp_path):
    rows = transaction_rows()
    rows[0]["amount"], rows[2]["amount"], rows[3]["amount"] = float("nan"), -3.5, float("inf")
    err = raises(con, landing(tmp_path, transactions=rows), "transactions")
    assert (err.rule, err.column, err.n_rows) == ("amount_finite_non_negative", "amount", 3)
    assert err.examples[:2] == [-3.5, math.inf] and math.isnan(err.examples[2])
    path = month_file(tmp_path, "transactions", MARCH)
    assert str(err) == (
        f"transactions ({path}): rule 'amount_finite_non_negative' failed on column 'amount': 3 offending row(s), "
        "e.g. [-3.5, inf, nan]"
    )


def test_unknown_mcc(con, tmp_path):
    rows = transaction_rows()
    rows[1]["mcc"] = 9999
    assert 9999 not in set(int(c) for c in mcc_hierarchy().codes)
    err = raises(con, landing(tmp_path, transactions=rows), "transactions")
    assert (err.rule, err.column, err.n_rows, err.examples) == ("known_mcc", "mcc", 1, [9999])


def test_duplicate_customer_month(con, tmp_path):
    rows = customer_rows() + [customer_rows()[1]]
    err = raises(con, landing(tmp_path, customers=rows), "customers")
    assert (err.rule, err.column, err.n_rows, err.examples) == ("unique_customer_month", "customer_id", 2,
                                                                 [pseudonymise("c2", KEY)])


def test_duplicate_in_holdings(con, tmp_path):
    rows = holding_rows() + holding_rows()[:1]
    err = raises(con, landing(tmp_path, holdings=rows), "holdings")
    assert (err.rule, err.n_rows, err.examples) == ("unique_customer_month", 2, [pseudonymise("c1", KEY)])


def test_missing_file_is_unreadable(con, tmp_path):
    src = landing(tmp_path)
    path = month_file(tmp_path, "customers", date(2015, 4, 1))
    err = raises(con, src, "customers", date(2015, 4, 1))
    assert (err.rule, err.column, err.source, err.n_rows) == ("readable", None, str(path), 0)
    assert "file not found" in str(err)


def test_corrupt_file_is_unreadable(con, tmp_path):
    src = landing(tmp_path)
    path = month_file(tmp_path, "holdings", MARCH)
    path.write_bytes(b"PAR1 this is not a parquet file")
    err = raises(con, src, "holdings")
    assert (err.rule, err.source) == ("readable", str(path))
    assert len(str(err)) < 600


def test_row_of_another_month_in_partition_file(con, tmp_path):
    rows = customer_rows()
    rows[0]["month"] = date(2015, 4, 1)
    err = raises(con, landing(tmp_path, customers=rows), "customers")
    assert (err.rule, err.column, err.n_rows, err.examples) == ("month_matches_partition", "month", 1, ["2015-04-01"])


def test_transaction_of_another_month(con, tmp_path):
    rows = transaction_rows()
    rows[2]["ts"] = datetime(2015, 4, 1, 0, 0)  # first instant of the next month
    rows[3]["ts"] = datetime(2015, 2, 28, 23, 59)
    err = raises(con, landing(tmp_path, transactions=rows), "transactions")
    assert (err.rule, err.column, err.n_rows) == ("month_matches_partition", "ts", 2)
    assert err.examples == ["2015-02-28 23:59:00", "2015-04-01 00:00:00"]


def test_implausible_age(con, tmp_path):
    rows = customer_rows()
    rows[0]["age"], rows[1]["age"] = 7, 164
    err = raises(con, landing(tmp_path, customers=rows), "customers")
    assert (err.rule, err.column, err.n_rows, err.examples) == ("plausible_age", "age", 2, [7, 164])


def test_null_in_non_nullable_column(con, tmp_path):
    rows = transaction_rows()
    rows[0]["merchant_id"] = None
    err = raises(con, landing(tmp_path, transactions=rows), "transactions")
    assert (err.rule, err.column, err.n_rows, err.examples) == ("not_null", "merchant_id", 1, [pseudonymise("c1", KEY)])


def test_binary_flags(con, tmp_path):
    rows = holding_rows()
    rows[1]["credit_card"] = 2
    err = raises(con, landing(tmp_path, holdings=rows), "holdings")
    assert (err.rule, err.column, err.n_rows, err.examples) == ("binary_flags", "credit_card", 1, [2])


def test_empty_customers_month(con, tmp_path):
    err = raises(con, landing(tmp_path, customers=[]), "customers")
    assert (err.rule, err.n_rows) == ("non_empty", 0)


def test_every_failure_of_the_scan_is_listed(con, tmp_path):
    rows = transaction_rows()
    rows[0]["amount"], rows[1]["mcc"] = -1.0, 1
    err = raises(con, landing(tmp_path, transactions=rows), "transactions")
    assert err.rule == "amount_finite_non_negative"
    assert err.failures == [("amount_finite_non_negative", "amount", 1), ("known_mcc", "mcc", 1)]
    assert "also failing: 'known_mcc' on 'mcc' (1 row(s))" in str(err)
    assert err.as_metadata()["failures"][1]["rule"] == "known_mcc"


def test_bad_month_argument(con, tmp_path):
    with pytest.raises(ValueError, match="first day"):
        validated_month(con, landing(tmp_path), "customers", date(2015, 3, 28))
    with pytest.raises(ValueError, match="unknown table"):
        validated_month(con, landing(tmp_path), "accounts", MARCH)


# --- transactions for the Santander source ----------------------------------------------------------------

SANTANDER_CSV = Path(__file__).parent / "data" / "santander_train_ver2_sample.csv"


def test_santander_without_transactions_is_unavailable(con):
    assert validated_month(con, LandingSource("santander", SANTANDER_CSV), "transactions", date(2015, 1, 1)) is None


def test_santander_transactions_directory(con, tmp_path):
    jan = date(2015, 1, 1)
    write_month(tmp_path, "transactions", transaction_rows(jan), month=jan)
    src = LandingSource("santander", SANTANDER_CSV, transactions_path=tmp_path)
    vm = validated_month(con, src, "transactions", jan)
    assert vm.n_rows == 4 and vm.source == str(month_file(tmp_path, "transactions", jan))


def test_santander_single_transactions_file_is_filtered_by_ts(con, tmp_path):
    jan, feb = date(2015, 1, 1), date(2015, 2, 1)
    rows = transaction_rows(jan) + transaction_rows(feb)[:3]
    path = tmp_path / "all_transactions.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLE_SCHEMAS["transactions"]), path)
    src = LandingSource("santander", SANTANDER_CSV, transactions_path=path)
    assert validated_month(con, src, "transactions", jan).n_rows == 4
    vm = validated_month(con, src, "transactions", feb)
    assert vm.n_rows == 3 and vm.source == str(path)
    assert {r[0].month for r in con.sql(f"SELECT ts FROM ({vm.sql})").fetchall()} == {2}
    # A bad row in another month does not fail this month; it fails its own.
    rows[-1]["amount"] = -1.0
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLE_SCHEMAS["transactions"]), path)
    assert validated_month(con, src, "transactions", jan).n_rows == 4
    err = raises(con, src, "transactions", feb)
    assert (err.rule, err.n_rows, err.source) == ("amount_finite_non_negative", 1, str(path))


def test_santander_missing_transactions_file(con, tmp_path):
    src = LandingSource("santander", SANTANDER_CSV, transactions_path=tmp_path / "nope.parquet")
    err = raises(con, src, "transactions", date(2015, 1, 1))
    assert (err.rule, err.source) == ("readable", str(tmp_path / "nope.parquet"))

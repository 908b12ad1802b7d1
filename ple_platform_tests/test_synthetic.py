"""Synthetic panel generator: determinism, exact schemas, panel realism, the leading signal, chunking."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from ple_platform.core.data.schema import PRODUCT_NAMES, TABLE_SCHEMAS, add_months
from ple_platform.core.data.synthetic import (
    TABLES,
    SyntheticConfig,
    generate,
    main,
    month_file,
    variance_budget,
)
from ple_platform.core.data.taxonomy import mcc_hierarchy

N_MONTHS = 8
TRAVEL_L2 = ("airlines", "lodging", "travel_agencies", "car_rental")
HOUSING_L2 = ("housing", "furnishings", "home_improvement")


@pytest.fixture(scope="module")
def panel(tmp_path_factory) -> tuple[SyntheticConfig, Path, dict]:
    """3,000 customers x 8 months in 3 chunks: shared by the read-only tests below (about a second)."""
    config = SyntheticConfig(n_customers=3000, n_months=N_MONTHS, seed=11, chunk_size=1000)
    out = tmp_path_factory.mktemp("landing")
    return config, out, generate(config, out)


def _con(out: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for t in TABLES:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{out}/{t}/*.parquet')")
    h = mcc_hierarchy()
    rows = ", ".join(f"({int(c)}, '{h.l2_names[l]}')" for c, l in zip(h.codes, h.code_l2))
    con.execute(f"CREATE TABLE mcc_l2 AS SELECT * FROM (VALUES {rows}) t(mcc, l2)")
    return con


def _one(con, sql: str, *params):
    return con.execute(sql, list(params)).fetchone()[0]


# --- files, schemas, manifest, determinism --------------------------------------------------------------------


def test_every_file_matches_the_canonical_schema_exactly(panel):
    config, out, summary = panel
    for month in config.months:
        for t in TABLES:
            path = month_file(out, t, month)
            assert path.exists(), path
            schema = pq.read_schema(path)
            assert schema.equals(TABLE_SCHEMAS[t], check_metadata=False), (t, schema)
            assert [f.nullable for f in schema] == [f.nullable for f in TABLE_SCHEMAS[t]]
    assert not list(out.rglob("*.tmp"))


def test_manifest_lists_rows_and_hashes_of_every_file(panel):
    config, out, summary = panel
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"] == config.to_json()
    assert len(manifest["files"]) == len(TABLES) * config.n_months
    for rel, entry in manifest["files"].items():
        path = out / rel
        assert pq.ParquetFile(path).metadata.num_rows == entry["rows"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    for t in TABLES:
        assert manifest["total_rows"][t] == sum(e["rows"] for e in manifest["files"].values() if e["table"] == t)
    assert summary["total_rows"] == manifest["total_rows"]


def _hashes(out: Path) -> dict[str, str]:
    return {k: v["sha256"] for k, v in json.loads((out / "manifest.json").read_text())["files"].items()}


def test_same_config_is_byte_identical_and_another_seed_is_not(tmp_path):
    config = SyntheticConfig(n_customers=400, n_months=3, seed=5, chunk_size=150)
    generate(config, tmp_path / "a")
    generate(config, tmp_path / "b")
    a, b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert a == b
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    for rel in a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    generate(SyntheticConfig(n_customers=400, n_months=3, seed=6, chunk_size=150), tmp_path / "c")
    c = _hashes(tmp_path / "c")
    assert all(a[rel] != c[rel] for rel in a)


def test_regenerating_a_shorter_panel_removes_stale_months(tmp_path):
    generate(SyntheticConfig(n_customers=50, n_months=3, seed=1), tmp_path)
    generate(SyntheticConfig(n_customers=50, n_months=2, seed=1), tmp_path)
    assert len(list((tmp_path / "customers").iterdir())) == 2
    assert set(_hashes(tmp_path)) == {str(p.relative_to(tmp_path)) for t in TABLES for p in (tmp_path / t).iterdir()}


def test_config_is_validated():
    with pytest.raises(ValueError):
        SyntheticConfig(n_customers=0)
    with pytest.raises(ValueError):
        SyntheticConfig(n_months=0)
    with pytest.raises(ValueError):
        SyntheticConfig(chunk_size=0)
    assert SyntheticConfig(start_month=date(2015, 3, 17)).start_month == date(2015, 3, 1)


# --- panel properties ----------------------------------------------------------------------------------------


def test_keys_are_unique_and_tables_agree(panel):
    _, out, _ = panel
    con = _con(out)
    assert _one(con, "SELECT count(*) - count(DISTINCT (customer_id, month)) FROM customers") == 0
    for t in ("holdings", "ground_truth"):
        assert _one(con, f"SELECT count(*) FROM (SELECT customer_id, month FROM {t} EXCEPT SELECT customer_id, month FROM customers)") == 0
        assert _one(con, f"SELECT count(*) FROM {t}") == _one(con, "SELECT count(*) FROM customers")
    assert _one(con, "SELECT count(*) FROM customers WHERE customer_id NOT SIMILAR TO 'S[0-9]{7}'") == 0


def test_customers_persist_and_their_state_changes(panel):
    config, out, _ = panel
    con = _con(out)
    first, last = config.months[0], config.months[-1]
    stayed = _one(con, "SELECT count(*) FROM customers a JOIN customers b USING (customer_id) WHERE a.month = ? AND b.month = ?", first, last)
    assert stayed > 0.85 * _one(con, "SELECT count(*) FROM customers WHERE month = ?", first)
    # Latents move every month (AR(1)), ages tick up on birthdays, holdings change.
    moved = _one(con, "SELECT avg(abs(a.latent_wealth - b.latent_wealth)) FROM ground_truth a JOIN ground_truth b USING (customer_id) WHERE b.month = a.month + INTERVAL 1 MONTH")
    assert 0.05 < moved < 0.5
    aged = _one(con, "SELECT avg((b.age - a.age)::DOUBLE) FROM customers a JOIN customers b USING (customer_id) WHERE a.month = ? AND b.month = ?", first, last)
    assert 0.4 < aged < 0.8  # 7 months later: ~7/12 of customers had a birthday
    assert _one(con, "SELECT min(b.age - a.age) FROM customers a JOIN customers b USING (customer_id) WHERE a.month = ? AND b.month = ?", first, last) >= 0
    changed = " OR ".join(f"a.{p} <> b.{p}" for p in PRODUCT_NAMES)
    assert _one(con, f"SELECT count(*) FROM holdings a JOIN holdings b USING (customer_id) WHERE b.month = a.month + INTERVAL 1 MONTH AND ({changed})") > 100
    assert _one(con, "SELECT count(DISTINCT persona) FROM ground_truth") == 6
    assert _one(con, "SELECT count(*) FROM (SELECT customer_id FROM ground_truth GROUP BY 1 HAVING count(DISTINCT persona) > 1)") == 0


def test_customers_join_and_leave_mid_panel_without_gaps(panel):
    config, out, _ = panel
    con = _con(out)
    life = con.execute(
        "SELECT customer_id, min(month) AS first, max(month) AS last, count(*) AS n FROM customers GROUP BY 1"
    ).fetchall()
    n = config.n_customers
    start, end = config.months[0], config.months[-1]
    joined = sum(r[1] > start for r in life)
    left = sum(r[2] < end for r in life)
    assert len(life) <= n
    assert 0.03 * n < joined < 0.15 * n  # ~10% join, uniformly over months 1..7
    assert 0.005 * n < left < 0.06 * n  # ~5% over 17 months, fewer over 8
    months = {m: i for i, m in enumerate(config.months)}
    assert all(months[r[2]] - months[r[1]] + 1 == r[3] for r in life)  # contiguous lives
    # Joiners are new customers: tenure 0 in their first month, join date inside it.
    bad = _one(con, """SELECT count(*) FROM customers c JOIN (SELECT customer_id, min(month) f FROM customers GROUP BY 1) j
        ON c.customer_id = j.customer_id AND c.month = j.f WHERE j.f > ? AND (tenure_months <> 0 OR date_trunc('month', join_date) <> c.month)""", start)
    assert bad == 0


def test_realistic_mess_rates(panel):
    _, out, _ = panel
    con = _con(out)
    total = _one(con, "SELECT count(*) FROM customers")
    income_null = _one(con, "SELECT count(*) FILTER (WHERE income IS NULL) FROM customers") / total
    assert 0.15 < income_null < 0.25
    # Missing income is mostly a persistent property of the customer.
    always = _one(con, "SELECT count(*) FROM (SELECT customer_id FROM customers GROUP BY 1 HAVING bool_and(income IS NULL))")
    ever = _one(con, "SELECT count(*) FROM (SELECT customer_id FROM customers GROUP BY 1 HAVING bool_or(income IS NULL))")
    assert always > 0.6 * ever
    tenure_null = _one(con, "SELECT avg((tenure_months IS NULL)::INT) FROM customers")
    assert 0.025 < tenure_null < 0.075
    assert _one(con, "SELECT count(*) FROM customers WHERE (tenure_months IS NULL) <> (join_date IS NULL)") == 0
    assert 0.05 < _one(con, "SELECT avg((NOT is_active)::INT) FROM customers") < 0.18
    assert 0.28 < _one(con, "SELECT avg((suitability_profile IS NULL)::INT) FROM customers") < 0.5
    assert _one(con, "SELECT count(DISTINCT province) FROM customers") >= 18
    assert _one(con, "SELECT min(age) FROM customers") >= 18
    assert _one(con, "SELECT count(*) FROM customers WHERE income IS NOT NULL AND NOT (income > 0 AND isfinite(income))") == 0
    # Inactive months are persistent and carry no transactions.
    assert _one(con, """SELECT count(*) FROM transactions t JOIN customers c ON c.customer_id = t.customer_id
        AND c.month = date_trunc('month', t.ts) WHERE NOT c.is_active""") == 0
    assert _one(con, "SELECT count(*) FROM transactions t ANTI JOIN customers c ON c.customer_id = t.customer_id AND c.month = date_trunc('month', t.ts)") == 0


def test_transactions_are_valid_and_sorted(panel):
    config, out, _ = panel
    codes = set(int(c) for c in mcc_hierarchy().codes)
    per_month = []
    for month in config.months:
        t = pq.read_table(month_file(out, "transactions", month))
        per_month.append(t.num_rows)
        mcc = t.column("mcc").to_numpy()
        assert set(np.unique(mcc).tolist()) <= codes
        ts = t.column("ts").to_numpy()
        lo, hi = np.datetime64(month, "us"), np.datetime64(add_months(month, 1), "us")
        assert ts.min() >= lo and ts.max() < hi
        amount = t.column("amount").to_numpy()
        assert np.isfinite(amount).all() and (amount > 0).all()
        cid = np.asarray(t.column("customer_id").to_pylist())
        order = np.lexsort((ts, cid))
        assert (order == np.arange(len(order))).all()
        assert all(m.startswith(f"M{c}-") for m, c in zip(t.column("merchant_id").to_pylist()[:500], mcc[:500]))
    per_cm = sum(per_month) / _one(_con(out), "SELECT count(*) FROM customers")
    assert 14 < per_cm < 28  # ~20 per customer-month, 0 when inactive
    assert len(set(mcc.tolist())) > 60


def test_transaction_shape_varies_by_persona(panel):
    _, out, _ = panel
    con = _con(out)
    counts = dict(con.execute("""SELECT g.persona, count(t.customer_id)::DOUBLE / count(DISTINCT (g.customer_id, g.month))
        FROM ground_truth g JOIN customers c USING (customer_id, month)
        LEFT JOIN transactions t ON t.customer_id = g.customer_id AND date_trunc('month', t.ts) = g.month
        WHERE c.is_active GROUP BY 1""").fetchall())
    assert counts["active_spender"] > 1.8 * counts["occasional_user"]
    night = dict(con.execute("""SELECT g.persona, avg((hour(t.ts) >= 21 OR hour(t.ts) < 3)::INT) FROM transactions t
        JOIN ground_truth g ON g.customer_id = t.customer_id AND g.month = date_trunc('month', t.ts) GROUP BY 1""").fetchall())
    assert night["young_digital"] > night["conservative_saver"] + 0.1
    early = "avg((hour(ts) BETWEEN 6 AND 9)::INT) FILTER (WHERE dayofweek(ts) {} IN (0, 6))"
    weekday, weekend = con.execute(f"SELECT {early.format('NOT')}, {early.format('')} FROM transactions").fetchone()
    assert weekend < 0.8 * weekday  # weekends start later


def test_product_base_rates(panel):
    _, out, summary = panel
    rates = summary["rates"]
    assert 0.03 < rates["any_acquisition_share"] < 0.08
    assert 0.008 < rates["core_churn_share"] < 0.025
    assert 0.6 < rates["holding_current_account_share"] < 0.8
    con = _con(out)
    # Complementarity: payroll sits on a payroll account; a card needs an account.
    assert _one(con, "SELECT avg(payroll_account) FROM holdings WHERE payroll = 1") > 0.5
    acct = "(current_account + payroll_account + mas_particular + particular_account + particular_plus + e_account) > 0"
    assert _one(con, f"SELECT avg(({acct})::INT) FROM holdings WHERE credit_card = 1") > 0.9
    # Tree-friendly thresholds: pensions are an over-65 product; investments need a questionnaire.
    assert _one(con, "SELECT avg(pensions) FROM holdings JOIN customers USING (customer_id, month) WHERE age >= 65") > 10 * _one(
        con, "SELECT avg(pensions) FROM holdings JOIN customers USING (customer_id, month) WHERE age < 50"
    )


# --- the leading signal --------------------------------------------------------------------------------------


def _acquisition_after_share_rise(con, l2: tuple[str, ...], products: tuple[str, ...]) -> dict[bool, tuple[int, float]]:
    """Rate of acquiring any of ``products`` in t+1 for non-holders at t, split by whether the spend share of
    the ``l2`` categories rose by more than 0.15 from t-1 to t."""
    cats = ", ".join(f"'{c}'" for c in l2)
    con.execute(f"""CREATE OR REPLACE TEMP VIEW share AS SELECT customer_id, date_trunc('month', ts)::DATE AS month,
        coalesce(sum(amount) FILTER (WHERE l2 IN ({cats})), 0) / sum(amount) AS s
        FROM transactions JOIN mcc_l2 USING (mcc) GROUP BY ALL""")
    held = " + ".join(f"h1.{p}" for p in products)
    gained = " OR ".join(f"h2.{p} = 1" for p in products)
    rows = con.execute(f"""SELECT coalesce(s1.s, 0) - coalesce(s0.s, 0) > 0.15 AS rising, count(*), avg(({gained})::INT)
        FROM holdings h1 JOIN holdings h2 ON h2.customer_id = h1.customer_id AND h2.month = h1.month + INTERVAL 1 MONTH
        LEFT JOIN share s1 ON s1.customer_id = h1.customer_id AND s1.month = h1.month
        LEFT JOIN share s0 ON s0.customer_id = h1.customer_id AND s0.month = h1.month - INTERVAL 1 MONTH
        WHERE {held} = 0 GROUP BY 1""").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_rising_travel_spend_leads_credit_card_acquisition(panel):
    _, out, _ = panel
    res = _acquisition_after_share_rise(_con(out), TRAVEL_L2, ("credit_card",))
    (n_rise, rate_rise), (_, rate_rest) = res[True], res[False]
    assert n_rise > 500 and rate_rise * n_rise >= 15
    assert rate_rise > 3 * rate_rest


def test_rising_housing_spend_leads_housing_products(panel):
    _, out, _ = panel
    res = _acquisition_after_share_rise(_con(out), HOUSING_L2, ("mortgage", "home_account", "loans"))
    (n_rise, rate_rise), (_, rate_rest) = res[True], res[False]
    assert rate_rise * n_rise >= 8
    assert rate_rise > 2 * rate_rest


def test_intents_act_on_transactions_first_and_on_products_a_month_later(panel):
    """Ground truth check of the lag: an intent that starts in month t does not raise acquisitions
    observed at t, only at t+1."""
    _, out, _ = panel
    con = _con(out)
    base = """FROM ground_truth g0 JOIN ground_truth g1 ON g1.customer_id = g0.customer_id AND g1.month = g0.month + INTERVAL 1 MONTH
        JOIN holdings h0 ON h0.customer_id = g0.customer_id AND h0.month = g0.month
        JOIN holdings h1 ON h1.customer_id = g0.customer_id AND h1.month = g1.month
        JOIN holdings h2 ON h2.customer_id = g0.customer_id AND h2.month = g1.month + INTERVAL 1 MONTH
        WHERE g0.intent_travel = 0 AND g1.intent_travel > 0 AND h0.credit_card = 0 AND NOT EXISTS (
            SELECT 1 FROM customers c WHERE c.customer_id = g0.customer_id AND c.month = g0.month AND NOT c.is_active)"""
    same_month = _one(con, f"SELECT avg(h1.credit_card) {base}")
    next_month = _one(con, f"SELECT avg(h2.credit_card) FILTER (WHERE h1.credit_card = 0) {base}")
    overall = _one(con, "SELECT avg(h2.credit_card) FROM holdings h1 JOIN holdings h2 ON h2.customer_id = h1.customer_id AND h2.month = h1.month + INTERVAL 1 MONTH WHERE h1.credit_card = 0")
    assert same_month < 3 * overall + 0.005
    assert next_month > 5 * overall


# --- chunking ------------------------------------------------------------------------------------------------


def _summary_stats(out: Path) -> dict[str, float]:
    con = _con(out)
    return {
        "txns_per_cm": _one(con, "SELECT (SELECT count(*) FROM transactions)::DOUBLE / count(*) FROM customers"),
        "mean_amount": _one(con, "SELECT avg(ln(amount)) FROM transactions"),
        "current_account": _one(con, "SELECT avg(current_account) FROM holdings"),
        "conservative": _one(con, "SELECT avg((persona = 'conservative_saver')::INT) FROM ground_truth"),
        "income_null": _one(con, "SELECT avg((income IS NULL)::INT) FROM customers"),
        "mean_age": _one(con, "SELECT avg(age) FROM customers"),
    }


def test_chunking_gives_the_same_distributions_and_consistent_row_counts(tmp_path):
    single = SyntheticConfig(n_customers=1500, n_months=3, seed=3, chunk_size=5000)
    chunked = SyntheticConfig(n_customers=1500, n_months=3, seed=3, chunk_size=400)  # 4 chunks, last partial
    generate(single, tmp_path / "single")
    summary = generate(chunked, tmp_path / "chunked")
    a, b = _summary_stats(tmp_path / "single"), _summary_stats(tmp_path / "chunked")
    tol = {"txns_per_cm": 1.5, "mean_amount": 0.05, "current_account": 0.05, "conservative": 0.05, "income_null": 0.04, "mean_age": 1.5}
    for k, t in tol.items():
        assert abs(a[k] - b[k]) < t, (k, a[k], b[k])
    # Every customer id appears exactly once per month across chunks; row groups follow the chunks.
    con = _con(tmp_path / "chunked")
    assert _one(con, "SELECT count(DISTINCT customer_id) FROM customers") <= 1500
    assert _one(con, "SELECT max(customer_id) FROM customers") <= "S0001499"
    for month in chunked.months:
        rows = {t: pq.ParquetFile(month_file(tmp_path / "chunked", t, month)).metadata.num_rows for t in TABLES}
        assert rows["customers"] == rows["holdings"] == rows["ground_truth"]
        assert pq.ParquetFile(month_file(tmp_path / "chunked", "customers", month)).num_row_groups == 4
    assert summary["total_rows"]["customers"] == _one(con, "SELECT count(*) FROM customers")


# --- diagnostics and CLI -------------------------------------------------------------------------------------


def test_variance_budget_orders_information_sets():
    budget = variance_budget(SyntheticConfig(n_customers=1500, n_months=5, seed=2))
    shares = budget["logit_variance_share"]
    assert set(shares) == {"observable", "latent", "intent", "mechanism", "noise"}
    any_ = budget["groups"]["any"]
    assert 0.02 < any_["rate"] < 0.1
    assert any_["auc[true_hazard]"] > any_["auc[observable]"] > 0.55


def test_cli_writes_a_landing_zone(tmp_path, capsys):
    assert main(["--customers", "120", "--months", "2", "--seed", "4", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["customer_months"] > 200 and report["peak_rss_mb"] > 0
    assert (tmp_path / "manifest.json").exists()

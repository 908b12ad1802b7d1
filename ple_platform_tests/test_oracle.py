"""The oracle ceiling (core/model/oracle.py): observables + ground truth beats observables alone, out of time."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ple_platform.core.data.schema import PRODUCT_NAMES, PRODUCTS_BY_GROUP
from ple_platform.core.data.synthetic import SyntheticConfig, generate
from ple_platform.core.model.oracle import (
    GROUND_TRUTH_FEATURES,
    fit_binary,
    fraction_of_oracle,
    ground_truth_features,
)

N_MONTHS = 9


@pytest.fixture(scope="module")
def landing(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle_landing")
    generate(SyntheticConfig(n_customers=5000, n_months=N_MONTHS, seed=5), out)
    return out


def _observables(con, out, group: str) -> dict[str, np.ndarray]:
    """Per customer-month: what a feature pipeline sees (customers, holdings, monthly spend), and the label
    "acquires a product of ``group`` at t+1"."""
    products = PRODUCTS_BY_GROUP[group]
    holdings = ", ".join(f"h0.{p}::FLOAT AS {p}" for p in PRODUCT_NAMES)
    label = " OR ".join(f"(h0.{p} = 0 AND h1.{p} = 1)" for p in products)
    return {k: np.asarray(v) for k, v in con.execute(f"""
        WITH tx AS (SELECT customer_id, date_trunc('month', ts)::DATE AS month, count(*) n, sum(amount) spend
                    FROM read_parquet('{out}/transactions/*.parquet') GROUP BY ALL)
        SELECT c.customer_id, c.month, c.age::FLOAT AS age, coalesce(c.income, -1)::FLOAT AS income,
               coalesce(c.tenure_months, -1)::FLOAT AS tenure, c.is_active::FLOAT AS active,
               (list_position(['01-TOP', '02-PARTICULARES', '03-UNIVERSITARIO'], c.segment))::FLOAT AS segment,
               (c.suitability_profile IS NULL)::FLOAT AS no_questionnaire,
               coalesce(tx.n, 0)::FLOAT AS n_txn, coalesce(tx.spend, 0)::FLOAT AS spend, {holdings}, ({label})::INT AS y
        FROM read_parquet('{out}/customers/*.parquet') c
        JOIN read_parquet('{out}/holdings/*.parquet') h0 USING (customer_id, month)
        JOIN read_parquet('{out}/holdings/*.parquet') h1 ON h1.customer_id = c.customer_id AND h1.month = c.month + INTERVAL 1 MONTH
        LEFT JOIN tx USING (customer_id, month) ORDER BY c.month, c.customer_id""").fetchnumpy().items()}


@pytest.mark.parametrize("group", ["deposits", "lending", "investments"])
def test_oracle_beats_observables_only_out_of_time(landing, group):
    con = duckdb.connect()
    con.execute("SET threads = 1")
    d = _observables(con, landing, group)
    obs_cols = [k for k in d if k not in ("customer_id", "month", "y")]
    x_obs = np.column_stack([d[k] for k in obs_cols]).astype(np.float32)
    gt = ground_truth_features(con, landing, d["customer_id"], d["month"])
    assert gt.shape == (len(x_obs), len(GROUND_TRUTH_FEATURES))
    months = d["month"].astype("datetime64[M]")
    last = months.max()  # the test month: the last one with a known t+1
    train, val, test = months < last - 1, months == last - 1, months == last
    y = d["y"]
    aucs = {}
    for name, x in (("observables", x_obs), ("oracle", np.hstack([x_obs, gt]))):
        model = fit_binary(x[train], y[train], x[val], y[val])
        aucs[name] = roc_auc_score(y[test], model.predict(x[test]))
    assert aucs["oracle"] > aucs["observables"] + 0.03, aucs
    assert 0 < fraction_of_oracle(aucs["observables"], aucs["oracle"]) < 1


def test_ground_truth_features_refuse_rows_without_ground_truth(landing):
    con = duckdb.connect()
    with pytest.raises(ValueError, match="covers 1 of 2"):
        ground_truth_features(con, landing, ["S0000000", "S9999999"], np.array(["2015-02-01"] * 2, "datetime64[D]"))
    with pytest.raises(FileNotFoundError, match="no ground truth"):
        ground_truth_features(con, landing / "nowhere", ["S0000000"], np.array(["2015-02-01"], "datetime64[D]"))


def test_fraction_of_oracle():
    assert fraction_of_oracle(0.7, 0.9) == pytest.approx(0.5)
    assert np.isnan(fraction_of_oracle(0.7, 0.5))


class _Rows:
    """The part of ``MonthData`` that ``assess_oracle`` reads: ids, months, the feature matrix, the labels."""

    def __init__(self, d: dict[str, np.ndarray], cols: list[str], labels: dict[str, np.ndarray], rows: np.ndarray):
        self.customer_ids, self.months = d["customer_id"][rows], d["month"][rows]
        self._x = np.column_stack([d[c][rows] for c in cols]).astype(np.float32)
        self.labels = {t: y[rows].astype(np.float64) for t, y in labels.items()}

    def matrix(self) -> np.ndarray:
        return self._x


def test_assess_oracle_scores_the_test_rows_above_the_same_recipe_without_ground_truth(landing):
    from ple_platform.core.model.baselines import predict_lightgbm, train_lightgbm_baselines
    from ple_platform.core.model.evaluate import evaluate_predictions, mean_binary_auc
    from ple_platform.core.model.oracle import assess_oracle

    con = duckdb.connect()
    d = _observables(con, landing, "deposits")
    labels = {"will_acquire_deposits": d["y"], "will_acquire_lending": _observables(con, landing, "lending")["y"]}
    cols = [k for k in d if k not in ("customer_id", "month", "y")]
    months = d["month"].astype("datetime64[M]")
    last = months.max()
    parts = {"train": months < last - 1, "validation": months == last - 1, "test": months == last}
    raw = {k: _Rows(d, cols, labels, np.flatnonzero(m)) for k, m in parts.items()}
    oracle = assess_oracle(raw, landing, seed=0, n_boot=20, num_threads=1)
    models = train_lightgbm_baselines(raw["train"].matrix(), raw["train"].labels, raw["validation"].matrix(),
                                      raw["validation"].labels, seed=0, num_boost_round=400, early_stopping_rounds=30,
                                      num_threads=1)
    baseline = evaluate_predictions(raw["test"].labels, predict_lightgbm(models, raw["test"].matrix(), num_threads=1),
                                    n_boot=20, seed=0)
    assert set(oracle["metrics"]) == set(labels)
    assert oracle["mean_binary_auc"] > mean_binary_auc(baseline) + 0.03, (oracle["mean_binary_auc"], mean_binary_auc(baseline))


def test_ground_truth_matches_warehouse_pseudonyms_through_the_raw_layers_hmac(landing):
    """Warehouse rows carry keyed-HMAC pseudonyms, the ground truth source ids: with the raw layer's SQL
    pseudonymisation the same rows come back; without it nothing matches and the oracle refuses (never a silent
    fall-back to the observables)."""
    from ple_platform.core.governance.audit.pseudonymise import hmac_sql, pseudonymise

    key = b"k" * 32
    con = duckdb.connect()
    rows = con.execute(f"SELECT customer_id, month FROM read_parquet('{landing}/customers/*.parquet') "
                       "ORDER BY month, customer_id LIMIT 50").fetchnumpy()
    ids, months = np.asarray(rows["customer_id"]), np.asarray(rows["month"])
    pseudonyms = np.asarray([pseudonymise(str(i), key) for i in ids])  # what raw ingest stores
    assert not set(pseudonyms) & set(ids)
    expected = ground_truth_features(con, landing, ids, months)
    got = ground_truth_features(con, landing, pseudonyms, months, pseudonym_sql=lambda e: hmac_sql(e, key))
    assert np.array_equal(got, expected)
    with pytest.raises(ValueError, match="covers 0 of 50"):
        ground_truth_features(con, landing, pseudonyms, months)

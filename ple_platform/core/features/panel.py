"""Reading the warehouse for feature month t: every query here is bounded by ``month <= t``.

All outputs are aligned to the snapshot population of month t, sorted by customer_id, so a group's
features never depend on storage order (the inspiring project's HMM/"model_derived" bug).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import duckdb
import numpy as np
import pyarrow as pa

from ple_platform.core.data.schema import PRODUCT_NAMES, add_months
from ple_platform.core.data.taxonomy import mcc_hierarchy
from ple_platform.core.features.spec import LAG_LENGTH

# Per-customer monthly aggregates used by tda_global, hmm_states, model_derived and gmm_clustering.
MONTHLY_METRICS = (
    "log_spend",
    "log_count",
    "log_mean_amount",
    "n_unique_mcc",
    "n_unique_merchants",
    "days_active",
    "ratio_night",
    "ratio_morning",
    "ratio_afternoon",
    "ratio_evening",
    "weekend_ratio",
    "recency_days",
    "n_products",
    "acquisitions",
    "churns",
)


@dataclass(frozen=True)
class Population:
    month: date
    customer_ids: np.ndarray  # object array of pseudonymised ids, sorted

    def __len__(self) -> int:
        return len(self.customer_ids)


def population(con: duckdb.DuckDBPyConnection, month: date) -> Population:
    rows = con.execute("SELECT customer_id FROM raw.customers WHERE month = ? ORDER BY customer_id", [month]).fetchall()
    return Population(month, np.asarray([r[0] for r in rows], dtype=object))


def register_population(con: duckdb.DuckDBPyConnection, pop: Population) -> None:
    """Expose the population as temp table ``pop(customer_id, idx)``; idx is the row in every output array."""
    ids = pa.table({"customer_id": pa.array(pop.customer_ids.tolist(), pa.string()), "idx": pa.array(np.arange(len(pop)), pa.int64())})
    con.register("pop_ids", ids)
    con.execute("CREATE OR REPLACE TEMP TABLE pop AS SELECT * FROM pop_ids")
    con.unregister("pop_ids")


def subsample(pop: Population, cap: int | None, salt: int = 0) -> Population:
    """A deterministic subsample for fitting: every k-th pseudonym in sorted order, starting at ``salt % k``.

    Keyed-HMAC pseudonyms are uniformly distributed, so this is a random sample that does not depend on
    storage order or on which other months exist; a different salt (e.g. per month) picks other customers.
    """
    if cap is None or len(pop) <= cap:
        return pop
    step = len(pop) // cap
    return Population(pop.month, pop.customer_ids[salt % step :: step][:cap])


def month_end(month: date) -> date:
    """Exclusive end of the snapshot month: the snapshot is taken at this instant."""
    return add_months(month, 1)


def txn_month_sql() -> str:
    """Per (customer, month) transaction aggregates; ? ? = first month, last month."""
    return """
        SELECT customer_id, month,
               ln(1 + sum(amount)) AS log_spend,
               ln(1 + count(*)) AS log_count,
               ln(1 + avg(amount)) AS log_mean_amount,
               count(DISTINCT mcc) AS n_unique_mcc,
               count(DISTINCT merchant_id) AS n_unique_merchants,
               count(DISTINCT CAST(ts AS DATE)) AS days_active,
               avg(CASE WHEN hour(ts) < 6 THEN 1.0 ELSE 0.0 END) AS ratio_night,
               avg(CASE WHEN hour(ts) >= 6 AND hour(ts) < 12 THEN 1.0 ELSE 0.0 END) AS ratio_morning,
               avg(CASE WHEN hour(ts) >= 12 AND hour(ts) < 18 THEN 1.0 ELSE 0.0 END) AS ratio_afternoon,
               avg(CASE WHEN hour(ts) >= 18 THEN 1.0 ELSE 0.0 END) AS ratio_evening,
               avg(CASE WHEN isodow(ts) >= 6 THEN 1.0 ELSE 0.0 END) AS weekend_ratio,
               date_diff('second', max(ts), CAST(month + INTERVAL 1 MONTH AS TIMESTAMP)) / 86400.0 AS recency_days
        FROM raw.transactions WHERE month BETWEEN ? AND ? GROUP BY customer_id, month
    """


def holdings_change_sql() -> str:
    """Per (customer, month): products held, acquisitions and churns vs the previous stored month."""
    held = " + ".join(f'coalesce("{p}", 0)' for p in PRODUCT_NAMES)
    acq = " + ".join(f'CASE WHEN coalesce("{p}",0) = 1 AND coalesce(prev_{i},0) = 0 THEN 1 ELSE 0 END' for i, p in enumerate(PRODUCT_NAMES))
    churn = " + ".join(f'CASE WHEN coalesce("{p}",0) = 0 AND coalesce(prev_{i},0) = 1 THEN 1 ELSE 0 END' for i, p in enumerate(PRODUCT_NAMES))
    lags = ", ".join(f'lag("{p}") OVER w AS prev_{i}' for i, p in enumerate(PRODUCT_NAMES))
    # prev_month IS NULL marks a customer's first observed month: no change can be measured there.
    return f"""
        SELECT customer_id, month, {held} AS n_products,
               CASE WHEN prev_month IS NULL THEN 0 ELSE {acq} END AS acquisitions,
               CASE WHEN prev_month IS NULL THEN 0 ELSE {churn} END AS churns
        FROM (SELECT *, {lags}, lag(month) OVER w AS prev_month
              FROM raw.holdings WHERE month BETWEEN ? AND ?
              WINDOW w AS (PARTITION BY customer_id ORDER BY month))
    """


def monthly_panel(con: duckdb.DuckDBPyConnection, pop: Population, n_months: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-customer monthly metrics for the ``n_months`` months ending at t: arrays (N, T), oldest first.

    ``mask[i, k]`` is True when customer i is in the snapshot of month k. Months where a present customer
    made no transaction have zero spend/count metrics (a real zero, not a fill), recency = 31 days.
    Holdings are read one month further back so the first window month's acquisitions are measurable.
    """
    register_population(con, pop)
    first = add_months(pop.month, -(n_months - 1))
    rows = con.execute(
        f"""
        WITH t AS ({txn_month_sql()}),
             h AS ({holdings_change_sql()}),
             c AS (SELECT customer_id, month FROM raw.customers WHERE month BETWEEN ? AND ?)
        SELECT pop.idx, date_diff('month', ?::DATE, c.month) AS k,
               {", ".join(f"coalesce(t.{m}, {31.0 if m == 'recency_days' else 0.0})" for m in MONTHLY_METRICS if m not in ('n_products', 'acquisitions', 'churns'))},
               coalesce(h.n_products, 0), coalesce(h.acquisitions, 0), coalesce(h.churns, 0)
        FROM c JOIN pop USING (customer_id)
        LEFT JOIN t ON t.customer_id = c.customer_id AND t.month = c.month
        LEFT JOIN h ON h.customer_id = c.customer_id AND h.month = c.month
        """,
        [first, pop.month, add_months(first, -1), pop.month, first, pop.month, first],
    ).fetchnumpy()
    n = len(pop)
    idx, k = rows["idx"].astype(np.int64), rows["k"].astype(np.int64)
    mask = np.zeros((n, n_months), dtype=bool)
    mask[idx, k] = True
    out = {}
    cols = [c for c in rows if c not in ("idx", "k")]
    for name, col in zip(MONTHLY_METRICS, cols):
        arr = np.zeros((n, n_months), dtype=np.float64)
        arr[idx, k] = np.asarray(rows[col], dtype=np.float64)
        out[name] = arr
    return out, mask


def last_transactions(con: duckdb.DuckDBPyConnection, pop: Population, lookback_months: int = 12, length: int = LAG_LENGTH) -> np.ndarray:
    """(N, length, 4) float32: (amount, mcc index, days before snapshot end, hour), most recent first, -1 padded.

    Ties on the timestamp are broken by amount, MCC and merchant so the tensor is deterministic.
    """
    register_population(con, pop)
    end = month_end(pop.month)
    rows = con.execute(
        f"""
        SELECT pop.idx, pos, amount, mcc, date_diff('second', ts, ?::TIMESTAMP) / 86400.0 AS daygap, hour(ts) AS hour
        FROM (SELECT *, row_number() OVER (PARTITION BY customer_id ORDER BY ts DESC, amount DESC, mcc, merchant_id) - 1 AS pos
              FROM raw.transactions WHERE month BETWEEN ? AND ?) x
        JOIN pop USING (customer_id) WHERE pos < {length}
        """,
        [end, add_months(pop.month, -(lookback_months - 1)), pop.month],
    ).fetchnumpy()
    out = np.full((len(pop), length, 4), -1.0, dtype=np.float32)
    i, p = rows["idx"].astype(np.int64), rows["pos"].astype(np.int64)
    out[i, p, 0] = rows["amount"]
    out[i, p, 1] = mcc_hierarchy().code_index(np.asarray(rows["mcc"]))
    out[i, p, 2] = rows["daygap"]
    out[i, p, 3] = rows["hour"]
    return out


def daily_spend(con: duckdb.DuckDBPyConnection, pop: Population, days: int = 90) -> np.ndarray:
    """(N, days) total spend per calendar day over the ``days`` days ending at the snapshot, oldest first."""
    register_population(con, pop)
    end = month_end(pop.month)
    rows = con.execute(
        f"""
        SELECT pop.idx, {days} - 1 - date_diff('day', CAST(ts AS DATE), ?::DATE - 1) AS d, sum(amount) AS s
        FROM raw.transactions JOIN pop USING (customer_id)
        WHERE month BETWEEN ? AND ? AND ts >= ?::TIMESTAMP - INTERVAL {days} DAY
        GROUP BY ALL
        """,
        [end, add_months(pop.month, -((days // 28) + 1)), pop.month, end],
    ).fetchnumpy()
    out = np.zeros((len(pop), days), dtype=np.float64)
    d = rows["d"].astype(np.int64)
    ok = (d >= 0) & (d < days)
    out[rows["idx"].astype(np.int64)[ok], d[ok]] = rows["s"][ok]
    return out


def transactions_window(con: duckdb.DuckDBPyConnection, pop: Population, lookback_months: int) -> dict[str, np.ndarray]:
    """Flat arrays of the population's transactions in the window: customer index, mcc index, amount,
    days before snapshot end, merchant key (dense int)."""
    register_population(con, pop)
    rows = con.execute(
        """
        SELECT pop.idx, mcc, amount, date_diff('second', ts, ?::TIMESTAMP) / 86400.0 AS age_days,
               dense_rank() OVER (ORDER BY merchant_id) - 1 AS merchant_key
        FROM raw.transactions JOIN pop USING (customer_id) WHERE month BETWEEN ? AND ?
        ORDER BY pop.idx, ts, merchant_id
        """,
        [month_end(pop.month), add_months(pop.month, -(lookback_months - 1)), pop.month],
    ).fetchnumpy()
    return {
        "customer_idx": rows["idx"].astype(np.int64),
        "mcc_idx": mcc_hierarchy().code_index(np.asarray(rows["mcc"])),
        "amount": np.asarray(rows["amount"], dtype=np.float64),
        "age_days": np.asarray(rows["age_days"], dtype=np.float64),
        "merchant_key": rows["merchant_key"].astype(np.int64),
    }


def holdings_matrix(con: duckdb.DuckDBPyConnection, pop: Population, month: date | None = None) -> np.ndarray:
    """(N, 24) 0/1 holdings of the population at ``month`` (default t); NULL (unknown) counts as not held."""
    register_population(con, pop)
    cols = ", ".join(f'coalesce(h."{p}", 0)' for p in PRODUCT_NAMES)
    rows = con.execute(
        f"SELECT pop.idx, {cols} FROM pop JOIN raw.holdings h USING (customer_id) WHERE h.month = ?",
        [month or pop.month],
    ).fetchall()
    out = np.zeros((len(pop), len(PRODUCT_NAMES)), dtype=np.float32)
    if rows:
        arr = np.asarray(rows, dtype=np.float64)
        out[arr[:, 0].astype(np.int64)] = arr[:, 1:]
    return out


def holding_tenure(con: duckdb.DuckDBPyConnection, pop: Population, n_months: int = 12) -> np.ndarray:
    """(N, 24) months each product held at t has been held without interruption, counting t (0 = not held at t).

    Counted over the customer's snapshots in the ``n_months`` months ending at t, so it is capped at ``n_months``:
    the run starts after the last snapshot in the window where the product was not held (NULL = not held), or at
    the customer's first snapshot in the window. A month the customer is missing from does not break the run.
    """
    register_population(con, pop)
    cols = ", ".join(f'coalesce(h."{p}", 0) AS p{i:02d}' for i, p in enumerate(PRODUCT_NAMES))
    names = ", ".join(f"p{i:02d}" for i in range(len(PRODUCT_NAMES)))
    rows = con.execute(
        f"""
        WITH h AS (SELECT pop.idx, h.month, {cols} FROM pop JOIN raw.holdings h USING (customer_id)
                   WHERE h.month BETWEEN ? AND ?),
             u AS (UNPIVOT h ON {names} INTO NAME prod VALUE v)
        SELECT idx, CAST(substr(prod, 2) AS INTEGER) AS p,
               date_diff('month', coalesce(max(month) FILTER (WHERE v = 0), min(month) - INTERVAL 1 MONTH)::DATE, ?::DATE) AS tenure
        FROM u GROUP BY idx, prod HAVING max(CASE WHEN month = ? THEN v ELSE 0 END) = 1
        """,
        [add_months(pop.month, -(n_months - 1)), pop.month, pop.month, pop.month],
    ).fetchnumpy()
    out = np.zeros((len(pop), len(PRODUCT_NAMES)), dtype=np.float64)
    out[np.asarray(rows["idx"], dtype=np.int64), np.asarray(rows["p"], dtype=np.int64)] = rows["tenure"]
    return out

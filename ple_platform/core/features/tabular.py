"""The SQL/numpy feature groups: demographics, holdings, transaction behaviour, temporal aggregates,
rolling windows, acquisition history, MCC multi-hot and per-customer time-series statistics.

Each builder returns a float32 array (N, dim) aligned to the population and in the spec's column order.
Vocabularies and bins are fitted on training months only (``fit_*``) and passed in.
"""

from __future__ import annotations

from datetime import date

import duckdb
import numpy as np

from ple_platform.core.data.schema import GENDERS, PRODUCT_NAMES, SEGMENTS, SUITABILITY_PROFILES, add_months
from ple_platform.core.features.panel import (
    Population,
    register_population,
    holdings_matrix,
    month_end,
    txn_month_sql,
)
from ple_platform.core.features.spec import MCC_TOP_N, ROLLING_WINDOWS, group

AGE_BANDS = (25, 35, 45, 55, 65)  # fixed edges: codes 1..6


def _to_matrix(rows: dict[str, np.ndarray], n: int, columns: list[str]) -> np.ndarray:
    out = np.zeros((n, len(columns)), dtype=np.float32)
    idx = rows["idx"].astype(np.int64)
    for j, c in enumerate(columns):
        out[idx, j] = np.asarray(rows[c], dtype=np.float64)
    return out


# --- demographics --------------------------------------------------------------------------------------------


def fit_demographics_vocab(con: duckdb.DuckDBPyConnection, fit_months: list[date]) -> dict:
    """Category vocabularies (by frequency, ties by name) and income quintile edges from the fit months."""
    lo, hi = min(fit_months), max(fit_months)

    def vocab(col: str) -> list[str]:
        rows = con.execute(
            f"SELECT {col}, count(*) n FROM raw.customers WHERE month BETWEEN ? AND ? AND {col} IS NOT NULL "
            f"GROUP BY 1 ORDER BY n DESC, 1",
            [lo, hi],
        ).fetchall()
        return [r[0] for r in rows]

    (edges,) = con.execute(
        "SELECT quantile_cont(income, [0.2, 0.4, 0.6, 0.8]) FROM raw.customers WHERE month BETWEEN ? AND ? AND income IS NOT NULL",
        [lo, hi],
    ).fetchall()[0]
    return {
        "gender": [g for g in GENDERS if g in vocab("gender")] or list(GENDERS),
        "segment": [s for s in SEGMENTS if s in vocab("segment")] or list(SEGMENTS),
        "province": vocab("province"),
        "channel": vocab("channel"),
        "suitability": list(SUITABILITY_PROFILES),
        "income_edges": [float(e) for e in (edges or [])],
    }


def _code_sql(col: str, values: list[str]) -> str:
    if not values:
        return "0"
    cases = " ".join(f"WHEN {col} = '{v.replace(chr(39), chr(39) * 2)}' THEN {i + 1}" for i, v in enumerate(values))
    return f"CASE {cases} ELSE 0 END"


def demographics(con: duckdb.DuckDBPyConnection, pop: Population, vocab: dict) -> np.ndarray:
    register_population(con, pop)
    age_band = "CASE " + " ".join(f"WHEN c.age < {e} THEN {i + 1}" for i, e in enumerate(AGE_BANDS)) + f" ELSE {len(AGE_BANDS) + 1} END"
    edges = vocab["income_edges"]
    income_band = "CASE WHEN c.income IS NULL THEN 0 " + " ".join(f"WHEN c.income < {e} THEN {i + 1}" for i, e in enumerate(edges)) + f" ELSE {len(edges) + 1} END"
    rows = con.execute(
        f"""
        SELECT pop.idx,
               coalesce(c.age, 0) AS age,
               coalesce(ln(1 + c.income), 0) AS log_income,
               CASE WHEN c.income IS NULL THEN 1 ELSE 0 END AS income_missing,
               coalesce(c.tenure_months, 0) AS tenure_months,
               CASE WHEN c.tenure_months IS NULL THEN 1 ELSE 0 END AS tenure_unknown,
               CASE WHEN c.is_active THEN 1 ELSE 0 END AS is_active,
               CASE WHEN c.tenure_months IS NOT NULL AND c.tenure_months <= 6 THEN 1 ELSE 0 END AS is_new_customer,
               CASE WHEN c.suitability_profile IS NULL THEN 0 ELSE 1 END AS has_suitability_profile,
               CASE WHEN p.province IS NOT NULL AND p.province IS DISTINCT FROM c.province THEN 1 ELSE 0 END AS province_changed,
               CASE WHEN c.income IS NULL OR p.income IS NULL THEN 0 ELSE ln(1 + c.income) - ln(1 + p.income) END AS income_change_log,
               {_code_sql("c.gender", vocab["gender"])} AS gender_code,
               {_code_sql("c.segment", vocab["segment"])} AS segment_code,
               {_code_sql("c.province", vocab["province"])} AS province_code,
               {_code_sql("c.channel", vocab["channel"])} AS channel_code,
               CASE WHEN c.age IS NULL THEN 0 ELSE {age_band} END AS age_band_code,
               {income_band} AS income_band_code,
               {_code_sql("c.suitability_profile", vocab["suitability"])} AS suitability_code
        FROM pop JOIN raw.customers c ON c.customer_id = pop.customer_id AND c.month = ?
        LEFT JOIN raw.customers p ON p.customer_id = pop.customer_id AND p.month = ?
        """,
        [pop.month, add_months(pop.month, -1)],
    ).fetchnumpy()
    return _to_matrix(rows, len(pop), list(group("demographics").columns))


# --- holdings and their history ------------------------------------------------------------------------------


def product_holdings(con: duckdb.DuckDBPyConnection, pop: Population) -> np.ndarray:
    return holdings_matrix(con, pop)


def _holdings_window(con: duckdb.DuckDBPyConnection, pop: Population, n_months: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, 24) holdings and (N, T) presence mask for the T months ending at t, oldest first."""
    register_population(con, pop)
    first = add_months(pop.month, -(n_months - 1))
    cols = ", ".join(f'coalesce(h."{p}", 0)' for p in PRODUCT_NAMES)
    rows = con.execute(
        f"SELECT pop.idx, date_diff('month', ?::DATE, h.month), {cols} FROM pop JOIN raw.holdings h USING (customer_id) "
        f"WHERE h.month BETWEEN ? AND ?",
        [first, first, pop.month],
    ).fetchall()
    held = np.zeros((len(pop), n_months, len(PRODUCT_NAMES)), dtype=np.float32)
    mask = np.zeros((len(pop), n_months), dtype=bool)
    if rows:
        arr = np.asarray(rows, dtype=np.float64)
        i, k = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
        held[i, k] = arr[:, 2:]
        mask[i, k] = True
    return held, mask


def _transitions(held: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per consecutive observed month pair: (N, T-1, 24) acquisitions (0->1) and churns (1->0)."""
    both = (mask[:, 1:] & mask[:, :-1])[:, :, None]
    acq = (held[:, 1:] == 1) & (held[:, :-1] == 0) & both
    churn = (held[:, 1:] == 0) & (held[:, :-1] == 1) & both
    return acq, churn


def derived_temporal(con: duckdb.DuckDBPyConnection, pop: Population) -> np.ndarray:
    # 13 months of holdings give 12 month-to-month transitions ending at t.
    held, mask = _holdings_window(con, pop, 13)
    acq, churn = _transitions(held, mask)
    diversity = (held[:, 1:].max(axis=1) > 0).sum(axis=1)
    return np.stack(
        [acq.sum(axis=(1, 2)), churn.sum(axis=(1, 2)), mask[:, 1:].sum(axis=1), diversity], axis=1
    ).astype(np.float32)


def product_history_multihot(con: duckdb.DuckDBPyConnection, pop: Population) -> np.ndarray:
    """Products acquired in the 6 month-to-month transitions ending at t (history only)."""
    held, mask = _holdings_window(con, pop, 7)
    acq, _ = _transitions(held, mask)
    return acq.any(axis=1).astype(np.float32)


# --- transactions --------------------------------------------------------------------------------------------


def txn_behavior(con: duckdb.DuckDBPyConnection, pop: Population) -> np.ndarray:
    register_population(con, pop)
    rows = con.execute(
        f"""
        WITH m AS ({txn_month_sql()}),
             x AS (SELECT customer_id, count(*) AS txn_count, ln(1 + max(amount)) AS log_max_amount,
                          CASE WHEN count(*) > 1 THEN stddev_samp(amount) / avg(amount) ELSE 0 END AS spend_volatility
                   FROM raw.transactions WHERE month = ? GROUP BY customer_id)
        SELECT pop.idx, coalesce(x.txn_count, 0) AS txn_count, coalesce(m.log_spend, 0) AS log_spend,
               coalesce(m.log_mean_amount, 0) AS log_mean_amount, coalesce(x.log_max_amount, 0) AS log_max_amount,
               coalesce(m.n_unique_mcc, 0) AS n_unique_mcc, coalesce(m.n_unique_merchants, 0) AS n_unique_merchants,
               coalesce(m.recency_days, 31) AS recency_days,
               coalesce(m.ratio_night, 0) AS ratio_night, coalesce(m.ratio_morning, 0) AS ratio_morning,
               coalesce(m.ratio_afternoon, 0) AS ratio_afternoon, coalesce(m.ratio_evening, 0) AS ratio_evening,
               coalesce(m.weekend_ratio, 0) AS weekend_ratio, coalesce(x.spend_volatility, 0) AS spend_volatility,
               coalesce(m.days_active, 0) AS days_active
        FROM pop LEFT JOIN m USING (customer_id) LEFT JOIN x USING (customer_id)
        """,
        [pop.month, pop.month, pop.month],
    ).fetchnumpy()
    return _to_matrix(rows, len(pop), list(group("txn_behavior").columns))


def txn_rolling_stats(con: duckdb.DuckDBPyConnection, pop: Population) -> np.ndarray:
    register_population(con, pop)
    end = month_end(pop.month)
    parts = []
    for w in ROLLING_WINDOWS:
        cond = f"ts >= ?::TIMESTAMP - INTERVAL {w} DAY"
        parts.append(
            f"coalesce(sum(amount) FILTER ({cond}), 0) AS s{w}, coalesce(avg(amount) FILTER ({cond}), 0) AS m{w}, "
            f"coalesce(stddev_pop(amount) FILTER ({cond}), 0) AS d{w}, count(*) FILTER ({cond}) AS c{w}, "
            f"count(DISTINCT CAST(ts AS DATE)) FILTER ({cond}) AS a{w}"
        )
    params = [end] * (5 * len(ROLLING_WINDOWS))
    rows = con.execute(
        f"""
        SELECT pop.idx, {", ".join(parts)}
        FROM pop JOIN raw.transactions t USING (customer_id)
        WHERE t.month BETWEEN ? AND ? AND ts >= ?::TIMESTAMP - INTERVAL {max(ROLLING_WINDOWS)} DAY
        GROUP BY pop.idx
        """,
        params + [add_months(pop.month, -6), pop.month, end],
    ).fetchnumpy()
    columns = [f"{k}{w}" for w in ROLLING_WINDOWS for k in ("s", "m", "d", "c", "a")]
    return _to_matrix(rows, len(pop), columns)


def fit_mcc_vocabulary(con: duckdb.DuckDBPyConnection, fit_months: list[date], top_n: int = MCC_TOP_N) -> list[int]:
    rows = con.execute(
        "SELECT mcc, count(*) n FROM raw.transactions WHERE month BETWEEN ? AND ? GROUP BY mcc ORDER BY n DESC, mcc LIMIT ?",
        [min(fit_months), max(fit_months), top_n],
    ).fetchall()
    return [int(r[0]) for r in rows]


def mcc_top30_multihot(con: duckdb.DuckDBPyConnection, pop: Population, vocabulary: list[int]) -> np.ndarray:
    register_population(con, pop)
    end = month_end(pop.month)
    rows = con.execute(
        """
        SELECT DISTINCT pop.idx, t.mcc FROM pop JOIN raw.transactions t USING (customer_id)
        WHERE t.month BETWEEN ? AND ? AND t.ts >= ?::TIMESTAMP - INTERVAL 90 DAY
        """,
        [add_months(pop.month, -3), pop.month, end],
    ).fetchnumpy()
    out = np.zeros((len(pop), MCC_TOP_N + 1), dtype=np.float32)
    vocab = np.asarray(vocabulary, dtype=np.int64)
    mcc = np.asarray(rows["mcc"], dtype=np.int64)
    idx = rows["idx"].astype(np.int64)
    order = np.argsort(vocab)
    pos = np.searchsorted(vocab[order], mcc)
    pos = np.clip(pos, 0, max(len(vocab) - 1, 0))
    known = (vocab[order][pos] == mcc) if len(vocab) else np.zeros(len(mcc), dtype=bool)
    out[idx[known], order[pos[known]]] = 1.0
    out[idx[~known], MCC_TOP_N] = 1.0
    return out


# --- per-customer time-series statistics (model_derived) -----------------------------------------------------


def _ema(x: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """EMA along each customer's own observed months (oldest -> newest); unobserved months are skipped."""
    ema = np.zeros(x.shape[0])
    started = np.zeros(x.shape[0], dtype=bool)
    for k in range(x.shape[1]):  # loop over <= 12 months, vectorised over customers
        m = mask[:, k]
        ema = np.where(m & started, alpha * x[:, k] + (1 - alpha) * ema, np.where(m & ~started, x[:, k], ema))
        started |= m
    return ema


def time_series_stats(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, 9) statistics of each customer's own monthly series: ema .1/.3/.5, velocity over 1/3/6 months,
    autocorrelation time constant, 3-periodic seasonality strength, least-squares trend slope."""
    n, t = x.shape
    last = t - 1
    cols = [_ema(x, mask, a) for a in (0.1, 0.3, 0.5)]
    for lag in (1, 3, 6):
        ok = mask[:, last] & mask[:, last - lag]
        cols.append(np.where(ok, x[:, last] - x[:, last - lag], 0.0))
    cnt = mask.sum(axis=1)
    mean = np.where(cnt > 0, (x * mask).sum(axis=1) / np.maximum(cnt, 1), 0.0)
    xc = np.where(mask, x - mean[:, None], 0.0)
    var = (xc**2).sum(axis=1)
    pair = mask[:, 1:] & mask[:, :-1]
    cov1 = (xc[:, 1:] * xc[:, :-1] * pair).sum(axis=1)
    rho = np.where(var > 1e-12, cov1 / np.maximum(var, 1e-12), 0.0)
    rho = np.clip(np.abs(rho), 0.0, 0.999)
    tau = np.where(rho > 1e-6, -1.0 / np.log(np.maximum(rho, 1e-6)), 0.0)
    cols.append(np.clip(tau, 0.0, float(t)))
    phase = np.arange(t) % 3
    seas_ss = np.zeros(n)
    for p in range(3):
        mp = mask & (phase == p)[None, :]
        cp = mp.sum(axis=1)
        mu_p = np.where(cp > 0, (xc * mp).sum(axis=1) / np.maximum(cp, 1), 0.0)
        seas_ss += cp * mu_p**2
    cols.append(np.where((var > 1e-12) & (cnt >= 6), seas_ss / np.maximum(var, 1e-12), 0.0))
    tt = np.where(mask, np.arange(t)[None, :], 0.0)
    tmean = np.where(cnt > 0, tt.sum(axis=1) / np.maximum(cnt, 1), 0.0)
    tc = np.where(mask, tt - tmean[:, None], 0.0)
    sxx = (tc**2).sum(axis=1)
    cols.append(np.where(sxx > 0, (tc * xc).sum(axis=1) / np.maximum(sxx, 1e-12), 0.0))
    return np.stack(cols, axis=1)


def model_derived(panel: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    series = {"spend": panel["log_spend"], "txn_count": panel["log_count"], "n_products": panel["n_products"]}
    return np.concatenate([time_series_stats(series[s], mask) for s in series], axis=1).astype(np.float32)

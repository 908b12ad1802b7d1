"""Labels of the 13 tasks for month t, computed from raw months t and t+1 (and t-2..t for trends).

A label is NULL when it is undefined for that customer (e.g. no spend in either month for
``top_mcc_shift``, customer gone at t+1 for spend-based tasks); it is never silently zero-filled.
"""

from __future__ import annotations

from datetime import date

import duckdb
import numpy as np
import pyarrow as pa

from ple_platform.core.data.schema import CORE_PRODUCTS, PRODUCT_GROUPS, PRODUCTS, add_months
from ple_platform.core.tasks.spec import NEXT_MCC_CLASSES, TASKS
from ple_platform.core.warehouse import replace_partition


LABEL_TABLE = "labels.task_labels"


def ensure_label_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS labels")
    cols = ", ".join(f'"{t.name}" DOUBLE' for t in TASKS)
    con.execute(f"CREATE TABLE IF NOT EXISTS {LABEL_TABLE} (customer_id VARCHAR, month DATE, {cols})")


def write_labels(con: duckdb.DuckDBPyConnection, month: date, ids: np.ndarray, values: dict[str, np.ndarray]) -> int:
    """Replace month t of ``labels.task_labels`` (NaN -> NULL); returns the stored row count."""
    ensure_label_table(con)
    table = pa.table(
        [pa.array(ids.tolist(), pa.string()), pa.array(np.full(len(ids), np.datetime64(month, "D")), pa.date32())]
        + [pa.array(values[t.name], pa.float64(), from_pandas=True) for t in TASKS],
        names=["customer_id", "month", *[t.name for t in TASKS]],
    )
    con.register("label_rows", table)
    try:
        return replace_partition(con, LABEL_TABLE, month, "SELECT * FROM label_rows")
    finally:
        con.unregister("label_rows")


class LabelsUnavailable(Exception):
    """Month t+1 is not in the warehouse yet: the labels of month t cannot exist."""


def fit_next_mcc_vocabulary(con: duckdb.DuckDBPyConnection, fit_months: list[date], n: int = NEXT_MCC_CLASSES) -> list[int]:
    """The ``n`` MCC codes with the most spend in the fit (training) months, most spend first."""
    rows = con.execute(
        "SELECT mcc, sum(amount) s FROM raw.transactions WHERE month BETWEEN ? AND ? GROUP BY mcc ORDER BY s DESC, mcc LIMIT ?",
        [min(fit_months), max(fit_months), n],
    ).fetchall()
    return [int(r[0]) for r in rows]


def _held(alias: str, names) -> str:
    return " + ".join(f'coalesce({alias}."{p}", 0)' for p in names)


def label_sql(vocabulary: list[int]) -> str:
    """SELECT producing (customer_id, month, 13 task columns) for month ? (= t); params: t, t+1, t-2."""
    new = {p.name: f'(coalesce(b."{p.name}",0) = 1 AND coalesce(a."{p.name}",0) = 0)' for p in PRODUCTS}
    new_count = " + ".join(f"CASE WHEN {e} THEN 1 ELSE 0 END" for e in new.values())
    lost_core = " OR ".join(f'(coalesce(a."{p}",0) = 1 AND coalesce(b."{p}",0) = 0)' for p in CORE_PRODUCTS)
    kept = " + ".join(f'CASE WHEN coalesce(a."{p.name}",0) = 1 AND coalesce(b."{p.name}",0) = 1 THEN 1 ELSE 0 END' for p in PRODUCTS)
    # First newly acquired product = smallest product index; its group is the class (1-based, 0 = none).
    nba = "CASE " + " ".join(
        f"WHEN {new[p.name]} THEN {PRODUCT_GROUPS.index(p.group) + 1}" for p in PRODUCTS
    ) + " ELSE 0 END"
    acquire = {
        g: "CASE WHEN " + " OR ".join(new[p.name] for p in PRODUCTS if p.group == g) + " THEN 1 ELSE 0 END"
        for g in ("deposits", "investments", "accounts", "lending", "payments")
    }
    vocab_case = "CASE " + " ".join(f"WHEN mcc = {c} THEN {i}" for i, c in enumerate(vocabulary)) + " END" if vocabulary else "NULL"
    return f"""
    WITH a AS (SELECT * FROM raw.holdings WHERE month = $t),
         b AS (SELECT * FROM raw.holdings WHERE month = $t1),
         ca AS (SELECT customer_id, is_active FROM raw.customers WHERE month = $t),
         cb AS (SELECT customer_id, is_active FROM raw.customers WHERE month = $t1),
         spend AS (SELECT customer_id, month, mcc, sum(amount) s FROM raw.transactions
                   WHERE month BETWEEN $t2 AND $t1 GROUP BY ALL),
         top AS (SELECT customer_id, month, arg_max(mcc, s ORDER BY s DESC, mcc) AS top_mcc, sum(s) AS total,
                        count(DISTINCT mcc) AS n_mcc FROM spend GROUP BY ALL),
         top_vocab AS (SELECT customer_id, arg_max({vocab_case}, s) AS cls FROM spend
                       WHERE month = $t1 AND ({vocab_case}) IS NOT NULL GROUP BY ALL),
         trail AS (SELECT c.customer_id, avg(coalesce(top.n_mcc, 0)) AS mean_n_mcc
                   FROM (SELECT customer_id, month FROM raw.customers WHERE month BETWEEN $t2 AND $t) c
                   LEFT JOIN top USING (customer_id, month) GROUP BY c.customer_id)
    SELECT ca.customer_id, $t AS month,
           CASE WHEN cb.customer_id IS NULL OR ({lost_core}) OR (ca.is_active AND NOT cb.is_active) THEN 1 ELSE 0 END AS churn_signal,
           CASE WHEN cb.customer_id IS NULL THEN 0.0
                WHEN ({_held('a', [p.name for p in PRODUCTS])}) = 0 THEN NULL
                ELSE ({kept}) / ({_held('a', [p.name for p in PRODUCTS])}) END AS product_stability,
           CASE WHEN cb.customer_id IS NULL THEN NULL ELSE {nba} END AS nba_primary,
           CASE WHEN cb.customer_id IS NULL THEN NULL ELSE {new_count} END AS cross_sell_count,
           {", ".join(f"CASE WHEN cb.customer_id IS NULL THEN NULL ELSE {e} END AS will_acquire_{g}" for g, e in acquire.items())},
           CASE WHEN cb.customer_id IS NULL THEN NULL ELSE tv.cls END AS next_mcc,
           CASE WHEN cb.customer_id IS NULL THEN NULL ELSE coalesce(t1.n_mcc, 0) - coalesce(trail.mean_n_mcc, 0) END AS mcc_diversity_trend,
           CASE WHEN t0.top_mcc IS NULL OR t1.top_mcc IS NULL THEN NULL WHEN t0.top_mcc <> t1.top_mcc THEN 1 ELSE 0 END AS top_mcc_shift,
           CASE WHEN cb.customer_id IS NULL THEN NULL ELSE ln(1 + coalesce(t1.total, 0)) - ln(1 + coalesce(t0.total, 0)) END AS spend_change
    FROM ca
    JOIN a USING (customer_id)
    LEFT JOIN cb USING (customer_id)
    LEFT JOIN b USING (customer_id)
    LEFT JOIN top t0 ON t0.customer_id = ca.customer_id AND t0.month = $t
    LEFT JOIN top t1 ON t1.customer_id = ca.customer_id AND t1.month = $t1
    LEFT JOIN top_vocab tv ON tv.customer_id = ca.customer_id
    LEFT JOIN trail ON trail.customer_id = ca.customer_id
    """


def label_params(month: date) -> dict:
    return {"t": month, "t1": add_months(month, 1), "t2": add_months(month, -2)}


def require_next_month(con: duckdb.DuckDBPyConnection, month: date) -> None:
    nxt = add_months(month, 1)
    n = con.execute("SELECT count(*) FROM raw.holdings WHERE month = ?", [nxt]).fetchall()[0][0]
    if n == 0:
        raise LabelsUnavailable(
            f"labels of {month:%Y-%m} need month {nxt:%Y-%m} (t+1), which is not in the warehouse yet: "
            f"this is the newest month, scored but not labelled"
        )


def as_float(column) -> np.ndarray:
    """A fetched SQL column as float64 with NULL -> NaN (DuckDB returns masked arrays for NULLs; a plain
    ``np.asarray`` would silently turn them into fill values)."""
    return np.ma.filled(np.ma.asarray(column).astype(np.float64), np.nan)


def read_labels(con: duckdb.DuckDBPyConnection, month: date, vocabulary: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(customer ids sorted, {task: float64 labels with NaN = undefined}) for month t; raises LabelsUnavailable."""
    require_next_month(con, month)
    rows = con.execute(label_sql(vocabulary) + " ORDER BY ca.customer_id", label_params(month)).fetchnumpy()
    return np.asarray(rows["customer_id"], dtype=object), {t.name: as_float(rows[t.name]) for t in TASKS}


def label_summary(values: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per task: rows, null rate, positive rate / class count / mean and std."""
    out = {}
    for task in TASKS:
        v = np.asarray(values[task.name], dtype=np.float64)
        ok = ~np.isnan(v)
        s = {"rows": int(len(v)), "null_rate": float(1 - ok.mean()) if len(v) else 1.0}
        if task.kind == "binary":
            s["positive_rate"] = float(v[ok].mean()) if ok.any() else float("nan")
        elif task.kind == "multiclass":
            s["n_classes_present"] = int(len(np.unique(v[ok])))
            s["majority_share"] = float(np.bincount(v[ok].astype(int)).max() / ok.sum()) if ok.any() else float("nan")
        else:
            s["mean"], s["std"] = (float(v[ok].mean()), float(v[ok].std())) if ok.any() else (float("nan"), float("nan"))
        out[task.name] = s
    return out


def label_health(summary: dict[str, dict], min_positive: int = 5) -> dict[str, tuple[bool, str]]:
    """Every binary task has both classes (>= ``min_positive`` of each), every multiclass >= 2 classes,
    every regression non-zero variance."""
    out = {}
    for task in TASKS:
        s = summary[task.name]
        n = s["rows"] * (1 - s["null_rate"])
        if task.kind == "binary":
            pos = s["positive_rate"] * n if n else 0
            ok = pos >= min_positive and (n - pos) >= min_positive
            out[task.name] = (bool(ok), f"{pos:.0f} positives / {n - pos:.0f} negatives")
        elif task.kind == "multiclass":
            out[task.name] = (s["n_classes_present"] >= 2, f"{s['n_classes_present']} classes present")
        else:
            out[task.name] = (bool(s["std"] > 0), f"std {s['std']:.4g}")
    return out

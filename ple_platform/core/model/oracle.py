"""Oracle ceiling for benchmarks on the synthetic bank: LightGBM on the observables *plus* the generator's ground
truth (latent state, intents, life event and the planted mechanisms of docs/data.md §4.1).

No production model may read ``ground_truth``; benchmarks use this ceiling to report every model as a fraction of
what a model could reach if it knew the hidden causes of the next month's events (``fraction_of_oracle``). The
oracle is trained on the same rows, with the same LightGBM recipe, as the per-task baseline, so the gap between
the two is the value of the ground truth and nothing else.

Ground-truth columns at month t describe what acts on the transition t -> t+1: intents of t, the month-end burst
and sibling shift seen in t's transactions, the products a community peer acquired at t, and a broken weekly
routine at t (which acts on churn).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ple_platform.core.data.schema import PRODUCT_NAMES
from ple_platform.core.data.synthetic import LIFE_EVENTS, PEER_PRODUCTS, PERSONAS

_NUMERIC = (
    "latent_wealth", "latent_activity", "latent_risk", "latent_digital", "latent_loyalty",
    "intent_travel", "intent_housing", "intent_saving", "intent_investing", "intent_family", "intent_digital",
)  # fmt: skip
GROUND_TRUTH_FEATURES: tuple[str, ...] = (
    *_NUMERIC, "persona_code", "life_event_code", "mech_burst", "mech_sibling_shift",
    *(f"peer_acquired_{p}" for p in PEER_PRODUCTS), "routine_weekday", "mech_routine_break",
)  # fmt: skip


def ground_truth_features(
    con: duckdb.DuckDBPyConnection, landing: Path | str, customer_ids: Sequence[str], months: np.ndarray,
    pseudonym_sql: Callable[[str], str] | None = None,
) -> np.ndarray:
    """(n, len(GROUND_TRUTH_FEATURES)) float32 ground truth of the rows (customer_ids[i], months[i]), read from
    ``landing/ground_truth/month=*.parquet``. A row without ground truth is an error: the oracle would silently
    degrade to the observables otherwise.

    The generator's ground truth carries source ids; warehouse rows carry keyed-HMAC pseudonyms. Pass the raw
    layer's SQL pseudonymisation (``pseudonym_sql(expr) -> SQL``, e.g. ``lambda e: hmac_sql(e, key)``) when
    ``customer_ids`` come from the warehouse, so both sides are matched on the pseudonym."""
    path = Path(landing) / "ground_truth"
    files = sorted(path.glob("month=*.parquet"))
    if not files:
        raise FileNotFoundError(f"no ground truth under {path}: the oracle needs a synthetic landing zone")
    rows = pa.table({
        "i": pa.array(np.arange(len(customer_ids), dtype=np.int64)),
        "customer_id": pa.array([str(c) for c in customer_ids], pa.string()),
        "month": pa.array(np.asarray(months, dtype="datetime64[D]")),
    })
    personas = ", ".join(f"'{p}'" for p in PERSONAS)
    events = ", ".join(f"'{e}'" for e in LIFE_EVENTS)
    peer = ", ".join(
        f"((g.mech_peer_products >> {PRODUCT_NAMES.index(p)}) & 1)::FLOAT AS peer_acquired_{p}" for p in PEER_PRODUCTS
    )
    con.register("_oracle_rows", rows)
    try:
        res = con.execute(f"""
            SELECT r.i, {", ".join(f"g.{c}::FLOAT AS {c}" for c in _NUMERIC)},
                   (list_position([{personas}], g.persona) - 1)::FLOAT AS persona_code,
                   (list_position([{events}], g.life_event) - 1)::FLOAT AS life_event_code,
                   g.mech_burst::FLOAT AS mech_burst, g.mech_sibling_shift::FLOAT AS mech_sibling_shift, {peer},
                   coalesce(g.routine_weekday, -1)::FLOAT AS routine_weekday,
                   g.mech_routine_break::FLOAT AS mech_routine_break
            FROM _oracle_rows r JOIN read_parquet({[str(f) for f in files]}) g
              ON {pseudonym_sql("g.customer_id") if pseudonym_sql else "g.customer_id"} = r.customer_id
             AND g.month = r.month""").fetchnumpy()
    finally:
        con.unregister("_oracle_rows")
    if len(res["i"]) != len(customer_ids):
        raise ValueError(
            f"ground truth under {path} covers {len(res['i'])} of {len(customer_ids)} (customer, month) rows: "
            "the landing zone is not the one the features were built from"
        )
    out = np.empty((len(customer_ids), len(GROUND_TRUTH_FEATURES)), np.float32)
    out[np.asarray(res["i"], dtype=np.int64)] = np.column_stack([np.asarray(res[c], np.float32) for c in GROUND_TRUTH_FEATURES])
    return out


def fraction_of_oracle(auc: float, oracle_auc: float) -> float:
    """A model's share of the oracle's lift over chance: (AUC - 0.5) / (oracle AUC - 0.5); NaN if undefined."""
    if not np.isfinite(auc) or not np.isfinite(oracle_auc) or oracle_auc <= 0.5:
        return float("nan")
    return float((auc - 0.5) / (oracle_auc - 0.5))


def fit_binary(
    x: np.ndarray, y: np.ndarray, x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
    *, seed: int = 0, num_boost_round: int = 300, num_threads: int = 1,
):
    """A small binary LightGBM (the oracle's and its observables-only control's recipe in unit-sized checks);
    early-stopped on the validation rows when given."""
    import lightgbm as lgb

    params = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 40,
              "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
              "verbose": -1, "seed": seed, "num_threads": num_threads, "deterministic": True, "force_col_wise": True}
    train = lgb.Dataset(x, label=y)
    if x_val is None:
        return lgb.train(params, train, num_boost_round=num_boost_round)
    val = lgb.Dataset(x_val, label=y_val, reference=train)
    return lgb.train(params, train, num_boost_round=num_boost_round, valid_sets=[val],
                     callbacks=[lgb.early_stopping(30, verbose=False)])


def assess_oracle(raw: dict, landing: Path | str, *, pseudonym_sql: Callable[[str], str] | None = None, seed: int = 0,
                  n_boot: int = 200, num_boost_round: int = 400, early_stopping_rounds: int = 30,
                  num_threads: int = 2) -> dict:
    """The oracle row of a teacher assessment: the per-task LightGBM baseline recipe (``baselines.py``) on the
    split's feature matrix plus ``ground_truth_features``, trained on ``raw["train"]``, early-stopped on
    ``raw["validation"]`` and scored on ``raw["test"]`` (``MonthData`` of ``load_checkpoint_data``, so the rows
    are exactly those the teacher and the baseline used; their ids are warehouse pseudonyms, so pass
    ``pseudonym_sql``). Returns ``{"metrics", "mean_binary_auc"}``."""
    from ple_platform.core.model.baselines import MANY_CLASS_OVERRIDES, predict_lightgbm, train_lightgbm_baselines
    from ple_platform.core.model.evaluate import evaluate_predictions, mean_binary_auc

    con = duckdb.connect()
    try:
        x = {part: np.hstack([raw[part].matrix(), ground_truth_features(con, landing, raw[part].customer_ids,
                                                                          raw[part].months, pseudonym_sql)])
             for part in ("train", "validation", "test")}
    finally:
        con.close()
    models = train_lightgbm_baselines(
        x["train"], raw["train"].labels, x["validation"], raw["validation"].labels, seed=seed,
        num_boost_round=num_boost_round, early_stopping_rounds=early_stopping_rounds, num_threads=num_threads,
        task_overrides={"next_mcc": MANY_CLASS_OVERRIDES} if "next_mcc" in raw["train"].labels else None,
    )
    metrics = evaluate_predictions(raw["test"].labels, predict_lightgbm(models, x["test"], num_threads=num_threads),
                                   n_boot=n_boot, seed=seed)
    return {"metrics": metrics, "mean_binary_auc": mean_binary_auc(metrics)}

"""A month's recommendations from a registered bundle: score, rank, filter, explain, write.

The champion's students score every customer of month t from the raw warehouse features; products are ranked by
``model.products.product_scores`` (priors fitted on the bundle's training months' holdings t -> t+1), filtered by
suitability (``ranking.eligibility``: no investment product without a profile) and held products, top 7 per
customer. Each recommendation gets reasons in English and Korean (``reasons.explain_batch``) from the TreeSHAP of
the student that scored its product (one ``predict_contrib`` per task over the customers who got a product of
that task) and the teacher's shared gate weights of that task (the registered checkpoint, month t scaled with its
own scaler).

**Protected attributes are never quoted as a reason.** The contributions of age, age band, gender and province
columns (``PROTECTED_COLUMNS``) are zeroed before reasons are selected: telling a customer "because of your
gender/age/province" would state a protected characteristic as the ground of a financial offer (Korean Financial
Consumer Protection Act unfair-discrimination rule, AI Basic Act high-impact duties; GDPR/EU AI Act special care).
The scores themselves are unchanged; fairness of the outcome is monitored in the compliance report instead.

``write_recommendations`` replaces the month's rows of ``governance.recommendations`` atomically; ids are
``sha256(version|month|customer|rank)[:20]`` computed in DuckDB.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa

from ple_platform.core.data.schema import PRODUCT_NAMES, PRODUCTS
from ple_platform.core.distillation.bundle import load_bundle_students, predict_bundle
from ple_platform.core.features.spec import all_columns
from ple_platform.core.governance.promotion.registry import ModelBundle
from ple_platform.core.model.teacher import teacher_checkpoint_key
from ple_platform.core.model import products as scoring
from ple_platform.core.progress import milestone
from ple_platform.core.recommend import ranking, reasons
from ple_platform.core.storage import ArtifactStore, sha256_bytes
from ple_platform.core.tasks.spec import TASKS
from ple_platform.core.warehouse import customer_attributes, partition_content_hash, replace_partition

if TYPE_CHECKING:  # the model modules bring torch: imported where a month is scored, not at definitions load
    from ple_platform.core.model.data import MonthData
    from ple_platform.core.model.inference import CheckpointData

TABLE = "governance.recommendations"
TOP_K = 7
TOP_REASONS = 3
LANGS = ("en", "ko")
# Feature columns that encode a protected attribute (age, age band, gender, province, moving province).
PROTECTED_COLUMNS = frozenset({"age", "age_band_code", "gender_code", "province_code", "province_changed"})
PROTECTED_CONCEPTS = frozenset({"age", "gender", "province", "moved"})

_DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    recommendation_id VARCHAR NOT NULL, month DATE NOT NULL, customer_id VARCHAR NOT NULL, rank INTEGER NOT NULL,
    product VARCHAR NOT NULL, score DOUBLE NOT NULL, task VARCHAR NOT NULL, task_scores JSON NOT NULL,
    reason_en VARCHAR NOT NULL, reason_ko VARCHAR NOT NULL, reason_features JSON NOT NULL,
    bundle_version VARCHAR NOT NULL, bundle_sha256 VARCHAR NOT NULL)"""


class RecommendationError(ValueError):
    """The month cannot be recommended from this bundle (missing or altered artifacts, no customers)."""


def summary_key(month: date) -> str:
    """Artifact-store key of the month's batch summary (counts, grounding, gate profile) read by the report."""
    return f"recommendations/{month.isoformat()}/summary.json"


def registered_teacher(con: duckdb.DuckDBPyConnection, store: ArtifactStore, bundle: ModelBundle) -> CheckpointData:
    """The bundle's teacher (content-addressed checkpoint, hash checked), without loading its months."""
    key = teacher_checkpoint_key(bundle.model_month, bundle.teacher_sha256)
    if not store.exists(key):
        raise RecommendationError(f"teacher checkpoint {key} of {bundle.version} is missing from the store")
    checkpoint = store.get(key)
    if sha256_bytes(checkpoint) != bundle.teacher_sha256:
        raise RecommendationError(f"teacher checkpoint {key} differs from the registered sha256 of "
                                  f"{bundle.version}; refusing to use it")
    from ple_platform.core.model.inference import load_checkpoint_data

    return load_checkpoint_data(con, checkpoint, parts=())


def training_months(con: duckdb.DuckDBPyConnection, bundle: ModelBundle, teacher: CheckpointData,
                    max_rows: int | None = None) -> MonthData:
    """The bundle's training months with the teacher's customer subsample (capped at ``max_rows`` in total)."""
    per_month = teacher.settings.max_customers_per_month
    if max_rows is not None:
        cap = max(1, max_rows // len(bundle.train_months))
        per_month = min(per_month, cap) if per_month else cap
    from ple_platform.core.model.data import load_months

    return load_months(con, list(bundle.train_months), labels=False, max_customers=per_month,
                       sample_seed=teacher.settings.seed)


def fit_priors(con: duckdb.DuckDBPyConnection, train: MonthData) -> scoring.ProductPriors:
    """Within-group acquisition shares from the bundle's training months (t -> t+1 holdings)."""
    from ple_platform.core.model.assessment import acquisitions, next_holdings

    known, held, acquired = acquisitions(train.holdings, next_holdings(con, train))
    if not known.any():
        raise RecommendationError("no training-month customer is observed at t+1: cannot fit product priors")
    return scoring.fit_product_priors(held[known], (held | acquired)[known])


def task_scores_json(preds: dict[str, np.ndarray]) -> list[str]:
    """Per customer: binary P(y=1), regression value, multiclass {class, p} of the most likely class."""
    cols: dict[str, list] = {}
    for t in TASKS:
        if t.name not in preds:
            continue
        p = np.asarray(preds[t.name])
        if p.ndim == 2:
            k = p.argmax(1)
            cols[t.name] = [{"class": int(a), "p": round(float(b), 6)} for a, b in zip(k, p[np.arange(len(p)), k])]
        else:
            cols[t.name] = np.round(p.astype(float), 6).tolist()
    names = list(cols)
    return [json.dumps(dict(zip(names, vals)), sort_keys=True) for vals in zip(*cols.values())]


@dataclass(frozen=True)
class Explanations:
    texts: dict[str, np.ndarray]  # language -> reason text per recommendation row
    features: np.ndarray  # JSON list of the English reasons' structured form per row
    n_reasons: int
    n_grounded: int  # reasons whose every number is the customer's own value or gate weight


def gate_cited_tasks(bundle: ModelBundle) -> set[str]:
    """The tasks whose reasons may cite the teacher's gate weights, as the bundle's routing records them
    (``core/distillation/gate_citation.py``: DISTILLed *and* the gates beat the no-information control).
    A bundle without that record cites none."""
    return {t for t, r in bundle.routing.items() if isinstance(r, dict) and (r.get("gate_citation") or {}).get("cited")}


def explain(students: dict, X: np.ndarray, customer_rows: np.ndarray, products: np.ndarray,
            gates: dict[str, dict[str, np.ndarray]], names: Sequence[str] | None = None) -> Explanations:
    """Reasons (en, ko) per recommendation row (customer row, product), one ``predict_contrib`` per task.
    ``names``: the columns of ``X`` (default all features; the server passes its snapshot's column subset)."""
    names = all_columns() if names is None else list(names)
    pos = {c: i for i, c in enumerate(names)}
    n = len(customer_rows)
    texts = {lang: np.empty(n, dtype=object) for lang in LANGS}
    features = np.empty(n, dtype=object)
    n_reasons = n_grounded = 0
    tasks = np.array([scoring.task_for_product(int(p)) for p in range(len(PRODUCT_NAMES))])[products]
    for task in np.unique(tasks):
        sel = np.flatnonzero(tasks == task)
        student = students[task]
        rows = customer_rows[sel]
        class_index = None
        if student.kind == "multiclass":
            class_index = np.array([scoring.NBA_CLASS[PRODUCTS[p].group] for p in products[sel]])
        contrib = student.predict_contrib(X[rows], names, class_index=class_index).values.copy()
        protected = np.array([c in PROTECTED_COLUMNS for c in student.features] + [False])
        contrib[:, protected] = 0.0  # never a reason: see the module docstring
        raw = X[np.ix_(rows, [pos[c] for c in student.features])].astype(np.float64)
        # The gate sentence is about the teacher: callers pass gates only for the tasks the bundle cites
        # (gate_cited_tasks); a DIRECT student is refused here as well, whatever the caller passed.
        cites_gates = task in gates and str(getattr(student.route, "value", student.route)) == "DISTILL"
        gate = {e: w[rows] for e, w in gates[task].items()} if cites_gates else None
        by_lang = {lang: reasons.explain_batch(products[sel], task, contrib, student.features, raw, gate, lang,
                                               TOP_REASONS) for lang in LANGS}
        for j, i in enumerate(sel):
            raw_row = {c: float(raw[j, k]) for k, c in enumerate(student.features)}
            gate_row = None if gate is None else {e: float(w[j]) for e, w in gate.items()}
            for lang in LANGS:
                rs = by_lang[lang][j]
                texts[lang][i] = " ".join(r.text for r in rs)
                n_reasons += len(rs)
                n_grounded += sum(reasons.grounded_numbers(r, raw_row, gate_row) for r in rs)
                if any(set(r.concept_keys) & PROTECTED_CONCEPTS for r in rs):
                    raise RecommendationError(f"a reason for {task} quotes a protected attribute")
            features[i] = json.dumps([r.to_dict() for r in by_lang["en"][j]], sort_keys=True)
        milestone("recommendation reasons", str(task), len(np.unique(tasks)), rows=len(sel))
    return Explanations(texts, features, n_reasons, n_grounded)


@dataclass(frozen=True)
class RecommendationBatch:
    rows: pa.Table  # one row per recommendation, without id / month / bundle columns (added on write)
    customers_scored: int
    customers: int  # customers with at least one recommendation
    blocked_investment_pairs: int  # (customer, investment product) pairs removed by suitability
    n_reasons: int
    n_grounded: int
    gate_profile: dict[str, dict[str, float]]  # task -> expert -> mean shared gate weight
    gate_citation: dict[str, dict]  # task -> {"cited", "reason"}: whether its reasons name an expert, and why


def recommend_month(con: duckdb.DuckDBPyConnection, store: ArtifactStore, bundle: ModelBundle,
                    month: date) -> RecommendationBatch:
    """Top-7 products per customer of ``month`` from ``bundle``'s students, with reasons (see module doc)."""
    students = load_bundle_students(store, bundle)
    from ple_platform.core.model.data import load_month
    from ple_platform.core.model.inference import predict_month

    md = load_month(con, month, labels=False)
    if md.n_rows == 0:
        raise RecommendationError(f"no customers with features at {month:%Y-%m}")
    X = md.matrix()
    preds = predict_bundle(students, X, all_columns())
    teacher = registered_teacher(con, store, bundle)
    priors = fit_priors(con, training_months(con, bundle, teacher))
    attrs = customer_attributes(con, month, md.customer_ids)
    teacher_out = predict_month(teacher.model, teacher.scaler.transform(md))
    if not np.array_equal(teacher_out.customer_ids, md.customer_ids):
        raise RecommendationError("teacher gate rows are not in the feature rows' customer order")
    gates = {t: teacher_out.shared_gates(t) for t in students}
    proven = gate_cited_tasks(bundle)
    cited = {t: g for t, g in gates.items() if t in proven}

    scores = scoring.product_scores(preds, priors)
    eligible, blocked = ranking.eligibility(attrs["suitability_profile"])
    idx, top = ranking.top_k(scores, md.holdings > 0.5, TOP_K, eligible)
    cust, rank0 = np.nonzero(idx >= 0)
    products = idx[cust, rank0]
    ex = explain(students, X, cust, products, cited)
    task_json = np.asarray(task_scores_json(preds), dtype=object)
    rows = pa.table({
        "customer_id": pa.array(md.customer_ids[cust].tolist(), pa.string()),
        "rank": pa.array(rank0 + 1, pa.int32()),
        "product": pa.array(np.asarray(PRODUCT_NAMES, dtype=object)[products].tolist(), pa.string()),
        "score": pa.array(top[cust, rank0], pa.float64()),
        "task": pa.array([scoring.task_for_product(int(p)) for p in products], pa.string()),
        "task_scores": pa.array(task_json[cust].tolist(), pa.string()),
        "reason_en": pa.array(ex.texts["en"].tolist(), pa.string()),
        "reason_ko": pa.array(ex.texts["ko"].tolist(), pa.string()),
        "reason_features": pa.array(ex.features.tolist(), pa.string()),
    })
    return RecommendationBatch(
        rows=rows, customers_scored=int(md.n_rows), customers=int(len(np.unique(cust))),
        blocked_investment_pairs=blocked, n_reasons=ex.n_reasons, n_grounded=ex.n_grounded,
        gate_profile={t: {e: float(np.mean(w)) for e, w in g.items()} for t, g in gates.items()},
        gate_citation={t: {"cited": t in cited, "reason": (bundle.routing.get(t, {}).get("gate_citation") or {}).get(
            "reason", f"{t}: the bundle records no gate-citation decision; gate weights are not cited")}
            for t in students})


def write_recommendations(con: duckdb.DuckDBPyConnection, month: date, batch: RecommendationBatch,
                          bundle: ModelBundle) -> tuple[int, str]:
    """Replace the month's rows of ``governance.recommendations``; (rows written, partition content hash)."""
    con.execute("CREATE SCHEMA IF NOT EXISTS governance")
    con.execute(_DDL)
    con.register("_recs", batch.rows)
    # Literals, not parameters (replace_partition takes plain SQL): the registry restricts versions to
    # [A-Za-z0-9._:+-] and the sha is hex, so neither can contain a quote.
    ver, sha, m = bundle.version, bundle.bundle_sha256, month.isoformat()
    try:
        n = replace_partition(con, TABLE, month, f"""
            SELECT left(sha256('{ver}|{m}|' || customer_id || '|' || CAST(rank AS VARCHAR)), 20), DATE '{m}',
                   customer_id, rank, product, score, task, task_scores, reason_en, reason_ko, reason_features,
                   '{ver}', '{sha}'
            FROM _recs""")
    finally:
        con.unregister("_recs")
    return n, partition_content_hash(con, TABLE, month)

"""The optional monthly batch rewrite: the month's stored L1 reasons through the same path as serving
(``Rewriter``: suitability -> cache -> SDK call -> gate -> judge -> L1 fallback), stored next to the L1 text.

Input: the rows of ``governance.recommendations`` of the month (EN and KO reason per row). Output: one row per
(recommendation, language) in ``governance.recommendation_rewrites`` with the text to show (L2, or L1 with the
fallback reason), the rule ids and the cache hit; the month's rows are replaced in one transaction
(``write_rewrites``), so a rerun never mixes two runs. One audit payload per verdict (``RewriteResult.audit_event`` plus month, recommendation id,
language and product; no customer id) for the caller to append. The stored rows were suitability-filtered when
they were recommended, so an investment product among them had an eligible profile.

The model calls are I/O-bound: they run on a small thread pool; the cache makes a rerun cost no calls.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import Any

import duckdb
import pyarrow as pa

from ple_platform.core.data.schema import INVESTMENT_PRODUCTS
from ple_platform.core.reasons_llm.l1 import L1Reason
from ple_platform.core.reasons_llm.rewrite import Rewriter
from ple_platform.core.recommend.monthly import LANGS
from ple_platform.core.recommend.monthly import TABLE as RECOMMENDATIONS

TABLE = "governance.recommendation_rewrites"
_DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    month DATE NOT NULL, recommendation_id VARCHAR NOT NULL, lang VARCHAR NOT NULL, product VARCHAR NOT NULL,
    l1_text VARCHAR NOT NULL, text VARCHAR NOT NULL, level VARCHAR NOT NULL, fallback VARCHAR, rule_ids VARCHAR[],
    cache_hit BOOLEAN NOT NULL, model VARCHAR NOT NULL, prompt_version VARCHAR NOT NULL, l1_hash VARCHAR NOT NULL,
    PRIMARY KEY (month, recommendation_id, lang))"""


class BatchRewriteError(ValueError):
    """The month cannot be rewritten (no recommendations stored for it, bad arguments)."""


@dataclass(frozen=True)
class BatchRewrite:
    month: date
    n: int  # reasons rewritten (rows written)
    l2: int
    cache_hits: int
    fallbacks: dict[str, int]  # L1 fallbacks by reason
    failed_by_rule: dict[str, int]
    audit_events: list[dict[str, Any]]
    rows: pa.Table  # what ``write_rewrites`` stores


def rewrite_month(rows: list[tuple], month: date, rewriter: Rewriter, *, max_rank: int | None = None,
                  langs: tuple[str, ...] = LANGS, workers: int = 4) -> BatchRewrite:
    """Rewrite ``rows`` (``stored_reasons`` of the month, ranks ``<= max_rank``); nothing is written here: the
    caller appends the audit events first and then calls ``write_rewrites`` (no stored row without its audit
    entry)."""
    unknown = sorted(set(langs) - set(LANGS))
    if unknown or not langs:
        raise BatchRewriteError(f"rewrite_month langs {list(langs)}: each must be one of {list(LANGS)}")
    if max_rank is not None and max_rank < 1:
        raise BatchRewriteError(f"rewrite_month max_rank {max_rank}: must be >= 1 (or None for every rank)")
    if not rows:
        raise BatchRewriteError(f"no recommendations stored for {month:%Y-%m} (rank <= {max_rank}): materialize "
                                "recommendations first")
    jobs = [(rid, product, lang, text) for rid, product, *texts in rows
            for lang, text in zip(langs, texts, strict=True) if text]

    def one(job: tuple[str, str, str, str]):
        _, product, lang, text = job
        profile = True if product in INVESTMENT_PRODUCTS else None  # suitability-filtered when recommended
        return rewriter.rewrite(L1Reason(product, lang, text), has_suitability_profile=profile)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, jobs))
    table = pa.table({
        "month": pa.array([month] * len(jobs), pa.date32()),
        "recommendation_id": [j[0] for j in jobs], "lang": [j[2] for j in jobs], "product": [j[1] for j in jobs],
        "l1_text": [j[3] for j in jobs], "text": [r.text for r in results], "level": [r.level for r in results],
        "fallback": pa.array([r.fallback for r in results], pa.string()),
        "rule_ids": pa.array([list(r.verdict.rule_ids) if r.verdict else [] for r in results], pa.list_(pa.string())),
        "cache_hit": [r.cache_hit for r in results], "model": [r.model for r in results],
        "prompt_version": [r.prompt_version for r in results], "l1_hash": [r.l1_hash for r in results]})
    events = [{**r.audit_event(), "month": month.isoformat(), "recommendation_id": j[0], "lang": j[2],
               "product": j[1]} for j, r in zip(jobs, results, strict=True)]
    return BatchRewrite(
        month=month, n=len(results), l2=sum(r.level == "L2" for r in results),
        cache_hits=sum(r.cache_hit for r in results),
        fallbacks=dict(Counter(r.fallback for r in results if r.fallback)),
        failed_by_rule=dict(Counter(i for r in results if r.fallback == "gate" for i in r.verdict.rule_ids)),
        audit_events=events, rows=table)


def write_rewrites(con: duckdb.DuckDBPyConnection, batch: BatchRewrite) -> int:
    """Replace the month's rows of ``TABLE`` with the batch's, in one transaction; returns the rows written."""
    con.execute(_DDL)
    con.register("_rewrites", batch.rows)
    try:
        con.execute("BEGIN")
        con.execute(f"DELETE FROM {TABLE} WHERE month = ?", [batch.month])
        con.execute(f"INSERT INTO {TABLE} SELECT * FROM _rewrites")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("_rewrites")
    return batch.rows.num_rows


def stored_reasons(con: duckdb.DuckDBPyConnection, month: date, max_rank: int | None,
                   langs: tuple[str, ...]) -> list[tuple]:
    """(recommendation_id, product, reason per lang) of the month's stored recommendations."""
    return con.execute(
        f"SELECT recommendation_id, product, {', '.join(f'reason_{lang}' for lang in langs)} FROM {RECOMMENDATIONS} "
        "WHERE month = ? AND (CAST(? AS INTEGER) IS NULL OR rank <= ?) ORDER BY recommendation_id",
        [month, max_rank, max_rank]).fetchall()

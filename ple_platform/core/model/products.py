"""From the 13 task predictions to a score for each of the 24 products (SPEC §9).

Model layer: the out-of-time teacher assessment (``model/assessment.py``) and the monthly recommendations
(``recommend/``) score products the same way.

Every product has an explicit task: the binary
``will_acquire_<group>`` task of its product group, or, for the group "other" (which has no binary task), the
``nba_primary`` class "other". The score of product p for a customer is

    score(p) = P(acquire group(p)) × share(p | group(p))

* ``P(acquire g)`` is the served probability of ``will_acquire_g`` for deposits, investments, accounts, lending
  and payments, and ``nba_primary``'s probability of class "other" (the first newly acquired product is in
  "other") for the "other" group. The latter is a *first-acquisition* probability, so "other" products are
  slightly understated relative to the binary groups; it is the only task that covers them.
* ``share(p | g)`` is fitted on training months only (``fit_product_priors``): among acquisitions (not held at t,
  held at t+1) of products of group g, the share that were product p, Laplace-smoothed
  ``(a_p + α) / (Σ_{q∈g} a_q + α·|g|)`` so every product keeps a non-zero share and shares sum to 1 per group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ple_platform.core.data.schema import (
    N_PRODUCTS,
    PRODUCT_GROUPS,
    PRODUCT_NAMES,
    PRODUCTS,
    PRODUCTS_BY_GROUP,
)
from ple_platform.core.tasks.spec import TASKS_BY_NAME

PRIORS_FORMAT_VERSION = 1
DEFAULT_ALPHA = 1.0
NBA_TASK = "nba_primary"
# Product-group index of every product, and the task that scores each group.
PRODUCT_GROUP_INDEX: np.ndarray = np.array([PRODUCT_GROUPS.index(p.group) for p in PRODUCTS], dtype=np.int64)
GROUP_TASKS: dict[str, str] = {
    g: (f"will_acquire_{g}" if f"will_acquire_{g}" in TASKS_BY_NAME else NBA_TASK) for g in PRODUCT_GROUPS
}
# nba_primary's classes are (none, *PRODUCT_GROUPS): class of group g is 1 + its index.
NBA_CLASS: dict[str, int] = {g: 1 + i for i, g in enumerate(PRODUCT_GROUPS)}


class RankingError(ValueError):
    """Bad input to the ranking functions: a missing task, a wrong shape, a value outside its range."""


def product_index(product: int | str) -> int:
    """Index of a product given by index or name."""
    if isinstance(product, (int, np.integer)) and not isinstance(product, bool):
        if 0 <= int(product) < N_PRODUCTS:
            return int(product)
        raise RankingError(f"product index {product} outside 0..{N_PRODUCTS - 1}")
    if isinstance(product, str) and product in PRODUCT_NAMES:
        return PRODUCT_NAMES.index(product)
    raise RankingError(f"unknown product {product!r}; known: {PRODUCT_NAMES}")


def task_for_product(product: int | str) -> str:
    """The task whose student scores (and therefore explains) a product."""
    return GROUP_TASKS[PRODUCTS[product_index(product)].group]


# --------------------------------------------------------------------------------------------- priors


def binary_matrix(name: str, x: Any) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] != N_PRODUCTS:
        raise RankingError(f"{name} must be (N, {N_PRODUCTS}) in schema product order, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise RankingError(f"{name} must be numeric 0/1, got dtype {a.dtype}")
    bad = ~np.isin(a, (0, 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise RankingError(f"{name} must contain only 0/1 (fill unknown holdings first); "
                           f"found {a[r, c]!r} at row {r}, product {PRODUCT_NAMES[c]!r} ({int(bad.sum())} such cells)")
    return a.astype(bool)


@dataclass(frozen=True)
class ProductPriors:
    """Within-group acquisition shares fitted on training months (see the module docstring)."""

    share_in_group: np.ndarray  # (24,) share(p | group(p)); sums to 1 within each group
    acquisitions: np.ndarray  # (24,) acquisitions counted per product
    product_rate: np.ndarray  # (24,) acquisitions / customers not holding the product at t (0 if none)
    overall_rate: float  # all acquisitions / all (customer, product) pairs not held at t
    n_rows: int
    alpha: float = DEFAULT_ALPHA

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (lists of floats keyed by product name order)."""
        return {
            "format_version": PRIORS_FORMAT_VERSION,
            "products": list(PRODUCT_NAMES),
            "share_in_group": [float(x) for x in self.share_in_group],
            "acquisitions": [int(x) for x in self.acquisitions],
            "product_rate": [float(x) for x in self.product_rate],
            "overall_rate": float(self.overall_rate),
            "n_rows": int(self.n_rows),
            "alpha": float(self.alpha),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProductPriors:
        try:
            if d["format_version"] != PRIORS_FORMAT_VERSION:
                raise RankingError(f"product priors: format_version {d['format_version']!r}, "
                                   f"expected {PRIORS_FORMAT_VERSION}")
            if list(d["products"]) != list(PRODUCT_NAMES):
                raise RankingError("product priors: product list differs from schema.PRODUCT_NAMES "
                                   "(fitted for another product catalogue)")
            out = cls(
                share_in_group=np.asarray(d["share_in_group"], dtype=np.float64),
                acquisitions=np.asarray(d["acquisitions"], dtype=np.int64),
                product_rate=np.asarray(d["product_rate"], dtype=np.float64),
                overall_rate=float(d["overall_rate"]),
                n_rows=int(d["n_rows"]),
                alpha=float(d["alpha"]),
            )
        except KeyError as e:
            raise RankingError(f"product priors: missing field {e.args[0]!r}") from None
        for name in ("share_in_group", "acquisitions", "product_rate"):
            if getattr(out, name).shape != (N_PRODUCTS,):
                raise RankingError(f"product priors: {name} must have {N_PRODUCTS} entries")
        sums = np.bincount(PRODUCT_GROUP_INDEX, weights=out.share_in_group, minlength=len(PRODUCT_GROUPS))
        if (out.share_in_group < 0).any() or not np.allclose(sums, 1.0, atol=1e-9):
            raise RankingError(f"product priors: shares must be >= 0 and sum to 1 per group, got sums {sums}")
        return out


def fit_product_priors(held_t: Any, held_t1: Any, alpha: float = DEFAULT_ALPHA) -> ProductPriors:
    """Fit ``ProductPriors`` from holdings of training months: ``held_t`` (N, 24) at t and ``held_t1`` (N, 24) at
    t+1 for the same customers in the same row order (rows of several training months may be stacked). Only these
    arrays are read; passing training months only is the caller's contract."""
    a, b = binary_matrix("held_t", held_t), binary_matrix("held_t1", held_t1)
    if a.shape != b.shape:
        raise RankingError(f"held_t {a.shape} and held_t1 {b.shape} must have the same shape (same customers)")
    if a.shape[0] == 0:
        raise RankingError("cannot fit product priors on zero rows")
    if not alpha > 0:
        raise RankingError(f"alpha (Laplace smoothing) must be > 0, got {alpha}")
    acquired = ~a & b
    acq = acquired.sum(axis=0).astype(np.int64)
    group_total = np.bincount(PRODUCT_GROUP_INDEX, weights=acq, minlength=len(PRODUCT_GROUPS))
    group_size = np.bincount(PRODUCT_GROUP_INDEX, minlength=len(PRODUCT_GROUPS))
    share = (acq + alpha) / (group_total[PRODUCT_GROUP_INDEX] + alpha * group_size[PRODUCT_GROUP_INDEX])
    at_risk = (~a).sum(axis=0)
    rate = np.divide(acq, at_risk, out=np.zeros(N_PRODUCTS), where=at_risk > 0)
    total_at_risk = int(at_risk.sum())
    overall = float(acq.sum() / total_at_risk) if total_at_risk else 0.0
    return ProductPriors(share, acq, rate, overall, int(a.shape[0]), float(alpha))


# --------------------------------------------------------------------------------------------- scores


def _probabilities(task: str, x: Any, width: int) -> np.ndarray:
    p = np.asarray(x, dtype=np.float64)
    if width == 1 and p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    expected = "(N,)" if width == 1 else f"(N, {width})"
    if (width == 1 and p.ndim != 1) or (width > 1 and (p.ndim != 2 or p.shape[1] != width)):
        raise RankingError(f"task_preds[{task!r}] must be {expected} probabilities, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise RankingError(f"task_preds[{task!r}] must be finite probabilities in [0, 1]")
    return p


def group_probabilities(task_preds: Mapping[str, Any]) -> np.ndarray:
    """(N, 6) P(acquire group g) in ``PRODUCT_GROUPS`` order, from the tasks in ``GROUP_TASKS``."""
    cols, n = [], None
    for g in PRODUCT_GROUPS:
        task = GROUP_TASKS[g]
        if task not in task_preds:
            raise RankingError(f"task_preds lacks {task!r}, needed to score the {g!r} products "
                               f"({', '.join(PRODUCTS_BY_GROUP[g])}); given: {sorted(task_preds)}")
        if task == NBA_TASK:
            col = _probabilities(task, task_preds[task], TASKS_BY_NAME[task].n_classes)[:, NBA_CLASS[g]]
        else:
            col = _probabilities(task, task_preds[task], 1)
        if n is not None and col.shape[0] != n:
            raise RankingError(f"task_preds[{task!r}] has {col.shape[0]} rows, other tasks have {n}")
        n = col.shape[0]
        cols.append(col)
    return np.stack(cols, axis=1)


def product_scores(task_preds: Mapping[str, Any], priors: ProductPriors) -> np.ndarray:
    """(N, 24) ``score(p) = P(acquire group(p)) × share(p | group(p))`` (module docstring)."""
    return group_probabilities(task_preds)[:, PRODUCT_GROUP_INDEX] * priors.share_in_group[None, :]

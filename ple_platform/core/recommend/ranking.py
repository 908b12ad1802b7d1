"""Ranking the 24 product scores of ``model/products.py`` into a top-k list, with suitability rules (SPEC §9).

``top_k`` drops held and ineligible products and sorts by score (ties: lower product index first);
``eligibility`` applies the suitability rules: investment products (``INVESTMENT_PRODUCTS``) need a suitability
profile, and "derivative" needs the "growth" profile. Unknown profile strings count as no profile (fail closed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ple_platform.core.data.schema import INVESTMENT_PRODUCTS, N_PRODUCTS, PRODUCT_NAMES, SUITABILITY_PROFILES
from ple_platform.core.model.products import RankingError, binary_matrix


# --------------------------------------------------------------------------------------------- top-k


def _bool_matrix(name: str, x: Any, n: int) -> np.ndarray:
    a = np.asarray(x)
    if a.shape != (n, N_PRODUCTS):
        raise RankingError(f"{name} must be ({n}, {N_PRODUCTS}) like scores, got shape {a.shape}")
    if a.dtype != bool:
        a = binary_matrix(name, a)
    return a


def top_k(scores: Any, held: Any, k: int = 7, eligible: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best products per customer among those not held (``held`` 0/1) and ``eligible`` (bool, default all).

    Returns ``(indices (N, k) int64, scores (N, k) float64)`` in descending score order, ties broken by lower
    product index; customers with fewer than k candidates are padded with index -1 and score NaN."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != N_PRODUCTS:
        raise RankingError(f"scores must be (N, {N_PRODUCTS}), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise RankingError("scores must be finite (no NaN/inf)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise RankingError(f"k must be a positive integer, got {k!r}")
    n = s.shape[0]
    candidate = ~_bool_matrix("held", held, n)
    if eligible is not None:
        candidate &= _bool_matrix("eligible", eligible, n)
    # Stable sort of (excluded first-key, -score): candidates before excluded, high scores first, index ties kept.
    key = np.where(candidate, -s, np.inf)
    order = np.argsort(key, axis=1, kind="stable")[:, : min(k, N_PRODUCTS)]
    ok = np.take_along_axis(candidate, order, axis=1)
    idx = np.where(ok, order, -1)
    top = np.where(ok, np.take_along_axis(s, order, axis=1), np.nan)
    if k > N_PRODUCTS:
        pad = k - N_PRODUCTS
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=np.nan)
    return idx.astype(np.int64), top


# --------------------------------------------------------------------------------------------- suitability

_INVESTMENT_MASK = np.array([p in INVESTMENT_PRODUCTS for p in PRODUCT_NAMES])
GROWTH_ONLY: frozenset[str] = frozenset({"derivative"})
_GROWTH_ONLY_MASK = np.array([p in GROWTH_ONLY for p in PRODUCT_NAMES])


def eligibility(suitability_profile: Sequence[str | None] | np.ndarray) -> tuple[np.ndarray, int]:
    """(N, 24) bool eligibility from each customer's suitability profile, and the number of blocked
    (customer, product) pairs. Investment products need a profile in ``SUITABILITY_PROFILES`` (None, NaN and
    unknown strings count as none); "derivative" needs "growth"."""
    prof = np.asarray(suitability_profile, dtype=object)
    if prof.ndim != 1:
        raise RankingError(f"suitability_profile must be 1-D (one entry per customer), got shape {prof.shape}")
    # Elementwise == on objects: None / NaN / other types simply compare unequal.
    has = np.zeros(prof.shape[0], dtype=bool)
    for level in SUITABILITY_PROFILES:  # 3 vectorised comparisons, not a loop over customers
        has |= prof == level
    growth = prof == "growth"
    mask = np.ones((prof.shape[0], N_PRODUCTS), dtype=bool)
    mask[:, _INVESTMENT_MASK] = has[:, None]
    mask[:, _GROWTH_ONLY_MASK] = growth[:, None]
    return mask, int((~mask).sum())

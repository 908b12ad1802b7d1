"""Per-customer persistent homology: feature groups ``tda_global`` and ``tda_local`` (SPEC §4 rows 5-6).

Both groups are computed from each customer's *own* data, never from a population point cloud (the reference
broadcast one population diagram to every row, and its local variant was all zeros):

* ``tda_global``: Vietoris-Rips persistence of the customer's (up to 12) valid monthly behaviour vectors,
  H0 and H1 x the 8 ``TDA_STATS``.
* ``tda_local``: cubical persistence of the customer's last 90 days of daily spend: sublevel H0 x 8 stats,
  superlevel H0 (persistence of ``-x``) summaries, and persistence-landscape summaries of the sublevel diagram.

Conventions (shared by every function here):

* **Essential bars.** The one infinite H0 bar (the component that never dies) is *capped at the maximum
  filtration value of the complex*: the point cloud's diameter for Rips, the series maximum for sublevel cubical
  persistence (``-min`` for superlevel). It is kept in the stats and the stored diagram, so ``count`` includes the
  essential class and a one-point cloud or a constant series has one bar of length 0. Rips H1 has no essential
  bars (the full 2-skeleton is contractible). Nothing here ever emits ``inf`` or ``NaN``.
* **Zero-length bars** (ties, duplicated months) are dropped by gudhi, except the capped essential bar.
* **Empty input** (no valid month) gives an empty diagram and all-zero stats.
* Stats use population std (ddof=0); entropy is ``-sum p log p`` with ``p = life / sum(life)``, 0 when the
  total persistence is 0.
* **Diagrams** come back in long format, one row per bar, finite values only:
  ``{"customer": int64 row index into the input, "kind": "global"|"local", "dim": int8, "birth", "death"}``;
  rows are grouped by customer in input order. Only the sublevel diagram is stored for ``local``.

Inputs are used as given: put features on comparable scales before calling (e.g. ``log1p`` for amounts and a
scaler fitted on training months, see :func:`fit_point_scaler`).
"""

from __future__ import annotations

import gudhi
import numpy as np

from ple_platform.core.features.spec import FEATURE_GROUPS_BY_NAME, TDA_STATS

TDA_GLOBAL_COLUMNS = FEATURE_GROUPS_BY_NAME["tda_global"].columns
TDA_LOCAL_COLUMNS = FEATURE_GROUPS_BY_NAME["tda_local"].columns
N_STATS = len(TDA_STATS)
DIAGRAM_KEYS = ("customer", "kind", "dim", "birth", "death")

# Memory budget (float64 elements) for one chunk of the vectorised distance and landscape computations.
_CHUNK_ELEMENTS = 4_000_000


# ----------------------------------------------------------------------------------------------------------
# Diagram statistics
# ----------------------------------------------------------------------------------------------------------


def _grouped_stats(group: np.ndarray, births: np.ndarray, deaths: np.ndarray, n_groups: int) -> np.ndarray:
    """The 8 TDA_STATS of many diagrams at once (bars tagged by ``group``): (n_groups, 8); empty -> zeros.

    Vectorised with bincount so the per-customer loop only has to call gudhi; each group's sums run over its
    own bars in their order, so a customer's stats do not depend on which other customers are in the batch.
    """
    life = deaths - births
    count = np.bincount(group, minlength=n_groups).astype(np.float64)
    safe = np.maximum(count, 1.0)
    total = np.bincount(group, weights=life, minlength=n_groups)
    mean = total / safe
    max_life = np.zeros(n_groups)
    np.maximum.at(max_life, group, life)  # lifetimes are >= 0, so 0 is the right identity for empty groups
    std = np.sqrt(np.bincount(group, weights=(life - mean[group]) ** 2, minlength=n_groups) / safe)
    tot_g = total[group]
    p = np.divide(life, tot_g, out=np.zeros_like(life), where=tot_g > 0)
    plogp = np.zeros_like(p)
    np.multiply(p, np.log(p, out=np.zeros_like(p), where=p > 0), out=plogp, where=p > 0)
    entropy = -np.bincount(group, weights=plogp, minlength=n_groups)
    mean_birth = np.bincount(group, weights=births, minlength=n_groups) / safe
    mean_death = np.bincount(group, weights=deaths, minlength=n_groups) / safe
    out = np.stack([count, mean, max_life, std, entropy, total, mean_birth, mean_death], axis=1)
    return out + 0.0  # turn -0.0 (negated empty entropy) into 0.0


def diagram_stats(births: np.ndarray, deaths: np.ndarray, cap: float | None = None) -> np.ndarray:
    """The 8 TDA_STATS of one diagram, in ``TDA_STATS`` order; an empty diagram gives zeros.

    Infinite deaths are replaced by ``cap``, or, when ``cap`` is None, by the largest finite value in the
    diagram (the max filtration value seen), so the result is always finite.
    """
    b = np.asarray(births, dtype=np.float64).ravel()
    d = np.asarray(deaths, dtype=np.float64).ravel()
    if b.shape != d.shape:
        raise ValueError(f"births {b.shape} and deaths {d.shape} differ in length")
    if np.isnan(b).any() or np.isnan(d).any() or not np.isfinite(b).all():
        raise ValueError("births must be finite and deaths finite or +inf")
    inf = np.isinf(d)
    if inf.any():
        if cap is None:
            finite = np.concatenate([b, d[~inf]])
            cap = float(finite.max())
        d = np.where(inf, max(float(cap), float(b[inf].max())), d)
    return _grouped_stats(np.zeros(b.size, dtype=np.int64), b, d, 1)[0]


# ----------------------------------------------------------------------------------------------------------
# Persistence landscapes (exact)
# ----------------------------------------------------------------------------------------------------------


def _landscape_block(b: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Exact max and L1 norm of landscapes 1 and 2 for m diagrams of n bars each: b, d (m, n) -> (m, 4).

    Uses the rank-function form of the landscape, ``lambda_k(t) = sup{h >= 0 : N(t-h, t+h) >= k}`` with
    ``N(x, y) = #{i : b_i <= x, d_i >= y}``. Substituting x = t-h, y = t+h (dt dh = dx dy / 2) gives
    ``||lambda_k||_1 = area{x <= y : N(x, y) >= k} / 2`` and ``max lambda_k = max{y - x : N >= k} / 2``.
    N is constant on the n x n grid cells cut by the sorted births and deaths, so both are exact sums over
    cells: O(n^2) per diagram, no sampling grid and no resolution parameter.
    """
    m, n = b.shape
    order = np.argsort(b, axis=1, kind="stable")
    bs = np.take_along_axis(b, order, axis=1)
    d_by_birth = np.take_along_axis(d, order, axis=1)
    ds = np.sort(d, axis=1)
    # cover[p, q] = #{bars among the p+1 earliest births with death >= ds[q]}; with tied births only the last
    # tie has the full count, but the earlier ones sit on zero-width cells and never win the max.
    cover = np.cumsum(d_by_birth[:, :, None] >= ds[:, None, :], axis=1, dtype=np.int32)
    x0 = bs[:, :, None]
    x1 = np.concatenate([bs[:, 1:], np.full((m, 1), np.inf)], axis=1)[:, :, None]
    y0 = np.concatenate([np.full((m, 1), -np.inf), ds[:, :-1]], axis=1)[:, None, :]
    y1 = ds[:, None, :]
    # Area of the cell [x0, x1] x [y0, y1] below the diagonal constraint x <= y.
    xr = np.minimum(x1, y1)
    a = np.maximum(y0, x0)
    flat = (y1 - a) * np.clip(np.minimum(xr, a) - x0, 0.0, None)  # x < a: full height y1 - a
    u = np.maximum(x0, a)
    slope = np.where(xr > u, ((y1 - u) ** 2 - (y1 - xr) ** 2) * 0.5, 0.0)  # x >= a: height y1 - x
    area = np.where(y1 > a, flat + slope, 0.0)
    span = np.maximum(y1 - x0, 0.0)
    out = np.empty((m, 4))
    for j, k in enumerate((1, 2)):
        hit = cover >= k
        out[:, 2 * j] = 0.5 * np.where(hit, span, 0.0).max(axis=(1, 2))
        out[:, 2 * j + 1] = 0.5 * np.where(hit, area, 0.0).sum(axis=(1, 2))
    return out


def _grouped_landscapes(group: np.ndarray, births: np.ndarray, deaths: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, 4) = [land1_max, land1_l1, land2_max, land2_l1] of finite bars tagged by ``group``.

    Customers are bucketed by bar count so blocks need no padding; blocks are sized by a memory budget.
    """
    out = np.zeros((n_groups, 4))
    if births.size == 0:
        return out
    order = np.argsort(group, kind="stable")
    g, b, d = group[order], births[order], deaths[order]
    counts = np.bincount(g, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for n in np.unique(counts[counts > 0]):
        cust = np.flatnonzero(counts == n)
        idx = starts[cust][:, None] + np.arange(n)[None, :]
        per_row = n * n * 16
        step = max(1, _CHUNK_ELEMENTS // per_row)
        for lo in range(0, cust.size, step):
            sl = slice(lo, lo + step)
            out[cust[sl]] = _landscape_block(b[idx[sl]], d[idx[sl]])
    return out


def landscape_summaries(births: np.ndarray, deaths: np.ndarray) -> np.ndarray:
    """[land1_max, land1_l1, land2_max, land2_l1] of one diagram of finite bars (exact, see _landscape_block)."""
    b = np.asarray(births, dtype=np.float64).ravel()
    d = np.asarray(deaths, dtype=np.float64).ravel()
    if not (np.isfinite(b).all() and np.isfinite(d).all()):
        raise ValueError("landscapes need finite bars; drop or cap essential bars first")
    return _grouped_landscapes(np.zeros(b.size, dtype=np.int64), b, d, 1)[0]


# ----------------------------------------------------------------------------------------------------------
# Diagram containers
# ----------------------------------------------------------------------------------------------------------


def _diagrams(customer: np.ndarray, kind: str, dim: np.ndarray, birth: np.ndarray, death: np.ndarray) -> dict:
    return {
        "customer": np.asarray(customer, dtype=np.int64),
        "kind": np.full(len(customer), kind, dtype="<U6"),
        "dim": np.asarray(dim, dtype=np.int8),
        "birth": np.asarray(birth, dtype=np.float64),
        "death": np.asarray(death, dtype=np.float64),
    }


def concat_diagrams(*diagrams: dict) -> dict:
    """Concatenate long-format diagram dicts (e.g. global + local into one table)."""
    if not diagrams:
        return _diagrams(np.zeros(0), "global", np.zeros(0), np.zeros(0), np.zeros(0))
    return {k: np.concatenate([dg[k] for dg in diagrams]) for k in DIAGRAM_KEYS}


# ----------------------------------------------------------------------------------------------------------
# tda_global: Vietoris-Rips of the customer's own monthly vectors
# ----------------------------------------------------------------------------------------------------------


def fit_point_scaler(points: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of the valid monthly vectors (fit on training months; std 0 -> 1)."""
    x = np.asarray(points, dtype=np.float64)[np.asarray(valid, dtype=bool)]
    if x.size == 0:
        return np.zeros(points.shape[-1]), np.ones(points.shape[-1])
    std = x.std(axis=0)
    return x.mean(axis=0), np.where(std > 0, std, 1.0)


def _check_points(points: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(points, dtype=np.float64)
    v = np.asarray(valid, dtype=bool)
    if p.ndim != 3 or v.shape != p.shape[:2]:
        raise ValueError(f"points must be (N, T, D) and valid (N, T); got {p.shape} and {v.shape}")
    if not np.isfinite(p[v]).all():
        raise ValueError("points must be finite at valid months")
    return p, v


def tda_global_features(points: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, dict]:
    """Rips persistence of each customer's valid monthly behaviour vectors -> ((N, 16) stats, diagrams).

    ``points`` (N, T, D) float64, ``valid`` (N, T) bool (invalid months may hold anything, even NaN). Columns
    follow ``TDA_GLOBAL_COLUMNS`` (H0 x 8 stats, then H1 x 8 stats). The H0 essential bar is [0, diameter].
    """
    p, v = _check_points(points, valid)
    n_cust, t_len, _ = p.shape
    # Move each customer's valid months to the front (stable, so month order is kept): then customer i's cloud
    # is the slice [:n_i] and the loop below does no fancy indexing.
    order = np.argsort(~v, axis=1, kind="stable")
    p = np.take_along_axis(p, order[:, :, None], axis=1)
    n_valid = v.sum(axis=1)
    p = np.where((np.arange(t_len)[None, :] < n_valid[:, None])[:, :, None], p, 0.0)

    # Pairwise distances for all customers at once; gudhi gets them as a distance matrix so the diameter used
    # to cap the essential bar is exactly the largest edge gudhi saw.
    dist = np.empty((n_cust, t_len, t_len))
    step = max(1, _CHUNK_ELEMENTS // (t_len * t_len * p.shape[2]))
    for lo in range(0, n_cust, step):
        blk = p[lo : lo + step]
        dist[lo : lo + step] = np.sqrt(((blk[:, :, None, :] - blk[:, None, :, :]) ** 2).sum(axis=-1))
    mask2 = (np.arange(t_len)[None, :] < n_valid[:, None])[:, :, None] & (
        np.arange(t_len)[None, :] < n_valid[:, None]
    )[:, None, :]
    diameter = np.where(mask2, dist, 0.0).max(axis=(1, 2))

    # gudhi has no batch API: one small Rips complex per customer is the unavoidable row loop (~60 us each on a
    # 12-point cloud). Kept minimal: no per-row numpy beyond slicing; stats are computed vectorised afterwards.
    # Parallelism does not pay here: 2 threads measured no faster (gudhi holds the GIL for most of each small
    # call), and a process pool could at best halve ~1 s per 10k customers on 2 cores shared with other work.
    cust_l, dim_l, birth_l, death_l = [], [], [], []
    for i in range(n_cust):
        k = int(n_valid[i])
        if k == 0:
            continue
        if k >= 2:
            st = gudhi.RipsComplex(distance_matrix=dist[i, :k, :k]).create_simplex_tree(max_dimension=2)
            st.compute_persistence()
            for dim in (0, 1):
                bars = st.persistence_intervals_in_dimension(dim)
                bars = bars[np.isfinite(bars[:, 1])] if bars.size else bars
                if bars.size:
                    cust_l.append(np.full(len(bars), i))
                    dim_l.append(np.full(len(bars), dim))
                    birth_l.append(bars[:, 0])
                    death_l.append(bars[:, 1])
        # The essential H0 class, capped at the diameter (gudhi returns nothing at all for a single vertex).
        cust_l.append(np.array([i]))
        dim_l.append(np.array([0]))
        birth_l.append(np.array([0.0]))
        death_l.append(np.array([diameter[i]]))

    if cust_l:
        cust, dim = np.concatenate(cust_l), np.concatenate(dim_l)
        birth, death = np.concatenate(birth_l), np.concatenate(death_l)
        srt = np.lexsort((dim, cust))  # group rows by customer, H0 before H1
        cust, dim, birth, death = cust[srt], dim[srt], birth[srt], death[srt]
    else:
        cust = dim = np.zeros(0, dtype=np.int64)
        birth = death = np.zeros(0)

    stats = np.zeros((n_cust, 2 * N_STATS))
    for d_ in (0, 1):
        sel = dim == d_
        stats[:, d_ * N_STATS : (d_ + 1) * N_STATS] = _grouped_stats(cust[sel], birth[sel], death[sel], n_cust)
    return stats, _diagrams(cust, "global", dim, birth, death)


# ----------------------------------------------------------------------------------------------------------
# tda_local: cubical persistence of the customer's daily spend series
# ----------------------------------------------------------------------------------------------------------


def _cubical_h0(series: np.ndarray) -> np.ndarray:
    """Finite H0 bars (k, 2) of the sublevel filtration of one 1-D series, plus the essential bar capped at max."""
    cc = gudhi.CubicalComplex(top_dimensional_cells=series)
    cc.compute_persistence()
    bars = cc.persistence_intervals_in_dimension(0)
    fin = bars[np.isfinite(bars[:, 1])]
    # A 1-D series is connected: exactly one essential class, born at the global minimum.
    return np.concatenate([fin, [[series.min(), series.max()]]], axis=0)


def tda_local_features(daily: np.ndarray) -> tuple[np.ndarray, dict]:
    """Cubical persistence of each customer's daily spend series (N, 90) -> ((N, 16) stats, diagrams).

    Columns follow ``TDA_LOCAL_COLUMNS``: sublevel H0 x 8 stats; superlevel H0 (sublevel of ``-x``) count,
    max life, total persistence, entropy; landscapes 1 and 2 of the sublevel H0 diagram (max, L1 norm).
    Sublevel bars are born at local minima (spend troughs) and die when a trough merges into a deeper one;
    superlevel bars do the same for spend peaks. Essential bars are capped at the series max (resp. ``-min``)
    and counted in the stats; the landscapes use the finite bars only, since the capped essential bar would
    make landscape 1 a copy of the series range. An all-zero (or constant) series gives one zero-length bar in
    each direction: counts 1, everything else 0. Only the sublevel diagram is returned (kind "local", dim 0).
    """
    x = np.asarray(daily, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"daily must be (N, days); got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("daily series must be finite (fill days without spend with 0)")
    n_cust = x.shape[0]
    if x.shape[1] == 0:
        return np.zeros((n_cust, len(TDA_LOCAL_COLUMNS))), concat_diagrams()

    # Per-customer gudhi calls are the unavoidable row loop (no batch API); everything else is vectorised.
    sub_l, sup_l = [], []
    for i in range(n_cust):
        sub_l.append(_cubical_h0(x[i]))
        sup_l.append(_cubical_h0(-x[i]))
    n_sub = np.fromiter((len(a) for a in sub_l), dtype=np.int64, count=n_cust)
    n_sup = np.fromiter((len(a) for a in sup_l), dtype=np.int64, count=n_cust)
    sub, sup = np.concatenate(sub_l), np.concatenate(sup_l)
    g_sub = np.repeat(np.arange(n_cust), n_sub)
    g_sup = np.repeat(np.arange(n_cust), n_sup)

    h0 = _grouped_stats(g_sub, sub[:, 0], sub[:, 1], n_cust)
    sup_stats = _grouped_stats(g_sup, sup[:, 0], sup[:, 1], n_cust)
    si = {s: j for j, s in enumerate(TDA_STATS)}
    sup_cols = sup_stats[:, [si["count"], si["max_life"], si["total_pers"], si["entropy"]]]
    # The essential bar is the last row of each customer's block: drop it for the landscapes.
    is_ess = np.zeros(len(sub), dtype=bool)
    is_ess[np.cumsum(n_sub) - 1] = True
    land = _grouped_landscapes(g_sub[~is_ess], sub[~is_ess, 0], sub[~is_ess, 1], n_cust)

    stats = np.concatenate([h0, sup_cols, land], axis=1)
    return stats, _diagrams(g_sub, "local", np.zeros(len(sub)), sub[:, 0], sub[:, 1])

"""Merchant peers: the customer–merchant–customer graph of month t and peers' product signals (groups 9 and 11).

Two customers are *merchant peers* when both paid at the same merchant in the ``PEER_WINDOW_DAYS`` days ending at
the snapshot (transactions of months <= t only). The peer weight ``A[i, j]`` is the number of merchants they share
(self excluded, ``A[i, i] = 0``). A merchant visited by more than ``PEER_MAX_MERCHANT_DEGREE`` distinct customers of
the snapshot is a hub (a supermarket chain links everyone to everyone and says nothing about a community) and is
ignored; a merchant with one customer links no one.

``A`` is never materialised: with B the (customer x kept merchant) 0/1 incidence, ``A = B B^T - diag(B B^T)``, so
``A @ x = B (B^T x) - d * x`` (d = the customer's number of kept merchants). Memory and time are linear in the
number of (customer, merchant) pairs of the window, not in the number of peer pairs (3.3M for 4.9k customers of
the synthetic bank; a 1M-customer bank would have billions). One DuckDB query for the pairs, then two sparse
products per aggregation; no loop over customers.
"""

from __future__ import annotations

import duckdb
import numpy as np
import scipy.sparse as sp

from ple_platform.core.data.schema import PRODUCT_GROUPS, PRODUCTS, PRODUCT_NAMES, add_months
from ple_platform.core.features.panel import Population, month_end, register_population

PEER_WINDOW_DAYS = 90
PEER_MAX_MERCHANT_DEGREE = 50
# Strong ties: two customers sharing >= STRONG_MIN_SHARED small merchants (<= STRONG_MAX_MERCHANT_DEGREE customers
# each). One shared merchant is mostly a confound (similar customers shop alike); a second small one is a tie.
STRONG_MIN_SHARED = 2
STRONG_MAX_MERCHANT_DEGREE = 12
# (24, 6) 0/1: product -> its task product group (the order of PRODUCT_GROUPS).
GROUP_OF_PRODUCT = np.asarray([[p.group == g for g in PRODUCT_GROUPS] for p in PRODUCTS], dtype=np.float64)


class PeerGraph:
    """The merchant-peer weights A (N x N) as the incidence B; ``graph @ x`` = A @ x for x (N,) or (N, k)."""

    def __init__(self, incidence: sp.csr_matrix):
        self.b = incidence.tocsr()
        self.bt = self.b.T.tocsr()
        self.self_weight = np.asarray(self.b.sum(axis=1), dtype=np.float64).reshape(-1)  # diag(B B^T)
        self.shape = (self.b.shape[0], self.b.shape[0])

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape[0] != self.shape[0]:
            raise ValueError(f"PeerGraph @ x: x has {x.shape[0]} rows, the graph {self.shape[0]} customers")
        out = np.asarray(self.b @ (self.bt @ x))
        return out - (self.self_weight if x.ndim == 1 else self.self_weight[:, None]) * x

    def weight(self) -> np.ndarray:
        """(N,) total peer weight sum_j A[i, j]: shared merchants summed over all peers."""
        return self @ np.ones(self.shape[0])

    def to_csr(self) -> sp.csr_matrix:
        """A explicitly (quadratic in the peers: small populations and tests only)."""
        a = (self.b @ self.bt).tocsr()
        a.setdiag(0.0)
        a.eliminate_zeros()
        a.sort_indices()
        return a


def merchant_peer_graph(
    con: duckdb.DuckDBPyConnection,
    pop: Population,
    days: int = PEER_WINDOW_DAYS,
    max_merchant_degree: int = PEER_MAX_MERCHANT_DEGREE,
) -> PeerGraph:
    """A[i, j] = merchants shared by customers i and j in the ``days`` days ending at t (see ``PeerGraph``).

    Only customers of ``pop`` (the month-t snapshot) and their transactions of months t - (days // 28 + 1) .. t with
    ``ts >= snapshot end - days`` are read. Merchants with more than ``max_merchant_degree`` distinct customers in
    that window are dropped as hubs. Rows/columns follow ``pop`` order; the diagonal is zero.
    """
    if days <= 0 or max_merchant_degree < 2:
        raise ValueError(f"merchant_peer_graph: days={days} must be > 0 and max_merchant_degree={max_merchant_degree} >= 2")
    register_population(con, pop)
    end = month_end(pop.month)
    rows = con.execute(
        f"""
        WITH cm AS (
            SELECT DISTINCT pop.idx, t.merchant_id
            FROM raw.transactions t JOIN pop USING (customer_id)
            WHERE t.month BETWEEN ? AND ? AND t.ts >= ?::TIMESTAMP - INTERVAL {int(days)} DAY
        ), kept AS (
            SELECT merchant_id FROM cm GROUP BY merchant_id HAVING count(*) BETWEEN 2 AND ?
        )
        SELECT cm.idx, dense_rank() OVER (ORDER BY cm.merchant_id) - 1 AS m
        FROM cm JOIN kept USING (merchant_id)
        """,
        [add_months(pop.month, -(days // 28 + 1)), pop.month, end, int(max_merchant_degree)],
    ).fetchnumpy()
    n = len(pop)
    cust = np.asarray(rows["idx"], dtype=np.int64)
    merch = np.asarray(rows["m"], dtype=np.int64)
    order = np.lexsort((merch, cust))  # canonical entry order: sums do not depend on the query's row order
    n_m = int(merch.max()) + 1 if len(merch) else 0
    return PeerGraph(sp.csr_matrix((np.ones(len(cust)), (cust[order], merch[order])), shape=(n, n_m)))


def _holdings_two_months(con: duckdb.DuckDBPyConnection, pop: Population) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(held at t (N, 24), held at t-1 (N, 24), present at t-1 (N,)); NULL flags count as not held."""
    register_population(con, pop)
    prev = add_months(pop.month, -1)
    cols = ", ".join(f'coalesce(h."{p}", 0) AS p{i:02d}' for i, p in enumerate(PRODUCT_NAMES))
    rows = con.execute(
        f"SELECT pop.idx, h.month = ? AS is_t, {cols} FROM pop JOIN raw.holdings h USING (customer_id) WHERE h.month IN (?, ?)",
        [pop.month, pop.month, prev],
    ).fetchnumpy()
    n = len(pop)
    now, before, present = np.zeros((n, len(PRODUCT_NAMES))), np.zeros((n, len(PRODUCT_NAMES))), np.zeros(n, dtype=bool)
    idx, is_t = np.asarray(rows["idx"], dtype=np.int64), np.asarray(rows["is_t"], dtype=bool)
    flags = np.stack([np.asarray(rows[f"p{i:02d}"], dtype=np.float64) for i in range(len(PRODUCT_NAMES))], axis=1)
    now[idx[is_t]] = flags[is_t]
    before[idx[~is_t]] = flags[~is_t]
    present[idx[~is_t]] = True
    return now, before, present


def strong_tie_graph(
    con: duckdb.DuckDBPyConnection,
    pop: Population,
    days: int = PEER_WINDOW_DAYS,
    max_merchant_degree: int = STRONG_MAX_MERCHANT_DEGREE,
    min_shared: int = STRONG_MIN_SHARED,
) -> sp.csr_matrix:
    """(N, N) 0/1 strong ties: customers sharing >= ``min_shared`` merchants of <= ``max_merchant_degree`` customers.

    Materialised as B B^T: a merchant of degree d adds d^2 entries, so nnz <= max_merchant_degree x the
    (customer, merchant) pairs of the window -- linear in the pairs for a fixed cap.
    """
    if min_shared < 1:
        raise ValueError(f"strong_tie_graph: min_shared={min_shared} must be >= 1")
    a = merchant_peer_graph(con, pop, days, max_merchant_degree).to_csr()
    a.data = (a.data >= min_shared).astype(np.float64)
    a.eliminate_zeros()
    return a


def product_holdings_and_acquisitions(con: duckdb.DuckDBPyConnection, pop: Population) -> tuple[np.ndarray, np.ndarray]:
    """(N, 24) each: holds the product at t; acquired it in the t-1 -> t transition (0 if absent at t-1)."""
    now, before, present = _holdings_two_months(con, pop)
    return (now > 0).astype(np.float64), ((now > 0) & (before == 0) & present[:, None]).astype(np.float64)


def strong_peer_acquisitions(strong: sp.csr_matrix, held: np.ndarray, acquired: np.ndarray) -> np.ndarray:
    """(N, 6) per product group: strong-tie peers' acquisitions (t-1 -> t) of products of the group that the
    customer does NOT hold at t, per strong peer (0 without strong peers). Matching the product, not the group,
    is what separates peer influence from "peers like me hold that group" (``spec.STRONG_PEER_COLUMNS``)."""
    if held.shape != acquired.shape or held.shape != (strong.shape[0], len(PRODUCTS)):
        raise ValueError(f"strong_peer_acquisitions: held {held.shape} / acquired {acquired.shape} must be (N={strong.shape[0]}, 24)")
    n_peers = np.asarray(strong.sum(axis=1), dtype=np.float64).reshape(-1)
    per_group = (np.asarray(strong @ acquired) * (held == 0)) @ GROUP_OF_PRODUCT
    return np.divide(per_group, n_peers[:, None], out=np.zeros_like(per_group), where=n_peers[:, None] > 0)


def group_holdings_and_acquisitions(con: duckdb.DuckDBPyConnection, pop: Population) -> tuple[np.ndarray, np.ndarray]:
    """(N, 6) each: holds any product of the group at t; acquired a product of the group in the t-1 -> t transition.

    A customer absent from the t-1 snapshot has no measurable transition: acquisitions 0 (as in ``derived_temporal``).
    """
    now, before, present = _holdings_two_months(con, pop)
    held = (now @ GROUP_OF_PRODUCT > 0).astype(np.float64)
    new = (now > 0) & (before == 0) & present[:, None]
    acquired = (new.astype(np.float64) @ GROUP_OF_PRODUCT > 0).astype(np.float64)
    return held, acquired


def peer_average(a: PeerGraph, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peer-weighted mean of ``values`` (N, k) over each customer's peers, and the total peer weight (N,).

    Row i = sum_j A[i, j] values[j] / sum_j A[i, j]; customers without peers get 0 (and weight 0 tells them apart).
    """
    w = a.weight()
    num = a @ values
    return np.divide(num, w[:, None], out=np.zeros_like(num), where=w[:, None] > 0), w


def peer_product_signals(a: PeerGraph, held: np.ndarray, acquired: np.ndarray) -> np.ndarray:
    """(N, 13) in the order of ``spec.PEER_SIGNAL_COLUMNS``: peers' share holding each product group at t (6),
    their share that acquired one in the t-1 -> t transition (6), log(1 + total peer weight) (1)."""
    peer_held, w = peer_average(a, held)
    peer_acq, _ = peer_average(a, acquired)
    return np.concatenate([peer_held, peer_acq, np.log1p(w)[:, None]], axis=1)

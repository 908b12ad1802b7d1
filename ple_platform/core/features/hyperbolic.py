"""Poincaré-ball embeddings of the two taxonomies and the customer features built on them (groups 9 and 10).

* ``fit_poincare_tree`` — Nickel & Kiela (2017): every node is a point of the unit Poincaré ball (curvature -1,
  geoopt ``PoincareBall``) stored as a geoopt ``ManifoldParameter`` and moved by ``RiemannianAdam``; the loss is a
  softmax over negative hyperbolic distances that ranks every ancestor/descendant pair of the transitive closure above
  sampled unrelated nodes. Every node, L2 siblings included, gets its own learned point (the reference project put all
  L2s of an L1 on one spot and had no manifold optimisation at all).
* ``einstein_midpoint`` — weighted Fréchet-style centre used for customers: map to the Klein model, average with
  Lorentz factors, map back. Exact for one point, symmetric in the points, stays inside the ball.
* ``product_hierarchy_features`` / ``product_hierarchy_history_features`` / ``merchant_hierarchy_features`` — pure
  numpy/scipy.sparse over whole populations; no loop over customers or transactions.

All hyperbolic quantities use curvature c = 1 (ball of radius 1).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from ple_platform.core.data.taxonomy import MccHierarchy, Tree

RECENCY_TAU_DAYS = 60.0
# Points are kept at least this far inside the unit sphere so Lorentz factors and artanh stay finite.
_BALL_EPS = 1e-7


# ----------------------------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------------------------


def transitive_closure(tree: Tree) -> np.ndarray:
    """(n_pairs, 2) array of every (descendant, proper ancestor) pair of ``tree`` (root included as an ancestor)."""
    pairs = []
    node = np.arange(tree.n_nodes)
    anc = tree.parent.copy()
    # Walk all nodes up one level at a time: depth(tree) vectorised steps instead of a per-node walk.
    while True:
        live = anc >= 0
        if not live.any():
            break
        pairs.append(np.stack([node[live], anc[live]], axis=1))
        anc = np.where(live, tree.parent[np.maximum(anc, 0)], -1)
    return np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), dtype=np.int64)


def _related_mask(tree: Tree) -> np.ndarray:
    """Boolean (n, n): True where i == j or one is an ancestor of the other (the closure, symmetrised)."""
    pairs = transitive_closure(tree)
    rel = np.eye(tree.n_nodes, dtype=bool)
    rel[pairs[:, 0], pairs[:, 1]] = True
    rel[pairs[:, 1], pairs[:, 0]] = True
    return rel


def reconstruction_metrics(tree: Tree, emb: np.ndarray) -> dict[str, float]:
    """Nickel & Kiela reconstruction scores of an embedding against the tree's symmetrised transitive closure.

    ``mean_rank``: for each related pair (u, v), 1 + the number of nodes unrelated to u that are strictly closer to u
    than v is (1.0 is perfect). ``map``: mean over nodes of the average precision of ranking all other nodes by
    distance with the related nodes as the relevant set. ``depth_norm_spearman``: rank correlation between tree depth
    and distance to the origin (hierarchy should map to radius).
    """
    dist = poincare_distance(emb[:, None, :], emb[None, :, :])
    rel = _related_mask(tree)
    n = tree.n_nodes
    off = ~np.eye(n, dtype=bool)
    pos = rel & off
    unrel = ~rel
    # rank of each positive among the unrelated nodes of its row: count unrelated closer (vectorised over pairs).
    u, v = np.nonzero(pos)
    d_pos = dist[u, v]
    closer = (dist[u] < d_pos[:, None]) & unrel[u]
    ranks = 1.0 + closer.sum(axis=1)
    # average precision per row: sort the row (self excluded) by distance, precision at each relevant hit.
    d_off = np.where(off, dist, np.inf)
    order = np.argsort(d_off, axis=1, kind="stable")[:, : n - 1]
    hits = np.take_along_axis(pos, order, axis=1)
    cum_hits = np.cumsum(hits, axis=1)
    prec = cum_hits / np.arange(1, n)[None, :]
    n_rel = hits.sum(axis=1)
    has = n_rel > 0
    ap = (prec * hits).sum(axis=1)[has] / n_rel[has]
    norms = np.linalg.norm(emb, axis=1)
    rd = np.argsort(np.argsort(tree.depth, kind="stable"), kind="stable").astype(float)
    rn = np.argsort(np.argsort(norms, kind="stable"), kind="stable").astype(float)
    spearman = float(np.corrcoef(rd, rn)[0, 1]) if n > 2 else float("nan")
    return {
        "mean_rank": float(ranks.mean()) if len(ranks) else float("nan"),
        "map": float(ap.mean()) if has.any() else float("nan"),
        "depth_norm_spearman": spearman,
    }


def _torch_poincare_dist(x, y):
    """arcosh form of the unit-ball distance; same value as ``PoincareBall(c=1).dist`` but a much cheaper graph
    to differentiate than geoopt's Möbius-addition form (the fit is dominated by this backward pass)."""
    import torch

    sq = (x - y).pow(2).sum(-1)
    den = (1 - x.pow(2).sum(-1)).clamp_min(1e-15) * (1 - y.pow(2).sum(-1)).clamp_min(1e-15)
    z = 1 + 2 * sq / den
    # arcosh(z) = log(z + sqrt(z^2 - 1)); clamp keeps the gradient finite when x == y.
    return torch.log(z + torch.sqrt((z * z - 1).clamp_min(1e-15)))


def fit_poincare_tree(
    tree: Tree,
    dim: int,
    epochs: int = 600,
    seed: int = 0,
    *,
    n_negatives: int = 50,
    lr: float = 0.1,
    burn_in: int = 20,
    init_scale: float = 1e-3,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Embed ``tree`` in the ``dim``-dimensional Poincaré ball (Nickel & Kiela 2017) with geoopt.

    Each epoch is one full-batch step over every (descendant, ancestor) pair of the transitive closure, taken in both
    directions. For a pair (u, v) the loss is ``-log softmax(-d(u, ·))[v]`` over v and ``n_negatives`` nodes sampled
    uniformly; sampled nodes that are related to u (itself, an ancestor or a descendant) are masked out, which is the
    paper's N(u) = {v' : (u, v') not in the closure}. The first ``burn_in`` epochs run at lr/10 so the angular layout
    settles before points move outwards (the paper's burn-in). Runs in float64 on CPU.

    Deterministic for a given ``seed`` (own ``torch.Generator`` for init and negatives; the process-wide RNG is not
    touched). Returns the node embedding (n_nodes, dim) in node order of ``tree`` and metrics: ``final_loss``,
    ``mean_rank``, ``map``, ``depth_norm_spearman``, ``seconds``.
    """
    import warnings

    import torch

    with warnings.catch_warnings():  # geoopt 0.5.1 still calls the deprecated torch.jit.script at import
        warnings.simplefilter("ignore", DeprecationWarning)
        import geoopt

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    ball = geoopt.PoincareBall(c=1.0)
    closure = transitive_closure(tree)
    pairs = torch.from_numpy(np.concatenate([closure, closure[:, ::-1]]).copy())
    related = torch.from_numpy(_related_mask(tree))
    n = tree.n_nodes

    init = (torch.rand(n, dim, generator=gen, dtype=torch.float64) * 2 - 1) * init_scale
    emb = geoopt.ManifoldParameter(init, manifold=ball)
    opt = geoopt.optim.RiemannianAdam([emb], lr=lr, stabilize=10)
    u, v = pairs[:, 0], pairs[:, 1]
    final_loss = float("nan")
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr / 10 if epoch < burn_in else lr
        neg = torch.randint(0, n, (len(pairs), n_negatives), generator=gen)
        cand = torch.cat([v[:, None], neg], dim=1)  # column 0 is the positive
        d = _torch_poincare_dist(emb[u][:, None, :], emb[cand])
        mask = related[u[:, None], cand]
        mask[:, 0] = False
        logits = (-d).masked_fill(mask, float("-inf"))
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(pairs), dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
        final_loss = float(loss.detach())
    out = emb.detach().numpy().copy()
    metrics: dict[str, Any] = {"final_loss": final_loss, "epochs": epochs, "dim": dim, "n_pairs": int(len(pairs))}
    metrics.update(reconstruction_metrics(tree, out))
    metrics["seconds"] = time.perf_counter() - t0
    return out, metrics


# ----------------------------------------------------------------------------------------------------------------
# Poincaré-ball geometry (numpy, curvature -1)
# ----------------------------------------------------------------------------------------------------------------


def poincare_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Geodesic distance in the unit Poincaré ball, broadcasting over leading axes (last axis = coordinates).

    d(x, y) = arcosh(1 + 2 |x - y|^2 / ((1 - |x|^2)(1 - |y|^2))).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    sq = np.sum((x - y) ** 2, axis=-1)
    den = np.clip(1.0 - np.sum(x * x, axis=-1), _BALL_EPS, None)
    den = den * np.clip(1.0 - np.sum(y * y, axis=-1), _BALL_EPS, None)
    return np.arccosh(1.0 + 2.0 * sq / den)


def distance_to_origin(x: np.ndarray) -> np.ndarray:
    """d(x, 0) = 2 artanh |x| (the point's hyperbolic 'radius')."""
    r = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=-1)
    return 2.0 * np.arctanh(np.clip(r, 0.0, 1.0 - _BALL_EPS))


def _klein_with_gamma(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Poincaré points -> (Klein points, Lorentz factors gamma = 1/sqrt(1 - |k|^2))."""
    p = np.asarray(points, dtype=np.float64)
    sq = np.clip(np.sum(p * p, axis=-1, keepdims=True), 0.0, 1.0 - _BALL_EPS)
    k = 2.0 * p / (1.0 + sq)
    # 1 - |k|^2 = ((1 - |p|^2) / (1 + |p|^2))^2, so gamma has a closed form that avoids cancellation near the rim.
    gamma = (1.0 + sq[..., 0]) / (1.0 - sq[..., 0])
    return k, gamma


def _klein_to_poincare(k: np.ndarray) -> np.ndarray:
    sq = np.clip(np.sum(k * k, axis=-1, keepdims=True), 0.0, 1.0)
    return k / (1.0 + np.sqrt(1.0 - sq))


def einstein_midpoint(points: np.ndarray, weights: np.ndarray | sp.spmatrix | sp.sparray) -> np.ndarray:
    """Weighted Einstein midpoints of ``points`` (M, d) for each row of ``weights`` (N, M) -> (N, d), Poincaré model.

    m_K = sum_j w_j gamma_j k_j / sum_j w_j gamma_j in the Klein model (k_j = Klein image of point j, gamma_j its
    Lorentz factor), mapped back to the Poincaré ball. ``weights`` may be dense or scipy-sparse and must be
    non-negative; rows whose weights sum to zero (e.g. a customer with nothing) give the origin.
    """
    k, gamma = _klein_with_gamma(points)
    num = weights @ (gamma[:, None] * k)
    den = weights @ gamma
    num = np.asarray(num.todense() if sp.issparse(num) else num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64).reshape(-1)
    out_k = np.divide(num, den[:, None], out=np.zeros_like(num), where=den[:, None] > 0)
    return _klein_to_poincare(out_k)


def _grouped_einstein_midpoint(
    group: np.ndarray, point: np.ndarray, weight: np.ndarray, points: np.ndarray, n_groups: int
) -> np.ndarray:
    """Einstein midpoint per group from a long list of (group, point index, weight) entries (bincount, no loops)."""
    k, gamma = _klein_with_gamma(points)
    wg = weight * gamma[point]
    # float casts: bincount of an empty list returns int64 even with weights.
    den = np.bincount(group, weights=wg, minlength=n_groups).astype(np.float64)
    kk = k[point] * wg[:, None]
    num = np.stack(
        [np.bincount(group, weights=kk[:, j], minlength=n_groups) for j in range(points.shape[1])], axis=1
    ).astype(np.float64)
    out_k = np.divide(num, den[:, None], out=np.zeros_like(num), where=den[:, None] > 0)
    return _klein_to_poincare(out_k)


def _grouped_spread(
    group: np.ndarray, point: np.ndarray, weight: np.ndarray, points: np.ndarray, mid: np.ndarray, n_groups: int
) -> np.ndarray:
    """Weighted mean hyperbolic distance of each entry's point to its group's midpoint (0 for empty groups)."""
    d = poincare_distance(points[point], mid[group])
    num = np.bincount(group, weights=weight * d, minlength=n_groups).astype(np.float64)
    den = np.bincount(group, weights=weight, minlength=n_groups).astype(np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


# ----------------------------------------------------------------------------------------------------------------
# Group 9: product_hierarchy
# ----------------------------------------------------------------------------------------------------------------


def product_hierarchy_features(holdings: np.ndarray, product_emb: np.ndarray) -> np.ndarray:
    """Customer position in the product taxonomy: (N, dim + 2) = Einstein midpoint, radius, spread.

    ``holdings`` (N, n_products) non-negative (normally {0, 1}); ``product_emb`` (n_products, dim) is the product
    leaves' rows of ``fit_poincare_tree(product_tree()[0], 32, ...)``, i.e. ``node_emb[product_tree()[1]]``.
    Columns: midpoint (dim), ``radius`` = d(midpoint, origin) (how specialised/deep the basket is), ``spread`` = mean
    hyperbolic distance of the held products to the midpoint (how diverse it is; 0 for a single product).
    Customers holding nothing get the origin with radius 0 and spread 0 — the root of the taxonomy, i.e. "no
    position yet", which is also what an all-zero row means to the downstream experts.
    """
    h = np.asarray(holdings, dtype=np.float64)
    h = np.clip(h, 0.0, None)
    cust, prod = np.nonzero(h)
    w = h[cust, prod]
    n = h.shape[0]
    mid = _grouped_einstein_midpoint(cust, prod, w, product_emb, n)
    radius = distance_to_origin(mid)
    spread = _grouped_spread(cust, prod, w, product_emb, mid, n)
    return np.concatenate([mid, radius[:, None], spread[:, None]], axis=1)


def product_hierarchy_history_features(holdings: np.ndarray, tenure: np.ndarray, product_emb: np.ndarray, peers) -> np.ndarray:
    """Group 9 as built: (N, dim + 4) = tenure-weighted midpoint, radius, spread, drift, peer distance.

    ``tenure`` (N, n_products) = months each product held at t has been held (``panel.holding_tenure``; 0 where
    not held), ``peers`` the (N, N) non-negative merchant-peer weights with a zero diagonal: anything with
    ``peers @ x`` for x (N,) and (N, k) — ``peers.PeerGraph`` from ``merchant_peer_graph``, or a scipy matrix. Midpoint, radius and spread are ``product_hierarchy_features`` with the tenure
    as weights: long-held products anchor the customer's position, a product opened this month pulls it less.
    ``drift`` = d(tenure-weighted midpoint, equal-weight midpoint of the holdings): how far the recent
    acquisitions sit from the established basket (0 when every product was acquired in the same month).
    ``peer_dist`` = d(midpoint, Einstein midpoint of the peers' midpoints weighted by shared merchants): how far
    the customer's basket is from its merchant community's (0 for a customer without peers).
    Two customers with the same holding bits differ in drift when their histories differ and in peer_dist when
    their peers differ.
    """
    tenure = np.asarray(tenure, dtype=np.float64)
    bits = np.asarray(holdings, dtype=np.float64) > 0
    if tenure.shape != bits.shape:
        raise ValueError(f"product_hierarchy_history_features: tenure {tenure.shape} != holdings {bits.shape}")
    if ((tenure > 0) != bits).any():
        bad = int(np.nonzero(((tenure > 0) != bits).any(axis=1))[0][0])
        raise ValueError(f"product_hierarchy_history_features: row {bad} has tenure > 0 exactly where a product is "
                         "held at t, and it does not (holdings and tenure read from different months?)")
    weighted = product_hierarchy_features(tenure, product_emb)
    dim = product_emb.shape[1]
    mid = weighted[:, :dim]
    equal_mid = product_hierarchy_features(bits.astype(np.float64), product_emb)[:, :dim]
    drift = poincare_distance(mid, equal_mid)
    peer_mid = einstein_midpoint(mid, peers)
    has_peers = np.asarray(peers @ np.ones(len(mid))).reshape(-1) > 0
    peer_dist = np.where(has_peers, poincare_distance(mid, peer_mid), 0.0)
    return np.concatenate([weighted, drift[:, None], peer_dist[:, None]], axis=1)


# ----------------------------------------------------------------------------------------------------------------
# Group 10: merchant_hierarchy
# ----------------------------------------------------------------------------------------------------------------


def _gini_by_group(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Gini coefficient of non-negative ``values`` within each group (0 for <2 entries or zero total)."""
    order = np.lexsort((values, group))
    g, x = group[order], values[order]
    counts = np.bincount(g, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(g)) - starts[g] + 1.0  # 1-based rank within group, ascending value
    total = np.bincount(g, weights=x, minlength=n_groups).astype(np.float64)
    weighted = np.bincount(g, weights=rank * x, minlength=n_groups).astype(np.float64)
    nn = counts.astype(np.float64)
    ok = (total > 0) & (counts > 1)
    gini = np.zeros(n_groups)
    gini[ok] = 2.0 * weighted[ok] / (nn[ok] * total[ok]) - (nn[ok] + 1.0) / nn[ok]
    return np.clip(gini, 0.0, 1.0)


def merchant_hierarchy_features(
    customer_idx: np.ndarray,
    mcc_idx: np.ndarray,
    amount: np.ndarray,
    age_days: np.ndarray,
    merchant_key: np.ndarray,
    n_customers: int,
    node_emb: np.ndarray,
    hierarchy: MccHierarchy,
    tau_days: float = RECENCY_TAU_DAYS,
) -> np.ndarray:
    """Per-customer spending position in the MCC tree: (n_customers, 3 * dim + 9), 27 columns for dim 6.

    Inputs are one entry per transaction (K,): ``customer_idx`` in [0, n_customers), ``mcc_idx`` = position in
    ``hierarchy.codes`` (``hierarchy.code_index``; -1 = MCC outside the hierarchy), ``amount``, ``age_days`` = days
    before the snapshot end, ``merchant_key`` any int64 merchant id. ``node_emb`` (hierarchy.tree.n_nodes, dim) comes
    from ``fit_poincare_tree(hierarchy.tree, 6, ...)``.

    Weight per transaction w = max(amount, 0) * exp(-age_days / tau_days) (recent and large spend count most; refunds
    count zero). Levels are read from ``hierarchy.tree`` (code node, its parent L2, its grandparent L1), so a changed
    tree changes the features even before re-embedding. Columns, in spec order:
    L1, L2, code Einstein midpoints (3 * dim); w-weighted mean distance of the transactions' nodes to the midpoint at
    each level (spread, 3); midpoint distance to the origin at each level (radius, 3); loyalty = share of w at
    merchants visited at least twice; Gini of w over the customer's merchants; log(1 + number of distinct merchants).
    Transactions with an MCC outside the hierarchy are left out of the midpoints/spreads/radii but count for the
    three merchant statistics. Customers without transactions get all zeros (origin, radius 0, spread 0, loyalty 0,
    Gini 0, log(1 + 0) = 0), matching the spec's ``zero_ok_without="transactions"``; a customer whose transactions
    all have zero weight (only refunds) has the same zeros except ``log_n_merchants``.
    """
    cust = np.asarray(customer_idx, dtype=np.int64)
    mcc = np.asarray(mcc_idx, dtype=np.int64)
    age = np.asarray(age_days, dtype=np.float64)
    w = np.clip(np.asarray(amount, dtype=np.float64), 0.0, None) * np.exp(-np.clip(age, 0.0, None) / tau_days)
    merch = np.asarray(merchant_key, dtype=np.int64)
    node_emb = np.asarray(node_emb, dtype=np.float64)
    dim = node_emb.shape[1]
    n = int(n_customers)

    tree = hierarchy.tree
    n_codes = len(hierarchy.code_node)
    inside = mcc >= 0
    # Midpoints and spreads are linear in the weights, so collapse repeat visits to one (customer, code) entry first.
    cc_key, cc_inv = np.unique(cust[inside] * n_codes + mcc[inside], return_inverse=True)
    c_in = cc_key // n_codes
    w_in = np.bincount(cc_inv, weights=w[inside], minlength=len(cc_key))
    code_node = np.asarray(hierarchy.code_node, dtype=np.int64)[cc_key % n_codes]
    l2_node = tree.parent[code_node]
    l1_node = tree.parent[l2_node]

    mids, spreads, radii = [], [], []
    for level_node in (l1_node, l2_node, code_node):  # 3 levels, each vectorised over (customer, code) entries
        mid = _grouped_einstein_midpoint(c_in, level_node, w_in, node_emb, n)
        mids.append(mid)
        spreads.append(_grouped_spread(c_in, level_node, w_in, node_emb, mid, n))
        radii.append(distance_to_origin(mid))

    # (customer, merchant) pairs via one sort of a combined int64 key; merchant ids are factorised only when they
    # are negative or too large to combine without overflow.
    if len(cust):
        m = merch
        if m.min() < 0 or int(m.max()) + 1 > (2**62) // max(n, 1):
            _, m = np.unique(merch, return_inverse=True)
        n_m = int(m.max()) + 1
        pair_key, pair_inv = np.unique(cust * n_m + m, return_inverse=True)
        pair_cust = pair_key // n_m
        visits = np.bincount(pair_inv)
        pair_w = np.bincount(pair_inv, weights=w)
    else:
        pair_cust = np.zeros(0, dtype=np.int64)
        visits = np.zeros(0, dtype=np.int64)
        pair_w = np.zeros(0)
    total_w = np.bincount(pair_cust, weights=pair_w, minlength=n).astype(np.float64)
    loyal_w = np.bincount(pair_cust, weights=pair_w * (visits >= 2), minlength=n).astype(np.float64)
    loyalty = np.divide(loyal_w, total_w, out=np.zeros(n), where=total_w > 0)
    gini = _gini_by_group(pair_cust, pair_w, n)
    log_n_merchants = np.log1p(np.bincount(pair_cust, minlength=n).astype(np.float64))

    out = np.concatenate(
        mids + [np.stack(spreads, axis=1), np.stack(radii, axis=1), np.stack([loyalty, gini, log_n_merchants], axis=1)],
        axis=1,
    )
    assert out.shape == (n, 3 * dim + 9)
    return out

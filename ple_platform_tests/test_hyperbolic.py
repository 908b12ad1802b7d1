"""Poincaré embeddings of the MCC / product trees and the customer features built on them (groups 9 and 10)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ple_platform.core.data.taxonomy import Tree, mcc_hierarchy, product_tree
from ple_platform.core.features.spec import MERCHANT_EMBED_DIM, PRODUCT_EMBED_DIM, group
from ple_platform.core.features.hyperbolic import (
    distance_to_origin,
    einstein_midpoint,
    fit_poincare_tree,
    merchant_hierarchy_features,
    poincare_distance,
    product_hierarchy_features,
    product_hierarchy_history_features,
    transitive_closure,
)

EPOCHS = 200  # enough for >=95% of triples; the production default (600) only sharpens ranks



@pytest.fixture(scope="module")
def mcc_fit():
    h = mcc_hierarchy()
    emb, metrics = fit_poincare_tree(h.tree, MERCHANT_EMBED_DIM, epochs=EPOCHS, seed=0)
    return h, emb, metrics


@pytest.fixture(scope="module")
def prod_fit():
    tree, leaves = product_tree()
    emb, metrics = fit_poincare_tree(tree, PRODUCT_EMBED_DIM, epochs=EPOCHS, seed=0)
    return tree, leaves, emb, metrics


def _ball_points(rng, m, d, max_r=0.95):
    x = rng.normal(size=(m, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * rng.uniform(0, max_r, (m, 1))


# --- fitting ------------------------------------------------------------------------------------------------------


def test_transitive_closure_counts():
    h = mcc_hierarchy()
    pairs = transitive_closure(h.tree)
    assert len(pairs) == int(h.tree.depth.sum())  # each node pairs with every proper ancestor
    assert {tuple(p) for p in pairs} >= {(int(c), int(h.tree.parent[c])) for c in h.code_node}


def test_mcc_embedding_respects_hierarchy(mcc_fit):
    h, emb, metrics = mcc_fit
    tree = h.tree
    assert emb.shape == (tree.n_nodes, 6)
    assert np.all(np.linalg.norm(emb, axis=1) < 1.0)
    assert metrics["mean_rank"] < 1.6 and metrics["map"] > 0.85 and np.isfinite(metrics["final_loss"])
    d = poincare_distance(emb[:, None], emb[None])
    rng = np.random.default_rng(0)
    codes = h.code_node
    l2 = tree.parent[codes]
    l1 = tree.parent[l2]
    l2_nodes = np.unique(l2)
    cousin_hits = other_hits = n_cousin = 0
    for _ in range(500):
        i = rng.integers(len(codes))
        c, p = codes[i], l2[i]
        cousins = l2_nodes[(tree.parent[l2_nodes] == l1[i]) & (l2_nodes != p)]
        if len(cousins):
            n_cousin += 1
            cousin_hits += d[c, p] < d[c, rng.choice(cousins)]
        other = codes[l1 != l1[i]]
        other_hits += d[c, p] < d[c, rng.choice(other)]
    assert n_cousin > 100
    assert cousin_hits / n_cousin >= 0.95
    assert other_hits / 500 >= 0.95


def test_product_embedding_respects_hierarchy(prod_fit):
    tree, leaves, emb, metrics = prod_fit
    assert emb.shape == (31, PRODUCT_EMBED_DIM) and metrics["map"] > 0.95
    d = poincare_distance(emb[:, None], emb[None])
    groups = tree.parent[leaves]
    group_nodes = np.unique(groups)
    hits = total = 0
    for i, leaf in enumerate(leaves):
        for g in group_nodes[group_nodes != groups[i]]:
            hits += d[leaf, groups[i]] < d[leaf, g]
            total += 1
        for j in np.nonzero(groups != groups[i])[0]:
            hits += d[leaf, groups[i]] < d[leaf, leaves[j]]
            total += 1
    assert hits / total >= 0.95


def test_fit_is_deterministic():
    tree, _ = product_tree()
    a, ma = fit_poincare_tree(tree, 8, epochs=30, seed=7)
    b, mb = fit_poincare_tree(tree, 8, epochs=30, seed=7)
    c, _ = fit_poincare_tree(tree, 8, epochs=30, seed=8)
    np.testing.assert_array_equal(a, b)
    assert ma["final_loss"] == mb["final_loss"]
    assert not np.allclose(a, c)


# --- geometry -----------------------------------------------------------------------------------------------------


def test_poincare_distance_matches_geoopt():
    import geoopt

    rng = np.random.default_rng(1)
    x, y = _ball_points(rng, 50, 5), _ball_points(rng, 50, 5)
    ref = geoopt.PoincareBall(c=1.0).dist(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(poincare_distance(x, y), ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(distance_to_origin(x), poincare_distance(x, np.zeros_like(x)), rtol=1e-9, atol=1e-12)


def test_midpoint_of_single_point_is_the_point():
    rng = np.random.default_rng(2)
    pts = _ball_points(rng, 7, 6, max_r=0.999)
    np.testing.assert_allclose(einstein_midpoint(pts, np.eye(7) * 3.0), pts, atol=1e-10)


def test_midpoint_order_invariant_and_zero_rows():
    rng = np.random.default_rng(3)
    pts = _ball_points(rng, 9, 4)
    w = rng.random((5, 9)) * (rng.random((5, 9)) < 0.6)
    w[2] = 0.0
    perm = rng.permutation(9)
    mid = einstein_midpoint(pts, w)
    np.testing.assert_allclose(einstein_midpoint(pts[perm], w[:, perm]), mid, atol=1e-12)
    np.testing.assert_array_equal(mid[2], np.zeros(4))
    assert np.all(np.linalg.norm(mid, axis=1) < 1.0)
    # Symmetric pair -> origin; sparse weights give the same answer as dense.
    np.testing.assert_allclose(einstein_midpoint(np.stack([pts[0], -pts[0]]), np.ones((1, 2))), 0.0, atol=1e-12)
    import scipy.sparse as sp

    np.testing.assert_allclose(einstein_midpoint(pts, sp.csr_matrix(w)), mid, atol=1e-12)


# --- product_hierarchy -------------------------------------------------------------------------------------------


def test_product_hierarchy_features(prod_fit):
    _, leaves, emb, _ = prod_fit
    pemb = emb[leaves]
    d = PRODUCT_EMBED_DIM
    hold = np.zeros((4, 24))
    hold[1, 5] = 1
    hold[2, [0, 1, 2]] = 1
    hold[3, [0, 23]] = 1
    f = product_hierarchy_features(hold, pemb)
    assert f.shape == (4, d + 2) and np.isfinite(f).all()
    np.testing.assert_array_equal(f[0], 0.0)  # holds nothing -> origin, radius 0, spread 0
    np.testing.assert_allclose(f[1, :d], pemb[5], atol=1e-10)
    np.testing.assert_allclose(f[1, d], distance_to_origin(pemb[5]), rtol=1e-8)
    assert abs(f[1, d + 1]) < 1e-6
    mid = einstein_midpoint(pemb, hold[2:3])[0]
    np.testing.assert_allclose(f[2, :d], mid, atol=1e-12)
    np.testing.assert_allclose(f[2, d + 1], poincare_distance(pemb[[0, 1, 2]], mid).mean(), rtol=1e-9)
    assert f[3, d + 1] > 0


def test_product_hierarchy_history_features_see_tenure_and_peers(prod_fit):
    import scipy.sparse as sp

    _, leaves, emb, _ = prod_fit
    pemb = emb[leaves]
    d = PRODUCT_EMBED_DIM
    # Customers 0 and 1 hold the same two products; 0 has held both for 6 months, 1 opened product 23 at t.
    hold = np.zeros((4, 24))
    hold[[0, 1], 0] = hold[[0, 1], 23] = 1
    hold[2, 5] = 1
    hold[3, [9, 10]] = 1
    tenure = hold * 6.0
    tenure[1, 23] = 1.0
    # Peers: 0 <-> 2, 1 <-> 3 (one shared merchant each); nobody else.
    peers = sp.csr_matrix(([1.0] * 4, ([0, 2, 1, 3], [2, 0, 3, 1])), shape=(4, 4))
    f = product_hierarchy_history_features(hold, tenure, pemb, peers)
    assert f.shape == (4, group("product_hierarchy").dim) == (4, d + 4) and np.isfinite(f).all()
    # Equal tenure: the midpoint is the equal-weight one and there is no drift.
    np.testing.assert_allclose(f[0, : d + 2], product_hierarchy_features(hold[:1], pemb)[0], atol=1e-12)
    assert abs(f[0, d + 2]) < 1e-9
    # Same bits, different history: the new product pulls less, so the midpoint moves toward product 0 and drifts.
    np.testing.assert_allclose(f[1, :d], einstein_midpoint(pemb, tenure[1:2])[0], atol=1e-12)
    assert f[1, d + 2] > 1e-3
    assert poincare_distance(f[1, :d], pemb[0]) < poincare_distance(f[0, :d], pemb[0])
    # Peer distance = distance to the peer's midpoint (one peer each).
    np.testing.assert_allclose(f[0, d + 3], poincare_distance(f[0, :d], f[2, :d]), rtol=1e-9)
    np.testing.assert_allclose(f[1, d + 3], poincare_distance(f[1, :d], f[3, :d]), rtol=1e-9)
    # Without peers the distance is 0; other columns do not depend on the peers.
    g = product_hierarchy_history_features(hold, tenure, pemb, sp.csr_matrix((4, 4)))
    np.testing.assert_array_equal(g[:, d + 3], 0.0)
    np.testing.assert_array_equal(g[:, : d + 3], f[:, : d + 3])
    bad = tenure.copy()
    bad[2, 6] = 3.0  # tenure for a product not held at t
    with pytest.raises(ValueError, match="row 2"):
        product_hierarchy_history_features(hold, bad, pemb, peers)


# --- merchant_hierarchy ------------------------------------------------------------------------------------------


def _random_txns(rng, n_cust, k, n_codes):
    cust = rng.integers(0, n_cust, k)
    cust[cust == 3] = 4  # customer 3 has no transactions
    mcc = rng.integers(0, n_codes, k)
    mcc[rng.random(k) < 0.05] = -1
    amount = rng.lognormal(3, 1, k)
    amount[rng.random(k) < 0.03] *= -1  # refunds
    age = rng.uniform(0, 200, k)
    merchant = rng.integers(0, 15, k) * 1_000_003 - 7  # arbitrary (negative, large) ids
    return cust, mcc, amount, age, merchant


def _naive_merchant_features(cust, mcc, amount, age, merchant, n, emb, h, tau=60.0):
    """Loop-per-customer reference implementation of the same definition."""
    out = np.zeros((n, 27))
    w_all = np.clip(amount, 0, None) * np.exp(-age / tau)
    for c in range(n):
        sel = cust == c
        if not sel.any():
            continue
        ins = sel & (mcc >= 0)
        nodes = h.code_node[mcc[ins]]
        levels = [h.tree.parent[h.tree.parent[nodes]], h.tree.parent[nodes], nodes]
        w = w_all[ins]
        for li, nd in enumerate(levels):
            wrow = np.zeros((1, h.tree.n_nodes))
            np.add.at(wrow[0], nd, w)
            mid = einstein_midpoint(emb, wrow)[0]
            out[c, 6 * li : 6 * li + 6] = mid
            out[c, 18 + li] = (w * poincare_distance(emb[nd], mid)).sum() / w.sum() if w.sum() > 0 else 0
            out[c, 21 + li] = distance_to_origin(mid)
        ms, inv = np.unique(merchant[sel], return_inverse=True)
        spend = np.bincount(inv, weights=w_all[sel])
        visits = np.bincount(inv)
        out[c, 24] = spend[visits >= 2].sum() / spend.sum() if spend.sum() > 0 else 0
        x = np.sort(spend)
        m = len(x)
        out[c, 25] = (2 * np.sum(np.arange(1, m + 1) * x) / (m * x.sum()) - (m + 1) / m) if m > 1 and x.sum() > 0 else 0
        out[c, 26] = np.log1p(len(ms))
    return out


def test_merchant_features_match_naive_reference(mcc_fit):
    h, emb, _ = mcc_fit
    rng = np.random.default_rng(4)
    n = 12
    tx = _random_txns(rng, n - 2, 400, h.n_codes)  # customers 10, 11 and 3 have no transactions
    f = merchant_hierarchy_features(*tx, n, emb, h)
    assert f.shape == (n, group("merchant_hierarchy").dim) == (n, 27) and np.isfinite(f).all()
    np.testing.assert_allclose(f, _naive_merchant_features(*tx, n, emb, h), rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(f[[3, 10, 11]], 0.0)
    assert np.all((f[:, 24] >= 0) & (f[:, 24] <= 1) & (f[:, 25] >= 0) & (f[:, 25] <= 1))


def test_merchant_stats_hand_example(mcc_fit):
    h, emb, _ = mcc_fit
    # Customer 0: merchant A twice (10 + 10), merchant B once (20), no decay (age 0).
    f = merchant_hierarchy_features(
        np.array([0, 0, 0]), np.array([0, 0, 1]), np.array([10.0, 10.0, 20.0]), np.zeros(3),
        np.array([5, 5, 9]), 1, emb, h,
    )[0]
    assert f[24] == pytest.approx(0.5)  # loyalty: half the spend at a revisited merchant
    assert f[25] == pytest.approx(0.0)  # equal spend at both merchants
    assert f[26] == pytest.approx(np.log(3.0))
    # Single code: code-level midpoint is the code's point, code spread 0.
    g = merchant_hierarchy_features(np.array([0]), np.array([7]), np.array([5.0]), np.array([30.0]),
                                    np.array([1]), 1, emb, h)[0]
    np.testing.assert_allclose(g[12:18], emb[h.code_node[7]], atol=1e-10)
    np.testing.assert_allclose(g[0:6], emb[h.tree.parent[h.tree.parent[h.code_node[7]]]], atol=1e-10)
    assert abs(g[20]) < 1e-6


def test_recency_weighting(mcc_fit):
    h, emb, _ = mcc_fit
    args = (np.array([0, 0]), np.array([0, 60]), np.array([10.0, 10.0]))
    recent_first = merchant_hierarchy_features(*args, np.array([0.0, 300.0]), np.array([1, 2]), 1, emb, h)[0]
    recent_second = merchant_hierarchy_features(*args, np.array([300.0, 0.0]), np.array([1, 2]), 1, emb, h)[0]
    code0, code60 = emb[h.code_node[0]], emb[h.code_node[60]]
    assert poincare_distance(recent_first[12:18], code0) < poincare_distance(recent_first[12:18], code60)
    assert poincare_distance(recent_second[12:18], code60) < poincare_distance(recent_second[12:18], code0)


def _swap_parents(h, a, b):
    """Hierarchy whose tree has the parents of codes a and b swapped (they sit under different L1s)."""
    parent = h.tree.parent.copy()
    na, nb = h.code_node[a], h.code_node[b]
    parent[na], parent[nb] = parent[nb], parent[na]
    tree = Tree(h.tree.names, parent, h.tree.depth)
    return dataclasses.replace(h, tree=tree)


def test_features_change_when_tree_changes(mcc_fit):
    h, emb, _ = mcc_fit
    a = 0
    b = int(np.nonzero(h.code_l1 != h.code_l1[a])[0][0])
    h2 = _swap_parents(h, a, b)
    emb2, _ = fit_poincare_tree(h2.tree, 6, epochs=EPOCHS, seed=0)
    na = h.code_node[a]
    d2 = poincare_distance(emb2[na], emb2)
    assert d2[h2.tree.parent[na]] < d2[h.tree.parent[na]]  # code a now sits with its new parent
    rng = np.random.default_rng(5)
    tx = list(_random_txns(rng, 6, 120, h.n_codes))
    tx[1][:20] = a  # every customer sees code a
    tx[1][20:40] = b
    f1 = merchant_hierarchy_features(*tx, 6, emb, h)
    f2 = merchant_hierarchy_features(*tx, 6, emb2, h2)
    changed = np.abs(f1 - f2).max(axis=1) > 1e-3
    assert changed[tx[0][:40]].all()
    # Same embedding, new tree: the L1/L2 columns still move for customers at the swapped codes.
    f3 = merchant_hierarchy_features(*tx, 6, emb, h2)
    assert np.abs(f1[:, :12] - f3[:, :12]).max() > 1e-3
    np.testing.assert_allclose(f1[:, 12:18], f3[:, 12:18])  # code level unchanged for a fixed embedding


def test_merchant_features_empty_input(mcc_fit):
    h, emb, _ = mcc_fit
    z = np.zeros(0)
    f = merchant_hierarchy_features(z.astype(int), z.astype(int), z, z, z.astype(np.int64), 3, emb, h)
    assert f.shape == (3, 27)
    np.testing.assert_array_equal(f, 0.0)

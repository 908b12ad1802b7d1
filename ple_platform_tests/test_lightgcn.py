"""Inductive LightGCN on the customer–product bipartite graph (feature group 11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ple_platform.core.features.lightgcn import (
    fit_lightgcn,
    lightgcn_customer_features,
    lightgcn_embeddings,
    propagation_coefficients,
)
from ple_platform.core.features.spec import group

N_CUST = 2000



def _community_holdings(n, seed):
    """3 segments; products 0, 1 popular everywhere, each segment prefers its own 6 products, the rest rare."""
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, 3, n)
    pref = np.full((3, 24), 0.01)
    pref[:, 0], pref[:, 1] = 0.5, 0.35
    for s in range(3):
        pref[s, 2 + 6 * s : 8 + 6 * s] = 0.35
    return rng.random((n, 24)) < pref[seg], seg


@pytest.fixture(scope="module")
def split_graph():
    """Community graph with one held-out edge per customer holding >= 3 products."""
    hold, seg = _community_holdings(N_CUST, seed=0)
    cust, prod = np.nonzero(hold)
    rng = np.random.default_rng(1)
    key = rng.random(len(cust))
    order = np.lexsort((key, cust))
    first = order[np.r_[True, cust[order][1:] != cust[order][:-1]]]  # one random edge per customer
    test = np.zeros(len(cust), dtype=bool)
    test[first[hold.sum(1)[cust[first]] >= 3]] = True
    train = np.stack([cust[~test], prod[~test]], axis=1)
    held_out = np.stack([cust[test], prod[test]], axis=1)
    return train, held_out, seg


@pytest.fixture(scope="module")
def fitted(split_graph):
    train, _, _ = split_graph
    state, metrics = fit_lightgcn(train, N_CUST, epochs=25, seed=0, batch_size=1024)
    return state, metrics


def _recall_at_3(scores, train, held_out):
    seen = np.zeros_like(scores, dtype=bool)
    seen[train[:, 0], train[:, 1]] = True
    s = np.where(seen, -np.inf, scores)
    top3 = np.argsort(-s, axis=1, kind="stable")[:, :3]
    return float((top3[held_out[:, 0]] == held_out[:, 1][:, None]).any(axis=1).mean())


def test_recall_beats_popularity(split_graph, fitted):
    train, held_out, _ = split_graph
    state, metrics = fitted
    cust_emb, prod_emb = lightgcn_embeddings(state, train, N_CUST)
    pop = np.bincount(train[:, 1], minlength=24).astype(float)
    r_pop = _recall_at_3(np.broadcast_to(pop, (N_CUST, 24)).copy(), train, held_out)
    r_gcn = _recall_at_3(cust_emb @ prod_emb.T, train, held_out)
    assert len(held_out) > 300
    assert r_gcn > r_pop + 0.1, (r_gcn, r_pop)
    assert np.isfinite(metrics["final_loss"]) and metrics["train_auc"] > 0.6


def test_coefficients_equal_direct_lgconv_propagation(split_graph, fitted):
    """The coefficient shortcut is the same LightGCN: propagate the 64-d embeddings with LGConv directly."""
    from torch_geometric.nn import LGConv

    train, _, _ = split_graph
    state, _ = fitted
    emb = torch.from_numpy(state["product_emb"])
    n = N_CUST + 24
    deg = np.bincount(train[:, 0], minlength=N_CUST)
    x = torch.zeros(n, emb.shape[1])
    inv_deg = torch.from_numpy(1.0 / deg[train[:, 0]]).float()[:, None]
    x.index_add_(0, torch.from_numpy(train[:, 0]), emb[train[:, 1]] * inv_deg)
    x[N_CUST:] = emb
    c, p = torch.from_numpy(train[:, 0]), torch.from_numpy(train[:, 1] + N_CUST)
    ei = torch.stack([torch.cat([c, p]), torch.cat([p, c])])
    layers = [x]
    for _ in range(3):
        layers.append(LGConv()(layers[-1], ei))
    direct = torch.stack(layers).mean(0).numpy()
    cust_emb, prod_emb = lightgcn_embeddings(state, train, N_CUST)
    np.testing.assert_allclose(cust_emb, direct[:N_CUST], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(prod_emb, direct[N_CUST:], rtol=1e-4, atol=1e-5)


def test_features_shape_finite_and_columns(split_graph, fitted):
    train, _, _ = split_graph
    state, _ = fitted
    f = lightgcn_customer_features(state, train, N_CUST + 1)  # last customer has no edges
    assert f.shape == (N_CUST + 1, group("graph_collaborative").dim) == (N_CUST + 1, 66)
    assert f.dtype == np.float32 and np.isfinite(f).all()
    np.testing.assert_allclose(f[:, 64], np.linalg.norm(f[:, :64], axis=1), rtol=1e-5)
    np.testing.assert_array_equal(f[:N_CUST, 65], np.bincount(train[:, 0], minlength=N_CUST))
    # Isolated customer: degree 0, embedding = centroid of the connected customers (documented cold-start prior).
    assert f[-1, 65] == 0
    connected = f[:N_CUST][f[:N_CUST, 65] > 0, :64]
    np.testing.assert_allclose(f[-1, :64], connected.mean(axis=0), rtol=1e-4, atol=1e-6)
    assert f[-1, 64] > 0
    # Duplicate edges are ignored.
    np.testing.assert_allclose(lightgcn_customer_features(state, np.concatenate([train, train[:50]]), N_CUST), f[:-1])


def test_embedding_depends_on_own_products_and_neighbours(fitted):
    state, _ = fitted
    # Two components: customers 0-2 use products 0-11 only, customers 3-5 use products 12-23 only.
    base = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 5], [3, 12], [3, 13], [4, 13], [5, 20]])
    f0 = lightgcn_customer_features(state, base, 6)[:, :64]
    # Own products change -> own embedding changes.
    own = np.concatenate([base, [[0, 7]]])
    assert np.abs(lightgcn_customer_features(state, own, 6)[0, :64] - f0[0]).max() > 1e-4
    # Customer 1 shares product 1 with customer 0: changing customer 1's holdings moves customer 0.
    nb = np.concatenate([base, [[1, 9]]])
    f_nb = lightgcn_customer_features(state, nb, 6)[:, :64]
    assert np.abs(f_nb[0] - f0[0]).max() > 1e-4
    # Customer 4 is in the other component: changing it leaves customers 0-2 untouched (only shared products carry
    # information), while its own component moves.
    far = np.concatenate([base, [[4, 21]]])
    f_far = lightgcn_customer_features(state, far, 6)[:, :64]
    np.testing.assert_array_equal(f_far[:3], f0[:3])
    assert np.abs(f_far[3] - f0[3]).max() > 1e-4


def test_unseen_customer_gets_meaningful_embedding(split_graph, fitted):
    train, _, seg = split_graph
    state, _ = fitted
    # A brand-new customer (index N_CUST, never in the fit graph) holding two segment-1 products.
    new = np.concatenate([train, [[N_CUST, 8], [N_CUST, 9]]])
    f = lightgcn_customer_features(state, new, N_CUST + 1)
    e_new = f[-1, :64]
    assert f[-1, 65] == 2 and f[-1, 64] > 1e-3 and np.isfinite(e_new).all()
    # It lands nearest (cosine) to the centroid of its own segment, not to the population centroid's neighbourhood.
    emb = f[:N_CUST, :64]
    cents = np.stack([emb[seg == s].mean(0) for s in range(3)])
    cos = cents @ e_new / (np.linalg.norm(cents, axis=1) * np.linalg.norm(e_new))
    assert int(np.argmax(cos)) == 1, cos
    # Its top recommendations (excluding held) are the rest of segment 1's products.
    _, prod_emb = lightgcn_embeddings(state, new, N_CUST + 1)
    scores = prod_emb @ e_new
    scores[[8, 9]] = -np.inf
    top = set(np.argsort(-scores)[:4].tolist())
    assert len(top & {8, 9, 10, 11, 12, 13, 0, 1}) >= 3


def test_fit_is_deterministic(split_graph):
    train, _, _ = split_graph
    a, ma = fit_lightgcn(train, N_CUST, epochs=3, seed=11, batch_size=512)
    b, mb = fit_lightgcn(train, N_CUST, epochs=3, seed=11, batch_size=512)
    c, _ = fit_lightgcn(train, N_CUST, epochs=3, seed=12, batch_size=512)
    np.testing.assert_array_equal(a["product_emb"], b["product_emb"])
    assert ma["final_loss"] == mb["final_loss"]
    assert not np.allclose(a["product_emb"], c["product_emb"])
    assert a["product_emb"].shape == (24, 64) and int(a["n_layers"]) == 3


def test_plain_bpr_variant_runs(split_graph):
    train, _, _ = split_graph
    state, metrics = fit_lightgcn(train, N_CUST, epochs=2, seed=0, hide_frac=0.0)
    assert np.isfinite(state["product_emb"]).all() and metrics["n_edges"] == len(train)


def test_invalid_edges_raise():
    with pytest.raises(ValueError):
        propagation_coefficients(np.array([[0, 24]]), 1, 24, 3)
    with pytest.raises(ValueError):
        propagation_coefficients(np.array([[2, 0]]), 2, 24, 3)


def test_folding_into_the_graph_itself_is_exact_lightgcn(split_graph, fitted):
    train, _, _ = split_graph
    state, _ = fitted
    f = lightgcn_customer_features(state, train, N_CUST)
    np.testing.assert_allclose(f, lightgcn_customer_features(state, train, N_CUST, reference=(train, N_CUST)))
    cust_emb, _ = lightgcn_embeddings(state, train, N_CUST)
    connected = f[:, 65] > 0
    np.testing.assert_allclose(f[connected, :64], cust_emb[connected], rtol=1e-4, atol=1e-6)


def test_same_holdings_give_the_same_embedding_in_any_later_population(split_graph, fitted):
    train, _, _ = split_graph
    state, _ = fitted
    # Next month: the same 2,000 customers plus 400 new ones who all hold product 0 (its degree grows by 40%).
    hold, _ = _community_holdings(400, seed=5)
    hold[:, 0] = True
    c, p = np.nonzero(hold)
    grown = np.concatenate([train, np.stack([c + N_CUST, p], axis=1)])
    folded = lightgcn_customer_features(state, grown, N_CUST + 400, reference=(train, N_CUST))
    np.testing.assert_allclose(folded[:N_CUST], lightgcn_customer_features(state, train, N_CUST), rtol=1e-5,
                               atol=1e-6)
    # Propagating over the grown graph instead moves the unchanged customers (the drift the fold-in removes).
    own_graph = lightgcn_customer_features(state, grown, N_CUST + 400)
    holders = np.isin(np.arange(N_CUST), train[train[:, 1] == 0, 0])
    assert np.abs(own_graph[:N_CUST][holders, :64] - folded[:N_CUST][holders, :64]).max() > 1e-3

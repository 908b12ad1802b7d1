"""Merchant-peer signals in graph_collaborative and product_hierarchy on a hand-built warehouse: what they read
(peers via shared merchants in the 90 days up to t, hubs ignored, nothing after t) and that they carry information
beyond a customer's own holding bits."""

from datetime import date, datetime

import duckdb
import numpy as np
import pytest
import scipy.sparse as sp

from ple_platform.core.data.schema import PRODUCT_NAMES
from ple_platform.core.features.build import BuildContext, build_group
from ple_platform.core.features.fits import FitPolicy, FitStore
from ple_platform.core.features.panel import holding_tenure, population
from ple_platform.core.features.peers import (
    PeerGraph,
    merchant_peer_graph,
    product_holdings_and_acquisitions,
    strong_peer_acquisitions,
    strong_tie_graph,
)
from ple_platform.core.features.spec import PEER_SIGNAL_COLUMNS, PRODUCT_EMBED_DIM, STRONG_PEER_COLUMNS, group
from ple_platform.core.storage import LocalArtifactStore

JAN, FEB, MAR, APR = (date(2015, m, 1) for m in (1, 2, 3, 4))
T = MAR
CUSTOMERS = [f"c{i}" for i in range(8)]
GCF = group("graph_collaborative").columns
PRODH = group("product_hierarchy").columns
PEER_COLS = [GCF.index(c) for c in PEER_SIGNAL_COLUMNS]
LIGHTGCN_END = GCF.index(PEER_SIGNAL_COLUMNS[0])  # embedding, norm, degree: a function of the own bits
DRIFT, PEER_DIST = PRODH.index("prodh_drift"), PRODH.index("prodh_peer_dist")

# Holdings per customer: product -> months held. c0 and c2 hold the same bits at T (current_account) but c2 opened
# it at T; c6 holds exactly what c0 holds, for as long, but its peer c7 holds deposits and payments.
HOLDINGS = {
    "c0": {"current_account": (JAN, FEB, MAR)},
    "c1": {"current_account": (JAN, FEB, MAR), "short_deposit": (MAR, APR)},
    "c2": {"current_account": (MAR, APR)},
    "c3": {"current_account": (JAN, FEB, MAR, APR)},
    "c4": {"current_account": (JAN, FEB, MAR), "medium_deposit": (APR,)},
    "c5": {"credit_card": (FEB, MAR, APR)},
    "c6": {"current_account": (JAN, FEB, MAR)},
    "c7": {"credit_card": (JAN, FEB, MAR), "long_deposit": (FEB, MAR), "funds": (MAR,)},
}
# (customer, merchant, timestamp): peers c0-c1 (MA), c2-c3 (MB), c4-c5 (MC), c6-c7 (MD) inside the window.
TXNS = [
    ("c0", "MA", datetime(2015, 3, 5)), ("c1", "MA", datetime(2015, 2, 20)),
    ("c2", "MB", datetime(2015, 3, 7)), ("c3", "MB", datetime(2015, 1, 15)),
    ("c4", "MC", datetime(2015, 3, 9)), ("c5", "MC", datetime(2015, 3, 10)),
    ("c6", "MD", datetime(2015, 2, 2)), ("c7", "MD", datetime(2015, 3, 30)),
    # Older than 90 days before the snapshot end (2015-04-01): must not link c0 and c5.
    ("c0", "MOLD", datetime(2014, 12, 20)), ("c5", "MOLD", datetime(2014, 12, 21)),
    # After t: must not link c0 and c4.
    ("c0", "MNEXT", datetime(2015, 4, 3)), ("c4", "MNEXT", datetime(2015, 4, 4)),
]


def _warehouse(holdings=HOLDINGS, txns=TXNS) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE SCHEMA raw")
    con.execute("CREATE TABLE raw.customers (customer_id VARCHAR, month DATE)")
    con.executemany("INSERT INTO raw.customers VALUES (?, ?)", [(c, m) for m in (JAN, FEB, MAR, APR) for c in CUSTOMERS])
    cols = ", ".join(f'"{p}" TINYINT' for p in PRODUCT_NAMES)
    con.execute(f"CREATE TABLE raw.holdings (customer_id VARCHAR, month DATE, {cols})")
    rows = [(c, m, *[int(m in holdings[c].get(p, ())) for p in PRODUCT_NAMES]) for m in (JAN, FEB, MAR, APR) for c in CUSTOMERS]
    con.executemany(f"INSERT INTO raw.holdings VALUES (?, ?, {', '.join('?' * len(PRODUCT_NAMES))})", rows)
    con.execute("CREATE TABLE raw.transactions (customer_id VARCHAR, month DATE, ts TIMESTAMP, amount DOUBLE, mcc SMALLINT, merchant_id VARCHAR)")
    con.executemany("INSERT INTO raw.transactions VALUES (?, ?, ?, 10.0, 5411, ?)",
                    [(c, date(ts.year, ts.month, 1), ts, m) for c, m, ts in txns])
    return con


def _build(con, tmp_path, name):
    ctx = BuildContext(con, T, FitPolicy(fit_end=T, first_month=JAN), FitStore(LocalArtifactStore(tmp_path), con), tree_epochs=30)
    out = build_group(name, ctx)
    return {c: out.values[i] for i, c in enumerate(ctx.pop.customer_ids)}


def _with(holdings, customer, product, months):
    changed = {c: dict(v) for c, v in holdings.items()}
    changed[customer][product] = months
    return changed


def test_peer_graph_reads_the_90_days_up_to_t_and_ignores_hubs():
    con = _warehouse()
    pop = population(con, T)
    a = merchant_peer_graph(con, pop).to_csr().toarray()
    idx = {c: i for i, c in enumerate(pop.customer_ids)}
    pairs = {tuple(sorted((pop.customer_ids[i], pop.customer_ids[j]))) for i, j in zip(*np.nonzero(a))}
    assert pairs == {("c0", "c1"), ("c2", "c3"), ("c4", "c5"), ("c6", "c7")}  # no MOLD (too old), no MNEXT (after t)
    assert np.allclose(a, a.T) and np.all(np.diag(a) == 0)
    # A merchant everyone visits is a hub: kept below the cap (it links everyone), dropped above it.
    hub = TXNS + [(c, "HUB", datetime(2015, 3, 15)) for c in CUSTOMERS]
    con_hub = _warehouse(txns=hub)
    assert (merchant_peer_graph(con_hub, pop, max_merchant_degree=8).to_csr().toarray() + np.eye(8) > 0).all()
    np.testing.assert_array_equal(merchant_peer_graph(con_hub, pop, max_merchant_degree=7).to_csr().toarray(), a)
    # Shared merchants add up: a second shared merchant doubles the weight.
    con_two = _warehouse(txns=TXNS + [("c0", "ME", datetime(2015, 3, 1)), ("c1", "ME", datetime(2015, 3, 2))])
    assert merchant_peer_graph(con_two, pop).to_csr().toarray()[idx["c0"], idx["c1"]] == 2.0
    with pytest.raises(ValueError, match="max_merchant_degree"):
        merchant_peer_graph(con, pop, max_merchant_degree=1)


def test_implicit_peer_products_equal_the_explicit_matrix():
    """A @ x is computed as B (B^T x) - d x without forming A; same numbers as the explicit A."""
    rng = np.random.default_rng(0)
    b = (sp.random(300, 80, density=0.05, random_state=1) > 0).astype(np.float64)
    g = PeerGraph(sp.csr_matrix(b))
    a = g.to_csr()
    assert np.all(a.diagonal() == 0) and a.nnz > 0
    x = rng.random((300, 4))
    np.testing.assert_allclose(g @ x, a @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g @ x[:, 0], a @ x[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.weight(), np.asarray(a.sum(axis=1)).reshape(-1))
    with pytest.raises(ValueError, match="299 rows"):
        g @ x[:299]


def test_strong_peer_columns_need_two_shared_merchants_and_a_product_the_customer_lacks(tmp_path):
    """c7 opened funds at T. c6 shares one merchant with c7 (a weak tie): no strong signal. A second shared small
    merchant makes the tie strong: c6, who lacks funds, gets gcf_strong_acq_investments = 1 (its only strong peer
    acquired); if c6 already holds funds the same peer acquisition says nothing. Hubs above the cap make no tie."""
    two = TXNS + [("c6", "ME", datetime(2015, 3, 1)), ("c7", "ME", datetime(2015, 3, 2))]
    inv = STRONG_PEER_COLUMNS.index("gcf_strong_acq_investments")

    def strong_of(con):
        pop = population(con, T)
        out = strong_peer_acquisitions(strong_tie_graph(con, pop), *product_holdings_and_acquisitions(con, pop))
        return {c: out[i] for i, c in enumerate(pop.customer_ids)}

    weak = strong_of(_warehouse())
    assert all(np.all(v == 0) for v in weak.values())  # every pair shares one merchant only
    strong = strong_of(_warehouse(txns=two))
    assert strong["c6"][inv] == 1.0 and strong["c6"].sum() == 1.0
    assert np.all(strong["c7"] == 0)  # c6 acquired nothing at T
    assert all(np.all(strong[c] == 0) for c in CUSTOMERS if c not in ("c6", "c7"))
    held_funds = _with(HOLDINGS, "c6", "funds", (JAN, FEB, MAR))
    assert strong_of(_warehouse(holdings=held_funds, txns=two))["c6"][inv] == 0.0
    # Two shared merchants that are both above the strong-tie degree cap link no one strongly.
    hubs = two + [(c, h, datetime(2015, 3, 15)) for c in CUSTOMERS for h in ("H1", "H2")]
    pop = population(_warehouse(txns=hubs), T)
    ties = strong_tie_graph(_warehouse(txns=hubs), pop, max_merchant_degree=7).toarray()
    assert {tuple(sorted((pop.customer_ids[i], pop.customer_ids[j]))) for i, j in zip(*np.nonzero(ties))} == {("c6", "c7")}
    # The built group carries the same numbers in its gcf_strong_acq_* columns.
    built = _build(_warehouse(txns=two), tmp_path, "graph_collaborative")
    np.testing.assert_allclose(built["c6"][[GCF.index(c) for c in STRONG_PEER_COLUMNS]], strong["c6"], atol=1e-6)
    with pytest.raises(ValueError, match="min_shared"):
        strong_tie_graph(_warehouse(), pop, min_shared=0)


def test_holding_tenure_counts_the_uninterrupted_run_up_to_t():
    con = _warehouse()
    pop = population(con, T)
    ten = dict(zip(pop.customer_ids, holding_tenure(con, pop, 12)))
    ca, ld, cc = (PRODUCT_NAMES.index(p) for p in ("current_account", "long_deposit", "credit_card"))
    assert ten["c0"][ca] == 3 and ten["c2"][ca] == 1 and ten["c7"][ld] == 2 and ten["c5"][cc] == 2
    assert ten["c0"].sum() == 3  # products not held at t have tenure 0
    assert holding_tenure(con, pop, 2)[list(pop.customer_ids).index("c0")][ca] == 2  # capped by the window


def test_identical_bits_get_different_rows(tmp_path):
    gcf = _build(_warehouse(), tmp_path / "gcf", "graph_collaborative")
    # c0 and c6: same bits, same history, different peers. The LightGCN part is the same, the peer part is not.
    np.testing.assert_array_equal(gcf["c0"][:LIGHTGCN_END], gcf["c6"][:LIGHTGCN_END])
    assert not np.allclose(gcf["c0"][PEER_COLS], gcf["c6"][PEER_COLS])
    # c0's single peer c1 holds accounts and deposits and acquired the deposit at t.
    peer = dict(zip(PEER_SIGNAL_COLUMNS, gcf["c0"][PEER_COLS]))
    assert peer["gcf_peer_hold_accounts"] == 1 and peer["gcf_peer_hold_deposits"] == 1 and peer["gcf_peer_acq_deposits"] == 1
    assert peer["gcf_peer_hold_payments"] == 0 and peer["gcf_peer_acq_accounts"] == 0
    assert peer["gcf_peer_log_weight"] == pytest.approx(np.log(2.0))

    prodh = _build(_warehouse(), tmp_path / "prodh", "product_hierarchy")
    # c0 vs c2: same bits (c2 opened its account at t; one product, so no drift); c2's peer holds what c2 holds.
    assert prodh["c0"][PEER_DIST] > 0.1 and prodh["c2"][PEER_DIST] < 1e-6
    # c0 vs c6: same bits and history, different peers -> different distance to the peers' midpoint.
    assert prodh["c6"][PEER_DIST] > 0.1
    assert abs(prodh["c0"][PEER_DIST] - prodh["c6"][PEER_DIST]) > 1e-3
    np.testing.assert_array_equal(prodh["c0"][:PEER_DIST], prodh["c6"][:PEER_DIST])
    # Drift: c1 holds an old account and a deposit opened at t; with the deposit as old as the account, no drift.
    assert prodh["c1"][DRIFT] > 1e-3
    same_age = _with(HOLDINGS, "c1", "short_deposit", (JAN, FEB, MAR))
    prodh_same = _build(_warehouse(same_age), tmp_path / "prodh_same", "product_hierarchy")
    assert prodh_same["c1"][DRIFT] < 1e-6
    # ... and the tenure weights move the midpoint itself: the deposit opened at t pulls the position less.
    assert not np.allclose(prodh_same["c1"][:PRODUCT_EMBED_DIM], prodh["c1"][:PRODUCT_EMBED_DIM])


def test_peer_columns_follow_peers_only(tmp_path):
    base_g = _build(_warehouse(), tmp_path / "g0", "graph_collaborative")
    base_p = _build(_warehouse(), tmp_path / "p0", "product_hierarchy")
    # A peer's holding changes (c1 closes its deposit at t): c0's neighbourhood columns change.
    peer_changed = _with(HOLDINGS, "c1", "short_deposit", ())
    g = _build(_warehouse(peer_changed), tmp_path / "g1", "graph_collaborative")
    p = _build(_warehouse(peer_changed), tmp_path / "p1", "product_hierarchy")
    assert not np.allclose(g["c0"][PEER_COLS], base_g["c0"][PEER_COLS])
    assert p["c0"][PEER_DIST] != pytest.approx(base_p["c0"][PEER_DIST])
    # A non-peer's holding changes (c5 acquires a deposit at t): c0's neighbourhood columns do not move, c4's do.
    other_changed = _with(HOLDINGS, "c5", "short_deposit", (MAR,))
    g = _build(_warehouse(other_changed), tmp_path / "g2", "graph_collaborative")
    p = _build(_warehouse(other_changed), tmp_path / "p2", "product_hierarchy")
    np.testing.assert_array_equal(g["c0"][PEER_COLS], base_g["c0"][PEER_COLS])
    assert p["c0"][PEER_DIST] == base_p["c0"][PEER_DIST]
    assert not np.allclose(g["c4"][PEER_COLS], base_g["c4"][PEER_COLS])


def test_nothing_after_t_is_read(tmp_path):
    """Month t+1 holds a shared merchant (c0-c4) and c4's new deposit; removing month t+1 changes nothing at t."""
    full = _warehouse()
    cut = _warehouse()
    for table in ("customers", "holdings", "transactions"):
        cut.execute(f"DELETE FROM raw.{table} WHERE month > ?", [T])
    for name in ("graph_collaborative", "product_hierarchy"):
        a, b = _build(full, tmp_path / f"{name}_full", name), _build(cut, tmp_path / f"{name}_cut", name)
        for c in CUSTOMERS:
            np.testing.assert_array_equal(a[c], b[c])

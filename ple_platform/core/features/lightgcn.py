"""Inductive LightGCN on the customer–product bipartite graph (feature group 11, ``graph_collaborative``).

Nodes are the customers and the 24 products; an edge means "customer holds product". The only learned parameters are
the products' layer-0 embeddings E (n_products, dim). A customer's layer-0 embedding is the mean of its held products'
rows of E, so every customer — including one never seen at fit time — has an embedding and nothing is a lookup table
keyed by customer id (the reference project's graph features were zero for ~99% of customers, and its graph was a
customer–customer kNN, not this bipartite graph). Then ``n_layers`` rounds of ``torch_geometric.nn.LGConv``
(symmetric D^-1/2 A D^-1/2 normalisation, no self loops) and the final embedding is the mean over layers 0..K.

Training is BPR with denoising (see ``fit_lightgcn``): each epoch hides a random share of edges from the graph and
asks the model to rank those hidden products above non-held ones, which is the inductive task itself.

Why it is cheap: every layer is linear and layer 0 is linear in E, so each node's final embedding is
``C[node] @ E`` for a coefficient matrix C (n_nodes, n_products). We obtain C by running the same LGConv
propagation on the n_products-dimensional one-hot basis instead of on the dim-dimensional embeddings — identical
numbers (up to float rounding), but it is done once per graph (once per epoch in training, on that epoch's input
graph), after which every BPR step is a (batch, 24) x (24, dim) product. Training therefore touches the edges only
through one 24-channel propagation per epoch, and fitting on a whole month's population is affordable.

Featurisation folds each month's customers into the fit month's graph (``lightgcn_customer_features`` with
``reference``): the symmetric normalisation makes propagation over a month's own graph depend on its product
degrees, which grow with the population and its holdings, so an unchanged customer would drift month to month.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

N_PRODUCTS_DEFAULT = 24


def _clean_edges(edges: np.ndarray, n_customers: int, n_products: int) -> np.ndarray:
    """Validated, de-duplicated (E, 2) int64 customer→product edges, sorted by (customer, product)."""
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if len(e) and (e[:, 0].min() < 0 or e[:, 0].max() >= n_customers):
        raise ValueError("edge customer index outside [0, n_customers)")
    if len(e) and (e[:, 1].min() < 0 or e[:, 1].max() >= n_products):
        raise ValueError("edge product index outside [0, n_products)")
    key = np.unique(e[:, 0] * n_products + e[:, 1])
    return np.stack([key // n_products, key % n_products], axis=1)


def propagation_coefficients(
    edges: np.ndarray, n_customers: int, n_products: int, n_layers: int, *, edges_clean: bool = False
):
    """C (n_customers + n_products, n_products) float32 torch tensor with final_embedding = C @ E.

    Layer 0: customer rows = holdings / degree (mean of held products; all-zero for a customer with no products),
    product rows = identity. Layers 1..n_layers: LGConv with symmetric normalisation on the undirected bipartite
    graph (customers 0..N-1, products N..N+P-1). C = mean of layers 0..n_layers. Also returns the cleaned edges
    (``edges_clean=True`` skips validation/de-duplication for edges that already went through it).
    """
    import warnings

    import torch

    with warnings.catch_warnings():  # torch-geometric 2.8 still calls the deprecated torch.jit.script at import
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch_geometric.nn import LGConv

    e = edges if edges_clean else _clean_edges(edges, n_customers, n_products)
    n = n_customers + n_products
    cust = torch.from_numpy(e[:, 0])
    prod = torch.from_numpy(e[:, 1] + n_customers)
    edge_index = torch.stack([torch.cat([cust, prod]), torch.cat([prod, cust])])
    deg = np.bincount(e[:, 0], minlength=n_customers).astype(np.float32)
    x = torch.zeros(n, n_products)
    x[cust, torch.from_numpy(e[:, 1])] = torch.from_numpy(1.0 / deg[e[:, 0]])
    x[n_customers:] = torch.eye(n_products)
    conv = LGConv(normalize=True)
    acc = x.clone()
    with torch.no_grad():
        for _ in range(n_layers):
            x = conv(x, edge_index)
            acc += x
    return acc / (n_layers + 1), e


def _split_edges(e: np.ndarray, hide_frac: float, gen) -> tuple[np.ndarray, np.ndarray]:
    """Random (input, hidden) split of edges; every customer keeps at least one input edge (vectorised)."""
    import torch

    r = torch.rand(len(e), generator=gen).numpy()
    hide = r < hide_frac
    cust = e[:, 0]
    kept = np.bincount(cust[~hide], minlength=int(cust.max()) + 1 if len(cust) else 0)
    # A customer with every edge hidden would be an isolated zero vector: give back its lowest-key edge.
    order = np.lexsort((r, cust))
    first = order[np.r_[True, cust[order][1:] != cust[order][:-1]]] if len(order) else order
    restore = first[kept[cust[first]] == 0]
    hide[restore] = False
    return e[~hide], e[hide]


def fit_lightgcn(
    edges: np.ndarray,
    n_customers: int,
    n_products: int = N_PRODUCTS_DEFAULT,
    dim: int = 64,
    n_layers: int = 3,
    epochs: int = 40,
    seed: int = 0,
    batch_size: int = 4096,
    *,
    lr: float = 0.01,
    reg: float = 1e-4,
    hide_frac: float = 0.3,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train the product layer-0 embeddings with BPR on ``edges`` (E, 2) = (customer index, product index).

    Denoising BPR (the default, ``hide_frac > 0``): every epoch a random ``hide_frac`` of the edges is removed from
    the propagation graph (each customer keeps at least one) and those hidden edges are the BPR positives. Why: a
    customer's layer 0 is built from its own products, so with the plain objective (positives = edges that are also
    in the graph) BPR is solved by memorising the customer's own inputs (train AUC -> 1) rather than learning which
    products go together; hiding the targets makes it predict held products from the rest of the graph, which is
    exactly how unseen customers are embedded. ``hide_frac=0`` gives plain LightGCN BPR over all edges.
    For each positive (u, p) one negative is drawn uniformly among the products u does not hold in ``edges``
    (customers holding every product give no pairs). Loss per batch: mean(-log sigmoid(s(u, p) - s(u, n))) +
    reg * mean(|e_u^0|^2 + |E_p|^2 + |E_n|^2) / 2 (LightGCN's regulariser on layer-0 embeddings), s = dot product of
    final (layer-mean) embeddings; Adam.

    Deterministic for a given ``seed``: initialisation, edge splits, shuffling and negatives all draw from one private
    ``torch.Generator``. Returns ``state`` (numpy only; safe for safetensors/npz): ``product_emb`` (n_products, dim)
    float32 and ``n_layers`` (int64 scalar array); and metrics: ``final_loss``, ``train_auc`` (share of sampled
    pairs ranked correctly in the last epoch), ``epochs``, ``n_edges``, ``seconds``.
    """
    import torch

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    e = _clean_edges(edges, n_customers, n_products)
    holds = torch.zeros(n_customers, n_products, dtype=torch.bool)
    holds[torch.from_numpy(e[:, 0]), torch.from_numpy(e[:, 1])] = True
    full = holds.all(dim=1).numpy()

    emb = torch.nn.Parameter(torch.randn(n_products, dim, generator=gen) * 0.1)
    opt = torch.optim.Adam([emb], lr=lr)
    final_loss, correct, seen = float("nan"), 0, 0
    coef = None
    if hide_frac <= 0:
        coef, _ = propagation_coefficients(e, n_customers, n_products, n_layers)
        inp, pos = e, e
    for _ in range(epochs):
        if hide_frac > 0:
            inp, pos = _split_edges(e, hide_frac, gen)
            coef, _ = propagation_coefficients(inp, n_customers, n_products, n_layers, edges_clean=True)
        pos = pos[~full[pos[:, 0]]]  # no negative exists for these customers
        if not len(pos):
            continue
        coef_c, coef_p = coef[:n_customers], coef[n_customers:]
        # Customers' layer 0 = mean of their input products' rows of E (needed for the regulariser).
        in_holds = torch.zeros(n_customers, n_products)
        in_holds[torch.from_numpy(inp[:, 0]), torch.from_numpy(inp[:, 1])] = 1.0
        in_deg = in_holds.sum(dim=1).clamp(min=1.0)
        pos_u, pos_p = torch.from_numpy(pos[:, 0]), torch.from_numpy(pos[:, 1])
        perm = torch.randperm(len(pos_u), generator=gen)
        correct, seen, loss_sum = 0, 0, 0.0
        for start in range(0, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            u, p = pos_u[idx], pos_p[idx]
            # Uniform negative among non-held products: smallest random key, held products pushed past 1.
            keys = torch.rand(len(u), n_products, generator=gen) + holds[u].float()
            neg = keys.argmin(dim=1)
            prod_final = coef_p @ emb
            cu = coef_c[u] @ emb
            s_pos = (cu * prod_final[p]).sum(dim=1)
            s_neg = (cu * prod_final[neg]).sum(dim=1)
            e0_u = (in_holds[u] @ emb) / in_deg[u, None]
            reg_term = (e0_u.pow(2).sum(1) + emb[p].pow(2).sum(1) + emb[neg].pow(2).sum(1)).mean() / 2
            loss = -torch.nn.functional.logsigmoid(s_pos - s_neg).mean() + reg * reg_term
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(u)
            correct += int((s_pos > s_neg).sum())
            seen += len(u)
        final_loss = loss_sum / max(seen, 1)
    state = {
        "product_emb": emb.detach().numpy().astype(np.float32).copy(),
        "n_layers": np.asarray(n_layers, dtype=np.int64),
    }
    metrics = {
        "final_loss": final_loss,
        "train_auc": correct / max(seen, 1),
        "epochs": epochs,
        "n_edges": int(len(e)),
        "seconds": time.perf_counter() - t0,
    }
    return state, metrics


def lightgcn_embeddings(
    state: dict[str, np.ndarray], edges: np.ndarray, n_customers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Final (layer-mean) embeddings on the graph ``edges``: (customers (N, dim), products (n_products, dim)).

    Raw LightGCN output: a customer with no edges is the zero vector here (see ``lightgcn_customer_features``).
    """
    emb = np.asarray(state["product_emb"], dtype=np.float32)
    coef, _ = propagation_coefficients(edges, n_customers, emb.shape[0], int(np.asarray(state["n_layers"]).ravel()[0]))
    out = coef.numpy() @ emb
    return out[:n_customers], out[n_customers:]


def _holdings(edges: np.ndarray, n_customers: int, n_products: int) -> np.ndarray:
    e = _clean_edges(edges, n_customers, n_products)
    holds = np.zeros((n_customers, n_products), np.float32)
    holds[e[:, 0], e[:, 1]] = 1.0
    return holds


def _product_layers(emb: np.ndarray, holds: np.ndarray, n_layers: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Product degrees and product layers 0..n_layers-1 of LightGCN on the graph of ``holds``."""
    import warnings

    import torch

    with warnings.catch_warnings():  # torch-geometric 2.8 still calls the deprecated torch.jit.script at import
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch_geometric.nn import LGConv

    n_customers = len(holds)
    c, p = np.nonzero(holds)
    cust, prod = torch.from_numpy(c), torch.from_numpy(p + n_customers)
    edge_index = torch.stack([torch.cat([cust, prod]), torch.cat([prod, cust])])
    x = torch.from_numpy(np.concatenate([holds / np.maximum(holds.sum(1, keepdims=True), 1.0) @ emb, emb]))
    layers, conv = [emb], LGConv(normalize=True)
    with torch.no_grad():
        for _ in range(n_layers - 1):
            x = conv(x, edge_index)
            layers.append(x[n_customers:].numpy())
    return holds.sum(axis=0), layers


def _fold_in(holds: np.ndarray, emb: np.ndarray, degree_p: np.ndarray, layers: list[np.ndarray]) -> np.ndarray:
    """Final (layer-mean) embeddings of customers ``holds`` against a graph's product degrees and layers: layer 0
    is the mean of the held products' E, layer k >= 1 sums the held products' layer k-1 / sqrt(deg(c) deg(p)).
    A product nobody held in that graph has no layers there; its weight is zero beyond layer 0."""
    d = np.maximum(holds.sum(axis=1), 1.0)[:, None]
    w = holds * np.where(degree_p > 0, 1.0 / np.sqrt(np.maximum(degree_p, 1.0)), 0.0)[None, :] / np.sqrt(d)
    total = holds / d @ emb
    for layer in layers:
        total += w @ layer
    return (total / (len(layers) + 1)).astype(np.float32)


def lightgcn_customer_features(state: dict[str, np.ndarray], edges: np.ndarray, n_customers: int,
                               reference: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """(n_customers, dim + 2) = final customer embedding, its L2 norm, degree (number of distinct held products).

    ``reference`` = (edges, n_customers) of the graph whose product side the customers are folded into — the fit
    month's graph in the pipeline. A customer's layer 0 is the mean of its products' learned embeddings and its
    layer k the normalised sum of its products' layer k-1 on the reference graph, so the embedding is a function of
    the customer's own holdings and the fitted state only: the same holdings give the same embedding every month
    (propagating over each month's own graph moved it by up to 3% a year as product degrees grew, which the drift
    report flagged and a model trained on earlier months never saw). With ``reference=None`` the graph itself is
    the reference: exact LightGCN on ``edges``. Customers never seen at fit time are covered the same way.
    A customer with no products gets the reference population's centroid — the mean final embedding of its
    customers holding at least one product — i.e. the cold-start "average customer", whose dot products with the
    product embeddings rank products like the population does. Its ``degree`` column is 0, so models can still
    tell it apart.
    """
    emb = np.asarray(state["product_emb"], dtype=np.float32)
    n_layers = int(np.asarray(state["n_layers"]).ravel()[0])
    holds = _holdings(edges, n_customers, emb.shape[0])
    ref_holds = holds if reference is None else _holdings(reference[0], reference[1], emb.shape[0])
    degree_p, layers = _product_layers(emb, ref_holds, n_layers)
    cust_emb = _fold_in(holds, emb, degree_p, layers)
    connected = ref_holds.sum(axis=1) > 0
    centroid = (_fold_in(ref_holds[connected], emb, degree_p, layers).mean(axis=0) if connected.any()
                else np.zeros(emb.shape[1], np.float32))
    degree = holds.sum(axis=1)
    cust_emb[degree == 0] = centroid
    norm = np.linalg.norm(cust_emb, axis=1)
    return np.concatenate([cust_emb, norm[:, None], degree[:, None]], axis=1).astype(np.float32)

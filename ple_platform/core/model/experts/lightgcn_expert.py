"""LightGCN expert: propagation over the customer–product bipartite graph of each mini-batch (torch-geometric LGConv).

Per forward pass the graph is the batch's subgraph: nodes = the B customers of the batch (0..B-1) + the 24 products
(B..B+23); an undirected edge (both directions) for every 1 in ``batch["holdings"]``.

* Layer 0: customers = a linear projection of their routed groups (product_holdings, product_hierarchy,
  graph_collaborative, product_history_multihot), so the expert is inductive — no customer-id lookup table;
  products = a learned (24, d) table, optionally initialised from the feature-side LightGCN fit
  (``fit_lightgcn``'s ``product_emb``).
* K parameter-free ``LGConv`` layers; output = mean of the customer rows over layers 0..K -> LayerNorm -> Linear.

A customer's output therefore depends on its graph neighbours: from layer 2 on it sees the other batch customers who
hold the same products (customer -> product -> customer). Unlike the feature-side graph_collaborative group (a fixed
embedding from product rows only), the propagated signal here is the customers' learned projections, trained end to
end with the teacher's tasks.

Normalisation (``normalize``):

* ``"mean"`` (default): LGConv without its own normalisation and edge weight 1/deg(target), i.e. a product averages
  its holders in the batch and a customer averages its products. Every layer is then invariant to the batch size in
  expectation, so a model trained at B=256 scores the same way at B=4096.
* ``"symmetric"``: LightGCN's D^-1/2 A D^-1/2. With mini-batches, product degrees grow with B, so customer layers 1
  and 3 shrink like 1/sqrt(B) and outputs depend on the evaluation batch size — use only with a fixed batch size.

Either way a mini-batch is a sample of the population graph: outputs depend on who else is in the batch (shuffle
batches; evaluate with large batches; a batch of one customer only sees its own products). A customer with no
products is an isolated node: its layers 1..K are 0 and its output comes from its layer-0 projection alone.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ple_platform.core.model.batch import HOLDINGS_KEY, Batch, Router

with warnings.catch_warnings():  # torch-geometric 2.8 still calls the deprecated torch.jit.script at import
    warnings.simplefilter("ignore", DeprecationWarning)
    from torch_geometric.nn import LGConv
    from torch_geometric.utils import degree

EXPERT = "lightgcn"


def bipartite_edges(holdings: torch.Tensor) -> torch.Tensor:
    """(B, P) 0/1 holdings -> (2, 2E) edge_index over nodes [customers 0..B-1, products B..B+P-1], both directions."""
    cust, prod = (holdings > 0.5).nonzero(as_tuple=True)
    prod = prod + holdings.shape[0]
    return torch.stack([torch.cat([cust, prod]), torch.cat([prod, cust])])


class LightGCNExpert(nn.Module):
    """LightGCN over the batch's customer–product subgraph; see the module docstring."""

    def __init__(
        self,
        router: Router = Router(),
        out_dim: int = 64,
        *,
        embed_dim: int = 64,
        n_layers: int = 3,
        n_products: int = 24,
        normalize: str = "mean",
        init_product_emb: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if normalize not in ("mean", "symmetric"):
            raise ValueError(f"normalize must be 'mean' or 'symmetric', got {normalize!r}")
        self.router, self.n_layers, self.normalize = router, n_layers, normalize
        self.customer_proj = nn.Linear(router.input_dim(EXPERT), embed_dim)
        if init_product_emb is not None:
            init = torch.as_tensor(np.asarray(init_product_emb), dtype=torch.float32)
            if init.shape != (n_products, embed_dim):
                raise ValueError(f"init_product_emb {tuple(init.shape)} != ({n_products}, {embed_dim})")
        else:
            init = torch.randn(n_products, embed_dim) * 0.1
        self.product_emb = nn.Parameter(init.clone())
        self.conv = LGConv(normalize=normalize == "symmetric")  # no parameters: one instance serves every layer
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, out_dim))

    def aux_loss(self) -> torch.Tensor:
        return self.product_emb.new_zeros(())

    def forward(self, batch: Batch) -> torch.Tensor:
        holdings = batch[HOLDINGS_KEY]
        n_cust = holdings.shape[0]
        x = torch.cat([self.customer_proj(self.router.concat(batch, EXPERT)), self.product_emb])
        edge_index = bipartite_edges(holdings)
        edge_weight = None
        if self.normalize == "mean":
            deg = degree(edge_index[1], num_nodes=x.shape[0], dtype=x.dtype)
            edge_weight = deg[edge_index[1]].reciprocal()  # every target has deg >= 1 by construction
        acc = x
        for _ in range(self.n_layers):
            x = self.conv(x, edge_index, edge_weight)
            acc = acc + x
        return self.head(acc[:n_cust] / (self.n_layers + 1))

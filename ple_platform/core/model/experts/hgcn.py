"""HGCN expert: hyperbolic graph convolution (Chami et al. 2019) over the MCC tree, customer spend as node signal.

Graph: the fixed ISO 18245 tree of ``taxonomy.mcc_hierarchy()`` (root -> 10 L1 -> 31 L2 -> 106 codes, 148 nodes),
read from ``tree.parent``; it is shared by every customer. What differs per customer is the signal on the nodes.

Forward, batched as (B, n_nodes, ·) tensors:

1. **Spend signal.** Amounts of ``batch["txn_seq"]`` (padding and MCCs outside the hierarchy dropped, negative
   amounts clipped to 0, optional recency decay) are scatter-added to their code nodes and summed up the tree with
   one (n_codes, n_nodes) ancestor-incidence matmul, so every L2/L1/root node carries its subtree's spend. Two
   channels per node: ``share`` = spend / total (what fraction of the wallet goes there) and ``log share`` =
   log1p(spend) / log1p(total) (the same on a log scale, so small but present categories stay visible).
2. **Node features.** Learned node embeddings E live in the Poincaré ball (``geoopt.ManifoldParameter``; random
   near the origin, or initialised from a Nickel–Kiela tree embedding such as the merchant_hierarchy fit). In the
   tangent space at the origin each customer gets ``log0(E_v) * sigmoid(s_bv W_g + b_g) + s_bv W_s`` — the
   spend gates the embedding per dimension — mapped back with exp0: every customer has its own graph signal.
3. **Layers** (Chami's HypLinear -> HypAgg -> HypAct at one fixed curvature):
   ``h = (W ⊗ x) ⊕ exp0(b)`` (Möbius matvec = exp0(W log0 x), Möbius bias addition — a genuinely hyperbolic op, so
   the stack is not a Euclidean GCN in disguise); then ``x' = exp0(act(Â log0 h))`` with
   Â = D^-1/2 (A + I) D^-1/2 of the undirected tree (dense 148 x 148 buffer; aggregation in the tangent space at the
   origin, Chami's default ``local_agg=False``).
4. **Readout.** Per tree level (L1, L2, code) the spend-weighted gyro/Einstein midpoint of the final node points
   (``PoincareBall.weighted_midpoint``, weights = the customer's shares at that level) plus the root node's final
   point, all mapped to the tangent space -> concat with the routed groups (merchant_hierarchy,
   mcc_top30_multihot) -> MLP -> ``out_dim``. A customer without transactions pools to the origin (zeros).

The tree buffers are *not* saved in the state dict (``persistent=False``): they are derived from the hierarchy the
module is built with, so a checkpoint restored under a changed taxonomy uses the new tree (shapes permitting).

Optimiser: ``node_emb`` is a ``geoopt.ManifoldParameter`` and must be stepped by ``geoopt.optim.RiemannianAdam``
(Riemannian gradient + exp-map retraction keeps it inside the ball). A plain (Adam)W step on it is wrong — it treats
the ball as flat and can leave it — and Euclidean weight decay on it is meaningless. RiemannianAdam treats ordinary
parameters exactly like Adam, so the trainer can use it for the whole model, or give ``manifold_parameters()`` a
RiemannianAdam group and the rest AdamW. The hyperbolic part always runs in float32 (autocast disabled): artanh
near the rim is not fp16-safe.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ple_platform.core.data.taxonomy import MccHierarchy, mcc_hierarchy
from ple_platform.core.model.batch import SEQ_KEY, Batch, Router

with warnings.catch_warnings():  # geoopt 0.5.1 still calls the deprecated torch.jit.script at import
    warnings.simplefilter("ignore", DeprecationWarning)
    import geoopt

EXPERT = "hgcn"


def tree_buffers(h: MccHierarchy) -> dict[str, torch.Tensor]:
    """Tensors the expert needs from a hierarchy: ancestor incidence (n_codes, n_nodes), normalised adjacency with
    self loops (n_nodes, n_nodes), one-hot level masks (max_depth, n_nodes) for levels 1..max_depth."""
    tree = h.tree
    n = tree.n_nodes
    inc = np.zeros((h.n_codes, n), dtype=np.float32)
    for c, node in enumerate(h.code_node):  # 106 codes x depth 3: trivial
        for a in tree.path_to_root(int(node)):
            inc[c, a] = 1.0
    adj = np.eye(n, dtype=np.float32)
    e = tree.edges()
    adj[e[:, 0], e[:, 1]] = adj[e[:, 1], e[:, 0]] = 1.0
    d = adj.sum(1) ** -0.5
    levels = np.stack([tree.depth == k for k in range(1, int(tree.depth.max()) + 1)]).astype(np.float32)
    return {
        "code_to_node": torch.from_numpy(inc),
        "adj": torch.from_numpy(d[:, None] * adj * d[None, :]),
        "levels": torch.from_numpy(levels),
    }


class HGCNExpert(nn.Module):
    """Hyperbolic GCN over the MCC tree; see the module docstring. ``forward(batch) -> (B, out_dim)``."""

    def __init__(
        self,
        router: Router = Router(),
        out_dim: int = 64,
        *,
        embed_dim: int = 16,
        hidden_dim: int = 32,
        # One layer by default: the spend signal is already summed up the tree (every node carries its subtree),
        # and a second Möbius layer over (B, 148, hidden) tripled the expert's CPU cost.
        n_layers: int = 1,
        mlp_hidden: int = 128,
        dropout: float = 0.1,
        curvature: float = 1.0,
        hierarchy: MccHierarchy | None = None,
        init_embedding: np.ndarray | None = None,
        recency_tau_days: float | None = None,
        init_scale: float = 1e-2,
    ) -> None:
        super().__init__()
        h = hierarchy if hierarchy is not None else mcc_hierarchy()
        self.router, self.n_codes, self.n_nodes = router, h.n_codes, h.tree.n_nodes
        self.recency_tau_days = recency_tau_days
        for name, t in tree_buffers(h).items():
            self.register_buffer(name, t, persistent=False)  # derived from the taxonomy, not learned

        self.ball = geoopt.PoincareBall(c=curvature)
        if init_embedding is not None:
            init = torch.as_tensor(np.asarray(init_embedding), dtype=torch.float32)
            if init.shape[0] != self.n_nodes or init.shape[1] > embed_dim:
                raise ValueError(f"init_embedding {tuple(init.shape)} does not fit ({self.n_nodes}, <= {embed_dim})")
            # Zero padding keeps every point's norm, hence its place in the ball and all pairwise distances.
            init = nn.functional.pad(init, (0, embed_dim - init.shape[1]))
        else:
            init = self.ball.expmap0(torch.randn(self.n_nodes, embed_dim) * init_scale)
        self.node_emb = geoopt.ManifoldParameter(self.ball.projx(init), manifold=self.ball)

        n_sig = 2  # (share, log share)
        self.gate = nn.Linear(n_sig, embed_dim)
        self.sig_in = nn.Linear(n_sig, embed_dim, bias=False)
        dims = [embed_dim] + [hidden_dim] * n_layers
        self.weights = nn.ParameterList(
            [nn.Parameter(nn.init.xavier_uniform_(torch.empty(o, i))) for i, o in zip(dims[:-1], dims[1:])]
        )
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(o)) for o in dims[1:]])
        self.act = nn.SiLU()

        n_pool = self.levels.shape[0] + 1  # one midpoint per level + the root node
        self.head = nn.Sequential(
            nn.Linear(n_pool * hidden_dim + router.input_dim(EXPERT), mlp_hidden),
            nn.LayerNorm(mlp_hidden),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_hidden, out_dim),
        )

    # --------------------------------------------------------------------------------------------------------------

    def manifold_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters on a manifold (step with ``geoopt.optim.RiemannianAdam``, no Euclidean weight decay)."""
        return (p for p in self.parameters() if isinstance(p, geoopt.ManifoldParameter))

    def euclidean_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable ordinary parameters (the ball's fixed curvature is a frozen parameter and is left out)."""
        return (p for p in self.parameters() if p.requires_grad and not isinstance(p, geoopt.ManifoldParameter))

    def aux_loss(self) -> torch.Tensor:
        return self.node_emb.new_zeros(())

    def node_spend(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L, 4) raw lag tensor -> (B, n_nodes) spend in each node's subtree (root = total known spend)."""
        amount, mcc, days, hour = seq.float().unbind(-1)
        code = mcc.round().long()
        valid = (code >= 0) & (code < self.n_codes) & (hour >= 0)  # -1 = padding or MCC outside the hierarchy
        w = amount.clamp_min(0.0) * valid
        if self.recency_tau_days:
            w = w * torch.exp(-days.clamp_min(0.0) / self.recency_tau_days)
        per_code = w.new_zeros(w.shape[0], self.n_codes).scatter_add_(1, code.clamp(0, self.n_codes - 1), w)
        return per_code @ self.code_to_node

    def forward(self, batch: Batch) -> torch.Tensor:
        routed = self.router.concat(batch, EXPERT)
        with torch.autocast(device_type=routed.device.type, enabled=False):
            pooled = self._hyperbolic(batch[SEQ_KEY])
            return self.head(torch.cat([pooled, routed.float()], dim=1))

    def _hyperbolic(self, seq: torch.Tensor) -> torch.Tensor:
        ball = self.ball
        spend = self.node_spend(seq)  # (B, n)
        total = spend[:, :1]
        share = spend / total.clamp_min(1e-6)
        log_share = torch.log1p(spend) / torch.log1p(total).clamp_min(1e-6)
        sig = torch.stack([share, log_share], dim=-1)  # (B, n, 2)

        u = ball.logmap0(self.node_emb) * torch.sigmoid(self.gate(sig)) + self.sig_in(sig)
        x = ball.expmap0(u)  # (B, n, embed_dim): each customer's own point set
        for w, b in zip(self.weights, self.biases):
            x = ball.mobius_add(ball.mobius_matvec(w, x), ball.expmap0(b))  # HypLinear
            x = ball.expmap0(self.act(self.adj @ ball.logmap0(x)))  # HypAgg + HypAct at the origin

        weights = share.unsqueeze(1) * self.levels  # (B, n_levels, n): the level's shares (sum to 1 if any spend)
        mids = ball.weighted_midpoint(x.unsqueeze(1), weights, reducedim=[2], dim=-1)  # (B, n_levels, hidden)
        pooled = torch.cat([mids, x[:, :1]], dim=1)  # + root node, which has aggregated the whole tree
        return ball.logmap0(pooled).flatten(1)

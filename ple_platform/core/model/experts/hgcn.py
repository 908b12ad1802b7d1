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
        spend = self.node_spend(seq)  # (B, n)
        total = spend[:, :1]
        share = spend / total.clamp_min(1e-6)
        log_share = torch.log1p(spend) / torch.log1p(total).clamp_min(1e-6)
        sig = torch.stack([share, log_share], dim=-1)  # (B, n, 2)

        sc = self.ball.c.sqrt()
        u = self.ball.logmap0(self.node_emb) * torch.sigmoid(self.gate(sig)) + self.sig_in(sig)
        v, v_norm = _clip_tangent(u, sc)  # = logmap0(projx(expmap0(u))): each customer's own point set, as tangents
        for w, b in zip(self.weights, self.biases):
            v, v_norm = _hyp_layer(v, w, b, self.adj, self.act, sc)

        weights = share.unsqueeze(1) * self.levels  # (B, n_levels, n): the level's shares (sum to 1 if any spend)
        mids = _weighted_midpoint_tangent(v, v_norm, weights, sc)  # (B, n_levels, hidden)
        pooled = torch.cat([mids, v[:, :1]], dim=1)  # + root node, which has aggregated the whole tree
        return pooled.flatten(1)


# ----------------------------------------------------------------------------------------------------------------
# Poincaré-ball maths fused for (B, n_nodes, d) tensors. They compute exactly what geoopt's PoincareBall gives
# (expmap0 / logmap0 / mobius_matvec / mobius_add / weighted_midpoint, each followed by geoopt's float32 projection
# to norm (1 - 4e-3) / sqrt(c)) — ``test_hyperbolic.py`` checks them against geoopt — but with one norm per step
# instead of geoopt's generic TorchScript chain, and points kept as tangent vectors where a log0 would undo an exp0
# (log0(exp0(u)) = u inside the projection radius). That cut the expert's CPU step several-fold.

_BALL_EPS = 4e-3  # geoopt's projection margin for float32
_MAX_ATANH = float(np.arctanh(1 - _BALL_EPS))  # tangent-norm radius of the projected ball, times sqrt(c)


def _clip_tangent(u: torch.Tensor, sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logmap0(projx(expmap0(u))) and its norm: the tangent vector, clipped where the point would leave the ball."""
    n = u.norm(dim=-1, keepdim=True).clamp_min(1e-15)
    scale = (_MAX_ATANH / (sc * n)).clamp_max(1.0)
    return u * scale, n * scale


def _hyp_layer(v, w, b, adj, act, sc):
    """One HGCN layer on tangent vectors v = log0(x) (B, n, d_in) -> (log0(x'), |log0(x')|), x' =
    projx(exp0(act(Â log0(projx((W ⊗ x) ⊕ exp0(b)))))).

    W ⊗ x = exp0(W v) = s·m with m = W v, so y ⊕ β (β = exp0(b)) is α·m + γ·β with per-node scalars built from |m|
    and <m, β>, and so are its projection and log0: the (B, n, d) tensors are touched by one matmul, one norm, one
    matvec and one multiply-add instead of geoopt's ~15 elementwise passes.
    """
    c = sc.square()
    m = v @ w.T  # (B, n, h)
    r = m.norm(dim=-1, keepdim=True).clamp_min(1e-15)
    y_norm = torch.tanh((sc * r).clamp_max(15.0)).clamp_max(1 - _BALL_EPS) / sc  # |projx(exp0(m))|
    s_y = y_norm / r
    beta = _expmap0_vec(b, sc)  # (h,)
    b2 = beta.square().sum()
    p = m @ beta.unsqueeze(-1)  # (B, n, 1) = <m, β>
    xy, x2 = s_y * p, y_norm.square()
    den = (1 + 2 * c * xy + c.square() * x2 * b2).clamp_min(1e-15)
    alpha = (1 + 2 * c * xy + c * b2) * s_y / den  # Möbius addition: out = alpha m + gamma β
    gamma = (1 - c * x2) / den
    out_norm = (alpha.square() * r.square() + 2 * alpha * gamma * p + gamma.square() * b2).clamp_min(0).sqrt()
    out_norm = out_norm.clamp_min(1e-15)
    z_norm = torch.minimum(out_norm, (1 - _BALL_EPS) / sc)  # projx
    log_scale = (z_norm / out_norm) * torch.atanh((sc * z_norm).clamp(max=1 - 1e-7)) / (sc * z_norm)
    # t = log0(z) = log_scale * (alpha m + gamma β); Â t = Â (log_scale alpha m) + (Â log_scale gamma) β
    agg = _tree_aggregate(adj, m * (log_scale * alpha)) + _tree_aggregate(adj, log_scale * gamma) * beta
    return _clip_tangent(act(agg), sc)


def _tree_aggregate(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Â x for (B, n, d) x with the symmetric (n, n) Â, as one (B·d, n) @ (n, n) GEMM: ``adj @ x`` would broadcast
    Â to (B, n, n) and run B small matmuls (3x slower for d = 1)."""
    return (x.transpose(1, 2) @ adj).transpose(1, 2)


def _expmap0_vec(u: torch.Tensor, sc: torch.Tensor) -> torch.Tensor:
    """projx(expmap0(u)) for a single vector."""
    n = u.norm().clamp_min(1e-15)
    return u * (torch.tanh((sc * n).clamp_max(15.0)).clamp_max(1 - _BALL_EPS) / (sc * n))


def _weighted_midpoint_tangent(v: torch.Tensor, v_norm: torch.Tensor, weights: torch.Tensor,
                               sc: torch.Tensor) -> torch.Tensor:
    """logmap0 of the weighted gyromidpoints (geoopt's ``weighted_midpoint``) of the points x = expmap0(v).

    v: (B, n, d) tangent vectors inside the projection radius, v_norm their norms; weights: (B, m, n) -> (B, m, d).
    x = σ v with a per-node σ, so the sums over the nodes are batched matmuls on v: m = Σ α λ x / Σ α (λ - 1),
    midpoint = ½ ⊗ m, and log0(½ ⊗ m) = ½ artanh(√c|m|) m̂ / √c (after geoopt's projection).
    """
    x_norm = torch.tanh((sc * v_norm).clamp_max(15.0)).clamp_max(1 - _BALL_EPS) / sc
    lam = 2 / (1 - sc.square() * x_norm.square()).clamp_min(1e-15)  # (B, n, 1) conformal factor
    sigma = x_norm / v_norm
    num = torch.bmm(weights * (lam * sigma).transpose(1, 2), v)  # (B, m, d)
    # Shares are >= 0 and lambda >= 2, so the denominator is 0 only for a level without spend (-> the origin).
    two_mean = num / (weights * (lam - 1).transpose(1, 2)).sum(-1, keepdim=True).clamp_min(1e-10)
    n = two_mean.norm(dim=-1, keepdim=True).clamp_min(1e-15)
    half = torch.tanh(0.5 * torch.atanh((sc * n).clamp(max=1 - 1e-7))).clamp_max(1 - _BALL_EPS)  # projx(½ ⊗ m)
    return two_mean * (torch.atanh(half) / (sc * n))

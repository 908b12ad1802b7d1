"""The two graph experts: HGCN over the MCC tree (geoopt) and LightGCN over the batch's customer–product graph."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from ple_platform.core.data.taxonomy import Tree, mcc_hierarchy
from ple_platform.core.model.batch import Router
from ple_platform.core.model.experts.hgcn import HGCNExpert
from ple_platform.core.model.experts.lightgcn_expert import LightGCNExpert

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import geoopt

N_CODES = mcc_hierarchy().n_codes



def make_batch(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random standardised groups, 0..60 transactions per customer (rest -1 padding), ~20% holdings."""
    g = torch.Generator().manual_seed(seed)
    batch = {grp.name: torch.randn(b, grp.dim, generator=g) for grp in Router().groups}
    n_txn = torch.randint(0, 61, (b,), generator=g)
    real = torch.arange(200)[None, :] < n_txn[:, None]
    vals = torch.stack(
        [
            torch.rand(b, 200, generator=g) * 200,
            torch.randint(0, N_CODES, (b, 200), generator=g).float(),
            torch.rand(b, 200, generator=g) * 365,
            torch.randint(0, 24, (b, 200), generator=g).float(),
        ],
        dim=-1,
    )
    batch["txn_seq"] = torch.where(real[..., None], vals, torch.full_like(vals, -1.0))
    batch["holdings"] = (torch.rand(b, 24, generator=g) < 0.2).float()
    return batch


def spend_at(batch: dict[str, torch.Tensor], row: int, code: int, amount: float = 100.0, n: int = 5) -> None:
    """Replace customer ``row``'s transactions by ``n`` payments at MCC index ``code``."""
    seq = torch.full((200, 4), -1.0)
    seq[:n] = torch.tensor([amount, float(code), 10.0, 12.0])
    batch["txn_seq"][row] = seq


# ----------------------------------------------------------------------------------------------------------------
# HGCN
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [2, 64])
def test_hgcn_shapes_finite_and_grads(b):
    torch.manual_seed(0)
    model = HGCNExpert(out_dim=24, n_layers=2)  # a stack: every layer must get gradient
    batch = make_batch(b)
    batch["txn_seq"][0] = -1.0  # a customer without transactions pools to the origin
    out = model(batch)
    assert out.shape == (b, 24) and torch.isfinite(out).all()
    assert model.aux_loss().shape == () and float(model.aux_loss()) == 0.0
    out.pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for name in ("node_emb", "weights.0", "weights.1", "gate.weight", "sig_in.weight", "head.0.weight"):
        assert grads[name].abs().sum() > 0, name
    assert [p is model.node_emb for p in model.manifold_parameters()] == [True]
    assert len(list(model.euclidean_parameters())) == len(grads) - 1


def test_hgcn_deterministic():
    batch = make_batch(8)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(HGCNExpert().eval()(batch))
    assert torch.equal(outs[0], outs[1])


def test_hgcn_spend_signal_ignores_padding_and_sums_up_the_tree():
    h = mcc_hierarchy()
    model = HGCNExpert()
    seq = torch.full((2, 200, 4), -1.0)
    seq[0, :3] = torch.tensor([[10.0, 0, 1, 9], [5.0, 1, 1, 9], [7.0, -1, 1, 9]])  # last: MCC outside hierarchy
    spend = model.node_spend(seq)
    assert torch.equal(spend[1], torch.zeros(h.tree.n_nodes))  # padding only
    assert spend[0, 0] == 15.0
    for code, amt in ((0, 10.0), (1, 5.0)):
        for node in h.tree.path_to_root(int(h.code_node[code])):
            assert spend[0, node] >= amt


def test_hgcn_output_moves_with_spend_across_l1():
    h = mcc_hierarchy()
    a = 0
    b = int(np.flatnonzero(h.code_l1 != h.code_l1[a])[0])
    torch.manual_seed(0)
    model = HGCNExpert().eval()
    batch = make_batch(2)
    for k, v in batch.items():
        batch[k] = v[:1].expand_as(v).clone()  # two identical customers
    spend_at(batch, 0, a)
    spend_at(batch, 1, a)
    same = model(batch)
    assert torch.allclose(same[0], same[1])
    spend_at(batch, 1, b)
    moved = model(batch)
    assert torch.allclose(moved[0], same[0])
    assert not torch.allclose(moved[1], moved[0], atol=1e-4)


def test_hgcn_output_moves_with_the_tree():
    h = mcc_hierarchy()
    tree = h.tree
    l2 = np.flatnonzero(tree.depth == 2)
    u = int(l2[0])
    v = int(next(x for x in l2 if tree.parent[x] != tree.parent[u]))
    parent = tree.parent.copy()
    parent[u], parent[v] = parent[v], parent[u]
    swapped = replace(h, tree=Tree(tree.names, parent, tree.depth))

    torch.manual_seed(0)
    model = HGCNExpert().eval()
    other = HGCNExpert(hierarchy=swapped).eval()
    other.load_state_dict(model.state_dict())  # same weights; tree buffers are not in the state dict
    assert not torch.equal(model.adj, other.adj) and not torch.equal(model.code_to_node, other.code_to_node)

    batch = make_batch(4)
    code_under_u = int(np.flatnonzero(tree.parent[h.code_node] == u)[0])
    spend_at(batch, 0, code_under_u)
    assert not torch.allclose(model(batch)[0], other(batch)[0], atol=1e-4)


def _hgcn_with_geoopt_ops(model: HGCNExpert, seq: torch.Tensor) -> torch.Tensor:
    """The expert's hyperbolic part written with geoopt's PoincareBall operations, one by one (the reference)."""
    ball = model.ball
    spend = model.node_spend(seq)
    total = spend[:, :1]
    share = spend / total.clamp_min(1e-6)
    sig = torch.stack([share, torch.log1p(spend) / torch.log1p(total).clamp_min(1e-6)], dim=-1)
    x = ball.expmap0(ball.logmap0(model.node_emb) * torch.sigmoid(model.gate(sig)) + model.sig_in(sig))
    for w, b in zip(model.weights, model.biases):
        x = ball.mobius_add(ball.mobius_matvec(w, x), ball.expmap0(b))
        x = ball.expmap0(model.act(model.adj @ ball.logmap0(x)))
    mids = ball.weighted_midpoint(x.unsqueeze(1), share.unsqueeze(1) * model.levels, reducedim=[2], dim=-1)
    return ball.logmap0(torch.cat([mids, x[:, :1]], dim=1)).flatten(1)


@pytest.mark.parametrize("weight_scale", [1.0, 6.0])  # 6: most points hit geoopt's projection radius
def test_hgcn_fused_poincare_maths_equal_geoopt(weight_scale):
    torch.manual_seed(0)
    model = HGCNExpert(n_layers=2, init_scale=0.5)
    with torch.no_grad():
        for w in model.weights:
            w.mul_(weight_scale)
        for b in model.biases:
            b.normal_(0, 0.1)
    seq = make_batch(24)["txn_seq"]
    seq[0] = -1.0  # a customer without spend pools to the origin in both
    params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    fused = model._hyperbolic(seq)
    ref = _hgcn_with_geoopt_ops(model, seq)
    assert torch.allclose(fused, ref, atol=2e-5, rtol=1e-4) and float(ref.abs().max()) > 0.1
    for g, r in zip(torch.autograd.grad(fused.square().sum(), params), torch.autograd.grad(ref.square().sum(), params)):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-3)


def test_hgcn_riemannian_adam_keeps_points_in_ball():
    g = torch.Generator().manual_seed(0)
    n = mcc_hierarchy().tree.n_nodes
    init = torch.randn(n, 6, generator=g)
    init = 0.97 * init / init.norm(dim=1, keepdim=True)  # near the rim, like a fitted tree embedding
    torch.manual_seed(0)
    model = HGCNExpert(embed_dim=8, init_embedding=init.numpy())
    assert torch.allclose(model.node_emb.norm(dim=1), torch.full((n,), 0.97), atol=1e-5)  # padding keeps norms
    opt = geoopt.optim.RiemannianAdam(model.parameters(), lr=0.05)
    batch = make_batch(16)
    before = model.node_emb.detach().clone()
    for _ in range(4):
        opt.zero_grad()
        (-model(batch).pow(2).mean()).backward()  # push activations outwards
        opt.step()
    emb = model.node_emb.detach()
    assert not torch.equal(emb, before)
    assert bool(model.ball.check_point_on_manifold(emb)) and float(emb.norm(dim=1).max()) < 1.0


# ----------------------------------------------------------------------------------------------------------------
# LightGCN
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", ["mean", "symmetric"])
@pytest.mark.parametrize("b", [2, 64])
def test_lightgcn_shapes_finite_and_grads(b, normalize):
    torch.manual_seed(0)
    model = LightGCNExpert(out_dim=32, normalize=normalize)
    batch = make_batch(b)
    batch["holdings"][0] = 0.0  # isolated customer
    out = model(batch)
    assert out.shape == (b, 32) and torch.isfinite(out).all()
    assert float(model.aux_loss()) == 0.0
    out.pow(2).mean().backward()
    assert model.product_emb.grad is not None and model.product_emb.grad.abs().sum() > 0
    assert model.customer_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("normalize", ["mean", "symmetric"])
def test_lightgcn_depends_on_graph_neighbours(normalize):
    torch.manual_seed(0)
    model = LightGCNExpert(normalize=normalize).eval()
    batch = make_batch(6)
    batch["holdings"].zero_()
    batch["holdings"][0, [3, 7]] = 1.0
    batch["holdings"][1, 5] = 1.0
    batch["holdings"][2, [3, 5]] = 1.0
    base = model(batch)

    changed = {k: v.clone() for k, v in batch.items()}
    changed["holdings"][1, 3] = 1.0  # another customer starts holding one of customer 0's products
    out = model(changed)
    assert not torch.allclose(out[0], base[0], atol=1e-5)

    no_edges = {k: v.clone() for k, v in batch.items()}
    no_edges["holdings"].zero_()
    assert not torch.allclose(model(no_edges)[0], base[0], atol=1e-5)


def test_lightgcn_isolated_customer_ignores_the_rest_of_the_batch():
    torch.manual_seed(0)
    model = LightGCNExpert().eval()
    batch = make_batch(8)
    batch["holdings"][0] = 0.0
    base = model(batch)
    other = {k: v.clone() for k, v in batch.items()}
    other["holdings"][1:] = 1.0 - other["holdings"][1:]
    out = model(other)
    assert torch.isfinite(base[0]).all() and torch.allclose(out[0], base[0], atol=1e-6)


def test_lightgcn_mean_normalisation_is_batch_size_invariant():
    torch.manual_seed(0)
    model = LightGCNExpert(normalize="mean").eval()
    batch = make_batch(16)
    doubled = {k: torch.cat([v, v]) for k, v in batch.items()}  # same population, twice the batch size
    assert torch.allclose(model(doubled)[:16], model(batch), atol=1e-5)


def test_lightgcn_init_from_feature_fit():
    emb = np.random.default_rng(0).normal(size=(24, 16)).astype(np.float32)
    model = LightGCNExpert(embed_dim=16, init_product_emb=emb)
    assert np.allclose(model.product_emb.detach().numpy(), emb)
    with pytest.raises(ValueError):
        LightGCNExpert(embed_dim=8, init_product_emb=emb)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_experts_on_cuda_match_cpu():
    batch = make_batch(32)
    for cls in (HGCNExpert, LightGCNExpert):
        torch.manual_seed(0)
        model = cls().eval()
        cpu = model(batch)
        model = model.cuda()
        gpu = model({k: v.cuda() for k, v in batch.items()})
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-4), cls.__name__
        gpu.sum().backward()

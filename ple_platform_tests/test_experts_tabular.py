"""DeepFM, Causal (NOTEARS) and Optimal-Transport experts: structure, the losses they promise, gradients,
determinism. CPU, one thread, a few seconds; the CUDA smoke test skips without a GPU."""

import itertools
import math

import numpy as np
import pytest
import torch

from ple_platform.core.data.taxonomy import mcc_hierarchy
from ple_platform.core.features.spec import CATEGORICAL_COLUMNS, FEATURE_GROUPS
from ple_platform.core.model.batch import Router
from ple_platform.core.model.experts.causal import CausalExpert, acyclicity
from ple_platform.core.model.experts.deepfm import DeepFM, fm_interaction
# POT is taken from the expert's module, which imports it behind its backend guard.
from ple_platform.core.model.experts.optimal_transport import OptimalTransportExpert, l2_ground_cost, ot

EXPERTS = (DeepFM, CausalExpert, OptimalTransportExpert)
N_L2 = len(mcc_hierarchy().l2_names)



def make_batch(n=64, seed=0, device="cpu"):
    """Random standardised groups, integer codes in the categorical columns, a -1 padded txn_seq."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for grp in FEATURE_GROUPS:
        x = torch.randn(n, grp.dim, generator=g)
        for j, c in enumerate(grp.columns):
            if c in CATEGORICAL_COLUMNS:
                x[:, j] = torch.randint(0, 9, (n,), generator=g).float()
        out[grp.name] = x
    length = 200
    n_txn = torch.randint(0, length, (n,), generator=g)
    n_txn[0] = 0  # one customer without transactions
    real = torch.arange(length)[None, :] < n_txn[:, None]
    seq = torch.stack(
        [
            torch.rand(n, length, generator=g) * 100,
            torch.randint(0, mcc_hierarchy().n_codes, (n, length), generator=g).float(),
            torch.sort(torch.rand(n, length, generator=g) * 365, dim=1).values,
            torch.randint(0, 24, (n, length), generator=g).float(),
        ],
        dim=2,
    )
    out["txn_seq"] = torch.where(real[..., None], seq, torch.full_like(seq, -1.0))
    return {k: v.to(device) for k, v in out.items()}


# ---------------------------------------------------------------- common interface


@pytest.mark.parametrize("cls", EXPERTS)
def test_shape_determinism_and_gradients_reach_every_parameter(cls):
    batch = make_batch()
    torch.manual_seed(0)
    model = cls(out_dim=32)
    y = model(batch)
    assert y.shape == (64, 32) and torch.isfinite(y).all()
    (y.sum() + model.aux_loss()).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"
    torch.manual_seed(0)
    again = cls(out_dim=32)
    assert torch.equal(again(batch), y.detach())
    assert model.aux_loss().ndim == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("cls", EXPERTS)
def test_runs_on_cuda(cls):
    torch.manual_seed(0)
    model = cls().cuda()
    batch = make_batch(device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = model(batch)
    (y.float().sum() + model.aux_loss()).backward()
    assert y.device.type == "cuda" and torch.isfinite(y).all()


# ---------------------------------------------------------------- DeepFM


def test_deepfm_fields_follow_the_router():
    model = DeepFM()
    groups = Router().groups_for("deepfm")
    assert model.n_fields == len(groups) + len(CATEGORICAL_COLUMNS)  # txn_lag_tensor is one field
    assert model.cat_names == list(CATEGORICAL_COLUMNS)
    v, first = model.fields(make_batch(n=5))
    assert v.shape == (5, model.n_fields, 16) and first.shape == (5, model.n_fields)


def test_fm_term_equals_brute_force_pairwise_sum():
    v = torch.randn(3, 5, 4, dtype=torch.float64)
    brute = sum(v[:, i] * v[:, j] for i, j in itertools.combinations(range(5), 2))
    assert torch.allclose(fm_interaction(v), brute, atol=1e-6)


def test_deepfm_changing_one_code_changes_output():
    torch.manual_seed(0)
    model = DeepFM().eval()
    batch = make_batch(n=4)
    col = Router().groups_for("deepfm")[0].columns.index("segment_code")
    changed = {k: v.clone() for k, v in batch.items()}
    changed["demographics"][0, col] += 1
    y, y2 = model(batch), model(changed)
    assert not torch.allclose(y[0], y2[0])
    assert torch.allclose(y[1:], y2[1:], atol=1e-6)


# ---------------------------------------------------------------- Causal


def _dag_batch(n=512, seed=0):
    """z1 -> z2 = 2 z1 + e -> z3 = -z2 + e, mixed into the 58 routed input columns by a random P."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, generator=g)
    z2 = 2 * z1 + 0.5 * torch.randn(n, generator=g)
    z3 = -z2 + 0.5 * torch.randn(n, generator=g)
    groups = Router().groups_for("causal")
    proj = torch.randn(3, sum(gr.dim for gr in groups), generator=g)
    x = torch.stack([z1, z2, z3], 1) @ proj + 0.01 * torch.randn(n, proj.shape[1], generator=g)
    return dict(zip([gr.name for gr in groups], x.split([gr.dim for gr in groups], dim=1), strict=True)), proj


def _fit_structure(recon_weight):
    torch.manual_seed(0)
    model = CausalExpert(n_latent=3, recon_weight=recon_weight)
    batch, proj = _dag_batch()
    with torch.no_grad():  # the encoder undoes the projection, so the latents are the DAG's variables
        model.encoder.weight.copy_(torch.linalg.pinv(proj).T)
        model.encoder.bias.zero_()
    opt = torch.optim.Adam([model.w], lr=0.02)
    hs = []
    for step in range(300):
        model(batch)
        opt.zero_grad()
        model.aux_loss().backward()
        opt.step()
        hs.append(float(acyclicity(model.adjacency())))
        if step % 25 == 24:
            model.update_lagrangian()
    z = model.latents(batch).detach()
    w = model.adjacency()
    return w, hs, float((z - z @ w).pow(2).mean())


def test_causal_learns_a_dag_and_does_not_collapse():
    w, hs, recon = _fit_structure(recon_weight=1.0)
    assert hs[-1] < 0.05 * max(hs) and hs[-1] < 5e-3  # acyclicity falls once W has grown
    a = w.abs()
    assert max(a[0, 1], a[1, 0]) > 0.5 and max(a[1, 2], a[2, 1]) > 0.5  # the chain's edges are found
    assert recon < 0.45  # only the root is left unexplained (1/3 of the unit-variance total)
    # The reference's failure mode: acyclicity + sparsity alone drive W to zero.
    w0, _, recon0 = _fit_structure(recon_weight=0.0)
    assert w0.abs().max() < 0.05 and recon0 > 0.95


def _relative_change(y, y2):
    """Size of a change in the outputs relative to how much the outputs vary across customers."""
    return float((y - y2).norm() / (y - y.mean(dim=0)).norm())


def test_causal_prediction_goes_through_the_learned_edges():
    w, _, _ = _fit_structure(recon_weight=1.0)
    torch.manual_seed(1)
    model = CausalExpert(n_latent=3, recon_weight=1.0)
    batch, proj = _dag_batch()
    with torch.no_grad():  # same latents and fitted DAG as the structure test; the head keeps its random init
        model.encoder.weight.copy_(torch.linalg.pinv(proj).T)
        model.encoder.bias.zero_()
        model.w.copy_(w)
    model.train()
    model(batch)  # running statistics of the latents
    for _ in range(20):
        model(batch)
    model.eval()
    with torch.no_grad():
        y = model(batch)
        a = model.adjacency().abs()
        strongest = divmod(int(a.argmax()), 3)
        kept = model.prune(0.3)  # NOTEARS' threshold: the two chain edges survive
        assert kept == 2
        zero = next((i, j) for i in range(3) for j in range(3) if i != j and model.adjacency()[i, j] == 0)
        y_pruned = model(batch)
        model.remove_edge(*zero)  # an edge that is already absent changes nothing
        assert torch.equal(model(batch), y_pruned)
        model.remove_edge(*strongest)  # the largest learned edge
        y_cut = model(batch)
        assert _relative_change(y_pruned, y_cut) > 0.3
        # With every edge gone nothing about the customer reaches the head: the output is one constant row.
        for i in range(3):
            for j in range(3):
                model.remove_edge(i, j)
        y_none = model(batch)
    assert float(y_none.std(dim=0).max()) < 1e-6 and float(y.std(dim=0).max()) > 1e-2
    assert _relative_change(y, y_pruned) < _relative_change(y, y_cut)  # weak edges matter less than a strong one
    # The cut survives a save/load round trip (the mask is part of the state).
    clone = CausalExpert(n_latent=3)
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.adjacency(), torch.zeros(3, 3))
    with pytest.raises(IndexError, match="outside the 3 latents"):
        model.remove_edge(3, 0)


def test_causal_trains_end_to_end_through_an_acyclic_structure():
    """Task loss + structural loss together (the task gradient also reaches W): the task is learned, h(W) still
    goes to ~0, and the fit depends on the learned edges."""
    torch.manual_seed(0)
    model = CausalExpert(n_latent=3, out_dim=1, hidden_dim=16, dropout=0.0)
    batch, proj = _dag_batch()
    z = torch.cat(list(batch.values()), dim=1) @ torch.linalg.pinv(proj)
    y = (z[:, 2] + 0.5 * z[:, 0]).unsqueeze(1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(400):
        loss = torch.nn.functional.mse_loss(model(batch), y) + model.aux_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 24:
            model.update_lagrangian()
    model.eval()
    with torch.no_grad():
        fit = float(torch.nn.functional.mse_loss(model(batch), y) / y.var())
        assert fit < 0.05 and float(acyclicity(model.adjacency())) < 5e-3
        a = model.adjacency().abs()
        model.remove_edge(*divmod(int(a.argmax()), 3))
        cut = float(torch.nn.functional.mse_loss(model(batch), y) / y.var())
    assert cut > 10 * fit and cut > 0.1


def test_causal_aux_loss_adjacency_and_lagrangian():
    torch.manual_seed(0)
    model = CausalExpert()
    assert float(model.aux_loss()) == 0.0  # before any forward
    model(make_batch())
    aux = model.aux_loss()
    assert aux > 0 and aux.requires_grad
    aux.backward()
    assert model.w.grad.abs().sum() > 0
    w = model.adjacency()
    assert not w.requires_grad and torch.equal(w.diagonal(), torch.zeros(16))
    rho0 = float(model.rho)
    first = model.update_lagrangian()
    assert first["alpha"] > 0 and first["rho"] == rho0  # the first step only sets alpha
    second = model.update_lagrangian()  # h did not shrink: rho grows
    assert second["rho"] == 2 * rho0 and second["alpha"] > first["alpha"]
    assert {"alpha", "rho", "h_prev", "edge_mask"} <= set(model.state_dict())


# ---------------------------------------------------------------- Optimal transport


def test_ground_cost_is_the_mcc_tree_metric():
    c = l2_ground_cost()
    h = mcc_hierarchy()
    assert c.shape == (N_L2, N_L2) and np.allclose(c, c.T) and np.all(np.diag(c) == 0)
    same_l1 = h.l2_l1[:, None] == h.l2_l1[None, :]
    off = ~np.eye(N_L2, dtype=bool)
    assert np.all(c[same_l1 & off] == 0.5) and np.all(c[~same_l1] == 1.0)


def test_spend_distribution_scatter_recency_and_fallback():
    h = mcc_hierarchy()
    model = OptimalTransportExpert(tau_days=30.0)
    j = int(np.flatnonzero(h.code_l2 != h.code_l2[0])[0])  # a code in another L2 than code 0
    seq = torch.full((2, 200, 4), -1.0)
    seq[0, 0] = torch.tensor([10.0, 0, 0.0, 12])
    seq[0, 1] = torch.tensor([10.0, j, 30.0, 12])  # same amount, one decay length older
    seq[0, 2] = torch.tensor([50.0, -1, 0.0, 12])  # code outside the hierarchy: dropped
    dist, no_spend = model.spend_distribution(seq)
    expected = torch.zeros(N_L2)
    expected[h.code_l2[0]], expected[h.code_l2[j]] = 1.0, float(np.exp(-1.0))
    assert torch.allclose(dist[0], expected / expected.sum(), atol=1e-6)
    assert torch.allclose(dist[1], torch.full((N_L2,), 1.0 / N_L2), atol=1e-6)  # no spend: uniform + flag
    assert no_spend.tolist() == [0.0, 1.0]


def _peaked(index, sharp=12.0):
    logits = torch.zeros(N_L2)
    logits[index] = sharp
    return logits


def test_ot_cost_is_a_differentiable_pot_computation():
    h = mcc_hierarchy()
    far = int(np.flatnonzero(h.l2_l1 != h.l2_l1[0])[0])  # an L2 category under another L1
    model = OptimalTransportExpert(n_prototypes=2)
    with torch.no_grad():
        model.prototype_logits.copy_(torch.stack([_peaked(0), _peaked(far)]))
    protos = model.prototypes().detach()
    dist = torch.stack([protos[0], protos[1], torch.full((N_L2,), 1.0 / N_L2)])
    costs = model.ot_costs(dist)
    c = costs.detach()
    self_cost = float(ot.sinkhorn2(protos[0], protos[0], model.ground_cost, model.reg))  # the entropic minimum
    assert abs(float(c[0, 0]) - self_cost) < 2e-3 and float(c[0, 0]) < 0.05
    assert float(c[0, 1]) > 0.9  # all the mass has to cross the root
    assert c[0, 0] < c[2, 0] < c[0, 1]
    costs[0, 1].backward()
    grad = model.prototype_logits.grad
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0
    # Descending that gradient from random prototypes moves prototype 1 onto customer 0.
    with torch.no_grad():
        model.prototype_logits.copy_(torch.randn(2, N_L2, generator=torch.Generator().manual_seed(0)))
    opt = torch.optim.Adam([model.prototype_logits], lr=0.5)
    start = float(model.ot_costs(dist)[0, 1].detach())
    for _ in range(30):
        opt.zero_grad()
        model.ot_costs(dist)[0, 1].backward()
        opt.step()
    assert start > 0.9 and float(model.ot_costs(dist)[0, 1].detach()) < 0.2


def test_ot_output_depends_on_the_tree_distances():
    batch = make_batch(n=16)
    torch.manual_seed(0)
    model = OptimalTransportExpert().eval()
    y = model(batch)
    flat = torch.ones(N_L2, N_L2) - torch.eye(N_L2)  # a star tree: every category equally far apart
    torch.manual_seed(0)
    other = OptimalTransportExpert(ground_cost=flat).eval()
    assert not torch.allclose(y, other(batch), atol=1e-4)
    with torch.no_grad():
        model.ground_cost.copy_(flat)
    assert torch.allclose(model(batch), other(batch), atol=1e-6)


def test_ot_gradient_matches_autodiff_through_every_pot_iteration():
    """The cheap gradient (POT iterates detached, then a few differentiable Sinkhorn steps) points where autodiff
    through all of POT's iterations points, for both the prototypes and the customer side; one step does not."""
    torch.manual_seed(0)
    n_cust = 48
    logits = torch.randn(n_cust, N_L2) * 2
    support = torch.rand(n_cust, N_L2) < 0.4
    support[:, 0] = True
    weights = torch.randn(n_cust, 8)

    def grads(model, full_autodiff):
        lg = logits.clone().requires_grad_(True)
        dist = torch.softmax(lg, 1) * support
        dist = dist / dist.sum(1, keepdim=True)
        if full_autodiff:
            stop = model.tol * math.sqrt(n_cust)
            costs = torch.stack([ot.sinkhorn2(p, dist.T, model.ground_cost, model.reg, numItermax=model.n_iter,
                                              stopThr=stop, warn=False) for p in model.prototypes()], 1)
        else:
            costs = model.ot_costs(dist)
        model.prototype_logits.grad = None
        (costs * weights).sum().backward()
        return costs.detach(), model.prototype_logits.grad.flatten().clone(), lg.grad.flatten()

    def cosine(a, b):
        return float(torch.nn.functional.cosine_similarity(a, b, 0))

    torch.manual_seed(1)
    model = OptimalTransportExpert()
    ref_costs, ref_proto, ref_cust = grads(model, full_autodiff=True)
    costs, proto, cust = grads(model, full_autodiff=False)
    assert torch.allclose(costs, ref_costs, atol=2e-3)
    assert cosine(proto, ref_proto) > 0.99 and cosine(cust, ref_cust) > 0.99
    model.grad_steps = 1
    _, proto1, cust1 = grads(model, full_autodiff=False)
    assert cosine(proto1, ref_proto) < 0.97  # the control: one step is a visibly worse gradient

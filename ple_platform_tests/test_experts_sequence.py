"""Sequence/set experts: TemporalEnsemble over the real transaction sequence and PersLay over the real
persistence diagrams. Semantics tested: order and timing matter, padding does not; diagram point order
does not, point values do; gradients reach every branch / the learned φ and weight function."""

import numpy as np
import pytest
import torch

from ple_platform.core.features.spec import FEATURE_GROUPS
from ple_platform.core.model.experts.perslay import PersLay
from ple_platform.core.model.experts.temporal import BRANCHES, TemporalEnsemble

N_MCC = 106
SMALL = dict(n_mcc=N_MCC, d_model=16, d_state=4, patch_layers=1, ltc_hidden=12, ltc_unfolds=2, d_branch=16,
             hidden=32, dropout=0.0)



def _close(a, b, atol=1e-5):
    # Plain comparison: torch.testing.assert_close costs ~2.5 s of imports on first use.
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape and torch.isfinite(a).all() and torch.isfinite(b).all()
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    assert diff <= atol, diff


def _sequences(lengths, length=200, seed=0):
    rng = np.random.default_rng(seed)
    out = np.full((len(lengths), length, 4), -1.0, dtype=np.float32)
    for i, n in enumerate(lengths):
        out[i, :n, 0] = rng.gamma(2.0, 40.0, n)
        out[i, :n, 1] = rng.integers(0, N_MCC, n)
        out[i, :n, 2] = np.sort(rng.uniform(0, 365, n))  # most recent first: days before snapshot end increase
        out[i, :n, 3] = rng.integers(0, 24, n)
    return torch.from_numpy(out)


def _diagrams(counts, p=None, seed=0):
    """Padded (B, P, 4) diagrams of 3 types (global H0/H1, local H0) with -7 garbage behind the mask."""
    g = torch.Generator().manual_seed(seed)
    p = p or max(max(counts), 1)
    dg = torch.full((len(counts), p, 4), -7.0)
    mask = torch.zeros(len(counts), p, dtype=torch.bool)
    for i, n in enumerate(counts):
        birth = torch.rand(n, generator=g) * 3
        dg[i, :n, 0] = birth
        dg[i, :n, 1] = birth + torch.rand(n, generator=g) * 4
        kind_dim = torch.randint(0, 3, (n,), generator=g)
        dg[i, :n, 2] = (kind_dim == 1).float()
        dg[i, :n, 3] = (kind_dim == 2).float()
        mask[i, :n] = True
    return dg, mask


def _batch(lengths, counts=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    batch = {grp.name: torch.randn(b, grp.dim, generator=g) for grp in FEATURE_GROUPS}
    batch["txn_seq"] = _sequences(lengths, seed=seed)
    batch["diagrams"], batch["diagram_mask"] = _diagrams(counts or [5] * b, seed=seed)
    return batch


def _temporal(seed=0, mamba_branch="trainable"):
    torch.manual_seed(seed)
    return TemporalEnsemble(out_dim=8, mamba_branch=mamba_branch, **SMALL).eval()


def _perslay(seed=0):
    torch.manual_seed(seed)
    return PersLay(out_dim=8, n_gauss=6, n_hat=4, n_mlp=6, hidden=32, dropout=0.0).eval()


# ------------------------------------------------------------------------------------------------ temporal


@pytest.mark.parametrize("lengths", [[0, 7], [200, 3, 50, 0], list(range(0, 192, 3))])
def test_temporal_shapes_weights_finite(lengths):
    m = _temporal()
    with torch.no_grad():
        out = m(_batch(lengths))
    assert out.shape == (len(lengths), 8) and torch.isfinite(out).all()
    w = m.last_branch_weights
    assert w.shape == (len(lengths), len(BRANCHES))
    assert torch.allclose(w.sum(1), torch.ones(len(lengths)), atol=1e-6) and (w > 0).all()
    assert m.aux_loss().item() == 0.0


def test_temporal_deterministic_given_seed():
    batch = _batch([30, 12])
    with torch.no_grad():
        assert torch.equal(_temporal(3)(batch), _temporal(3)(batch))


@pytest.mark.parametrize("mode", ["trainable", "cached"])
def test_temporal_order_matters(mode):
    m = _temporal(mamba_branch=mode)
    batch = _batch([40, 25])
    perm = batch["txn_seq"].clone()
    # Same events at the same timestamps, contents (amount, mcc, hour) in a different order.
    for i, n in enumerate([40, 25]):
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(i))
        perm[i, :n, [0, 1, 3]] = perm[i, idx][:, [0, 1, 3]]
    with torch.no_grad():
        base, branches = m(batch), m.branch_outputs(batch)
        moved, branches_p = m(dict(batch, txn_seq=perm)), m.branch_outputs(dict(batch, txn_seq=perm))
    assert (base - moved).abs().max() > 1e-4
    for name, a, b in zip(BRANCHES, branches, branches_p):  # every branch that reads the sequence is order-aware
        if mode == "cached" and name == "mamba":
            _close(a, b, atol=0.0)  # the cached branch reads the pre-computed encoder output, not the sequence
        else:
            assert (a - b).abs().max() > 1e-4, name


def test_cached_mamba_branch_follows_the_encoder_output_group():
    """The default branch reads the pre-trained encoder's per-customer output (the mamba_temporal group): the branch
    moves with that group, and the expert's output with it, while a trainable branch would ignore a changed group
    in its sequence view."""
    m = _temporal(mamba_branch="cached")
    batch = _batch([40, 25])
    other = dict(batch, mamba_temporal=batch["mamba_temporal"] + 1.0)
    with torch.no_grad():
        a, b = m.branch_outputs(batch)[0], m.branch_outputs(other)[0]
        assert (a - b).abs().min() > 0 and (m(batch) - m(other)).abs().max() > 1e-4
    from ple_platform.core.features.mamba import MambaEncoder

    assert not any(isinstance(x, MambaEncoder) for x in m.modules())  # no scan is trained with the teacher
    assert any(isinstance(x, MambaEncoder) for x in _temporal(mamba_branch="trainable").modules())


def test_cached_mamba_branch_needs_its_group_routed():
    from ple_platform.core.model.batch import Router

    router = Router(groups=tuple(g for g in FEATURE_GROUPS if g.name != "mamba_temporal"))
    with pytest.raises(ValueError, match="mamba_temporal"):
        TemporalEnsemble(router=router, out_dim=8, **SMALL)
    TemporalEnsemble(router=router, out_dim=8, mamba_branch="trainable", **SMALL)  # the trainable branch does not


def test_temporal_day_gaps_matter_ltc():
    m = _temporal()
    batch = _batch([40, 25])
    stretched = batch["txn_seq"].clone()
    real = stretched[..., 3] >= 0
    stretched[..., 2] = torch.where(real, stretched[..., 2] * 2.5, stretched[..., 2])  # same order, longer gaps
    with torch.no_grad():
        assert (m(batch) - m(dict(batch, txn_seq=stretched))).abs().max() > 1e-4
        ltc, ltc_s = (m.branch_outputs(b)[2] for b in (batch, dict(batch, txn_seq=stretched)))
    assert (ltc - ltc_s).abs().max() > 1e-4


def test_ltc_integrates_real_time():
    # Same event embeddings, only the ODE step sizes differ: the gaps between events and the recency.
    m = _temporal()
    e = torch.randn(2, 12, SMALL["d_model"])
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :5] = False
    gap, recency = torch.rand(2, 12) * 10, torch.tensor([3.0, 40.0])
    with torch.no_grad():
        base = m.ltc(e, mask, gap, recency)
        assert ((base - m.ltc(e, mask, gap * 3, recency)).abs().max(dim=1).values > 1e-5).all()
        assert ((base - m.ltc(e, mask, gap, recency + 20)).abs().max(dim=1).values > 1e-5).all()
        garbage = torch.where(mask.unsqueeze(-1), e, torch.full_like(e, 50.0))  # padding steps have Δ = 0: never read
        _close(base, m.ltc(garbage, mask, torch.where(mask, gap, 99.0), recency), atol=0.0)


@pytest.mark.parametrize("grad", [False, True])
def test_temporal_padding_invariant(grad):
    m = _temporal()
    batch = _batch([33, 187, 0, 1])
    # Alone, row 0 is trimmed to 33 steps; next to a 187-event customer it carries 154 steps of left padding
    # (lengths that are not multiples of the patch length, so patch alignment is exercised); with a longer
    # tensor it carries even more trailing -1 padding.
    alone = {k: v[:1] for k, v in batch.items()}
    longer = dict(batch, txn_seq=torch.cat([batch["txn_seq"], torch.full((4, 60, 4), -1.0)], dim=1))
    with torch.set_grad_enabled(grad):
        full, solo, pad = m(batch), m(alone), m(longer)
    _close(full[:1], solo)
    _close(full, pad)
    empty = {k: v[2:3] for k, v in batch.items()}
    with torch.set_grad_enabled(grad):
        _close(full[2:3], m(empty))


@pytest.mark.parametrize("mode", ["trainable", "cached"])
def test_temporal_gradients_reach_every_branch(mode):
    m = _temporal(mamba_branch=mode).train()
    m(_batch([50, 9, 0])).pow(2).sum().backward()
    for name in ("mamba", "tokens", "patch", "ltc", "gate", "static", "head"):
        params = list(getattr(m, name).named_parameters())
        assert params
        for pname, p in params:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{pname}"
        assert sum(p.grad.abs().sum() for _, p in params) > 0, name
    for pname in ("log_tau", "event_dt", "A"):
        assert getattr(m.ltc, pname).grad.abs().sum() > 0, pname


# ------------------------------------------------------------------------------------------------ perslay


@pytest.mark.parametrize("counts", [[0, 3], [1, 0, 12, 4, 7], [3 + (i % 20) for i in range(64)]])
def test_perslay_shapes_finite_empty(counts):
    m = _perslay()
    with torch.no_grad():
        out = m(_batch([0] * len(counts), counts))
    assert out.shape == (len(counts), 8) and torch.isfinite(out).all()
    assert m.aux_loss().item() == 0.0


def test_perslay_all_empty_and_zero_width():
    m = _perslay()
    batch = _batch([0, 0], [0, 0])
    batch["diagram_mask"][:] = False
    with torch.no_grad():
        a = m(batch)
        b = m(dict(batch, diagrams=torch.zeros(2, 0, 4), diagram_mask=torch.zeros(2, 0, dtype=torch.bool)))
    _close(a, b)


def test_perslay_permutation_invariant():
    m = _perslay()
    counts = [9, 4, 0, 13]
    batch = _batch([0] * 4, counts)
    dg, mask = batch["diagrams"], batch["diagram_mask"]
    g = torch.Generator().manual_seed(1)
    # Permute every row's slots: real points and padding positions both move, and garbage differs per slot.
    idx = torch.stack([torch.randperm(dg.shape[1], generator=g) for _ in counts])
    dg_p = torch.gather(dg, 1, idx.unsqueeze(-1).expand_as(dg))
    mask_p = torch.gather(mask, 1, idx)
    with torch.no_grad():
        _close(m(batch), m(dict(batch, diagrams=dg_p, diagram_mask=mask_p)))


def test_perslay_point_values_matter_and_padding_does_not():
    m = _perslay()
    batch = _batch([0] * 3, [6, 2, 5])
    moved = batch["diagrams"].clone()
    moved[1, 0, 1] += 1.5  # one point's death
    garbage = batch["diagrams"].clone()
    garbage[~batch["diagram_mask"]] = torch.tensor([1e6, float("nan"), 5.0, -3.0])
    with torch.no_grad():
        base = m(batch)
        changed = m(dict(batch, diagrams=moved))
        junk = m(dict(batch, diagrams=garbage))
    assert (base[1] - changed[1]).abs().max() > 1e-4
    _close(base[[0, 2]], changed[[0, 2]])  # other customers untouched
    _close(base, junk)
    # More padding slots (P 6 -> 16) change nothing either.
    wider = dict(batch, diagrams=torch.cat([batch["diagrams"], torch.full((3, 10, 4), 2.0)], dim=1),
                 diagram_mask=torch.cat([batch["diagram_mask"], torch.zeros(3, 10, dtype=torch.bool)], dim=1))
    with torch.no_grad():
        _close(base, m(wider))


def test_perslay_gradients_reach_phi_and_weight():
    m = _perslay().train()
    m(_batch([0] * 4, [7, 3, 0, 10])).pow(2).sum().backward()
    names = ["gauss_centre", "gauss_log_sigma", "hat_centre", "hat_radius"]
    named = dict(m.named_parameters())
    names += [n for n in named if n.startswith(("point_mlp.", "weight_mlp.", "rho."))]
    for n in names:
        assert named[n].grad is not None and named[n].grad.abs().sum() > 0, n

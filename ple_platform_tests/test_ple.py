"""PLE teacher: model structure, losses, trainer. Tiny synthetic batches built from the feature spec; CPU, one
thread, a few seconds in all."""

import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ple_platform.core.data.taxonomy import mcc_hierarchy
from ple_platform.core.features.spec import CATEGORICAL_COLUMNS, EXPERTS, FEATURE_GROUPS, TOTAL_FEATURE_WIDTH, group
from ple_platform.core.model import ple
from ple_platform.core.model.batch import Router
from ple_platform.core.model.losses import (
    LOG_VAR_RANGE,
    UncertaintyWeighting,
    focal_loss,
    multitask_loss,
    task_loss,
)
from ple_platform.core.model.ple import COMPACT_GROUPS, EXPERT_FACTORIES, PLEConfig, PLEModel, predict
from ple_platform.core.model.train import TrainConfig, binary_auc, build_optimizers, train_teacher, validation_metrics
from ple_platform.core.tasks.spec import TASKS, TASKS_BY_NAME

N_MCC = mcc_hierarchy().n_codes



# ------------------------------------------------------------------------------------------------ fixtures


def make_batch(n=16, seed=0, max_txn=40, n_points=10):
    """(Batch, labels): standardised groups, integer codes, 0/1 holdings, a -1 padded txn_seq of varying
    length (row 0 without transactions), padded diagrams with masks, labels of all 13 tasks."""
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for grp in FEATURE_GROUPS:
        x = torch.randn(n, grp.dim, generator=g)
        for j, c in enumerate(grp.columns):
            if c in CATEGORICAL_COLUMNS:
                x[:, j] = torch.randint(0, 9, (n,), generator=g).float()
        batch[grp.name] = x
    holdings = (torch.rand(n, 24, generator=g) < 0.2).float()
    batch["product_holdings"], batch["holdings"] = holdings, holdings.clone()
    length = 200
    n_txn = torch.randint(1, max_txn + 1, (n,), generator=g)
    n_txn[0] = 0
    real = torch.arange(length)[None, :] < n_txn[:, None]
    seq = torch.stack([
        torch.rand(n, length, generator=g) * 100,
        torch.randint(0, N_MCC, (n, length), generator=g).float(),
        torch.sort(torch.rand(n, length, generator=g) * 365, dim=1).values,  # most recent first
        torch.randint(0, 24, (n, length), generator=g).float(),
    ], dim=2)
    batch["txn_seq"] = torch.where(real[..., None], seq, torch.full_like(seq, -1.0))
    count = torch.randint(0, n_points + 1, (n,), generator=g)
    mask = torch.arange(n_points)[None, :] < count[:, None]
    birth = torch.rand(n, n_points, generator=g) * 3
    dg = torch.stack([birth, birth + torch.rand(n, n_points, generator=g) * 2,
                      torch.randint(0, 2, (n, n_points), generator=g).float(),
                      torch.randint(0, 2, (n, n_points), generator=g).float()], dim=2)
    batch["diagrams"], batch["diagram_mask"] = torch.where(mask[..., None], dg, torch.zeros_like(dg)), mask
    labels = {}
    for t in TASKS:
        if t.kind == "binary":
            labels[t.name] = (torch.rand(n, generator=g) < 0.3).float()
        elif t.kind == "multiclass":
            labels[t.name] = torch.randint(0, t.n_classes, (n,), generator=g).float()
        else:
            labels[t.name] = torch.randn(n, generator=g)
    return batch, labels


SMALL_EXPERTS = {
    "deepfm": dict(hidden_dims=(32,), deep_dim=16),
    "temporal": dict(d_model=16, d_branch=16, hidden=32, patch_layers=1, ltc_hidden=16),
    "hgcn": dict(mlp_hidden=32),
    "perslay": dict(hidden=32),
    "ot": dict(n_iter=50, hidden_dim=32),
    "causal": dict(hidden_dim=32),
}


def tiny(**kw) -> PLEConfig:
    base = dict(expert_dim=16, n_layers=2, mlp_hidden=(16,), tower_dims=(16,), expert_config=SMALL_EXPERTS)
    return PLEConfig(**{**base, **kw})


class StandIn(nn.Module):
    """Stand-in for an expert whose module cannot be imported: a routed MLP with a non-zero aux loss."""

    def __init__(self, name, router=Router(), out_dim=64, **_):
        super().__init__()
        self.name, self.router = name, router
        self.net = nn.Linear(router.input_dim(name), out_dim)

    def forward(self, batch):
        return self.net(self.router.concat(batch, self.name))

    def aux_loss(self):
        return 1e-3 * self.net.weight.pow(2).sum()


def factories():
    """The real experts; a stand-in only for those whose module is missing."""
    out = {}
    for name in EXPERTS:
        try:
            importlib.import_module(ple._EXPERT_CLASSES[name][0])
        except ImportError:
            out[name] = lambda router=Router(), out_dim=64, _n=name, **kw: StandIn(_n, router, out_dim)
    return out


def model_of(seed=0, **kw) -> PLEModel:
    torch.manual_seed(seed)
    return PLEModel(tiny(**kw), factories=factories())


# ------------------------------------------------------------------------------------------------ model


def test_registry_covers_the_seven_experts_and_reports_a_missing_module(monkeypatch):
    assert tuple(EXPERT_FACTORIES) == EXPERTS
    monkeypatch.setitem(ple._EXPERT_CLASSES, "ot", ("ple_platform.core.model.experts.no_such_module", "X"))
    with pytest.raises(ImportError, match="expert 'ot' needs .*no_such_module"):
        ple._lazy_factory("ot")()


def test_gradients_reach_every_expert_from_the_multitask_loss():
    model = model_of()
    batch, labels = make_batch()
    out = model(batch)
    loss, terms = multitask_loss(out, labels, weights=model.loss_weighting)
    loss.backward()
    assert model.expert_names == EXPERTS
    for name in EXPERTS:
        params = [(n, p) for n, p in model.shared0[name].named_parameters() if p.requires_grad]
        missing = [n for n, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, (name, missing)
        assert sum(float(p.grad.norm()) for _, p in params) > 0, name
    for part in (model.compact, model.task0, model.gates0, model.upper, model.towers, model.loss_weighting):
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in part.parameters())
    assert float(out.aux_terms["causal"].detach()) > 0 and terms["aux"] == pytest.approx(float(out.aux_loss.detach()))


def test_heads_are_raw_and_predict_normalises():
    model = model_of(n_layers=3).eval()
    batch, labels = make_batch()
    out = model(batch)
    probs = predict(out)
    for t in TASKS:
        y = out.outputs[t.name]
        if t.kind == "multiclass":
            assert y.shape == (16, t.n_classes)
            assert torch.allclose(probs[t.name].sum(1), torch.ones(16), atol=1e-6)
            assert torch.equal(probs[t.name], torch.softmax(y, 1))
            # The loss is softmax cross-entropy on the raw logits (never sigmoid first).
            loss, _ = task_loss(y, labels[t.name], "multiclass")
            assert float(loss) == pytest.approx(float(F.cross_entropy(y, labels[t.name].long())), rel=1e-6)
        else:
            assert y.shape == (16,)
            expected = torch.sigmoid(y) if t.kind == "binary" else y
            assert torch.equal(probs[t.name], expected)


def test_layer0_gates_are_per_customer_softmax_over_shared_and_own_experts():
    model = model_of(task_experts=2).eval()
    out = model(make_batch(seed=1)[0])
    for t in TASKS:
        w = out.gates[t.name]
        assert w.shape == (16, len(EXPERTS) + 2) and len(model.gate_columns(t.name)) == w.shape[1]
        assert (w > 0).all() and torch.allclose(w.sum(1), torch.ones(16), atol=1e-6)
        assert float(w.std(0).max()) > 0  # one row per customer, not a batch average


def test_task_experts_and_gates_read_only_the_compact_groups():
    model = model_of().eval()
    compact = [group(g) for g in COMPACT_GROUPS]
    n_cat = sum(c in CATEGORICAL_COLUMNS for g in compact for c in g.columns)
    assert model.compact.dim == sum(g.dim for g in compact) - n_cat + n_cat * model.config.cat_dim
    assert model.compact.dim < TOTAL_FEATURE_WIDTH // 10
    batch, _ = make_batch(seed=2)
    other, _ = make_batch(seed=3)
    mixed = {**other, **{g: batch[g] for g in COMPACT_GROUPS}}  # everything but the compact groups changed
    a, b = model(batch), model(mixed)
    for t in TASKS:
        assert torch.equal(a.gates[t.name], b.gates[t.name])
        assert torch.equal(model.task0[t.name][0](model.compact(batch)), model.task0[t.name][0](model.compact(mixed)))
        assert not torch.equal(a.outputs[t.name], b.outputs[t.name])


def test_masking_an_expert_changes_outputs_but_not_gates():
    model = model_of().eval()
    batch, _ = make_batch(seed=4)
    base = model(batch)
    with model.mask_expert("hgcn"):
        masked = model(batch)
    again = model(batch, mask=("hgcn",))
    after = model(batch)
    for t in TASKS:
        diff = (base.outputs[t.name] - masked.outputs[t.name]).abs()
        assert float(diff.max()) > 1e-6, t.name
        assert torch.equal(masked.outputs[t.name], again.outputs[t.name])
        assert torch.equal(after.outputs[t.name], base.outputs[t.name])  # the mask is lifted after the block
        assert torch.equal(masked.gates[t.name], base.gates[t.name])
    with pytest.raises(KeyError, match="unknown shared experts"):
        with model.mask_expert("nope"):
            pass


# ------------------------------------------------------------------------------------------------ losses


def test_binary_tasks_use_bce_by_default_and_focal_on_request():
    z = torch.tensor([-3.0, -0.5, 0.0, 0.7, 2.5, 4.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    alpha, gamma = 0.25, 2.0
    p = 1 / (1 + np.exp(-z.numpy()))
    hand = np.where(y.numpy() == 1, -alpha * (1 - p) ** gamma * np.log(p),
                    -(1 - alpha) * p**gamma * np.log(1 - p))
    got = focal_loss(z, y, gamma=gamma, alpha=alpha).numpy()
    np.testing.assert_allclose(got, hand, rtol=1e-10)
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none").numpy()
    assert np.abs(got - bce).max() > 0.1
    np.testing.assert_allclose(focal_loss(z, y, gamma=0.0, alpha=None).numpy(), bce, rtol=1e-10)
    # Through the multitask loss: BCE by default, the focal mean when asked for.
    _, terms = multitask_loss({"churn_signal": z.float()}, {"churn_signal": y.float()})
    assert terms["loss/churn_signal"] == pytest.approx(bce.mean(), rel=1e-5)
    _, terms = multitask_loss({"churn_signal": z.float()}, {"churn_signal": y.float()}, binary_loss="focal",
                              focal_alpha=alpha, focal_gamma=gamma)
    assert terms["loss/churn_signal"] == pytest.approx(hand.mean(), rel=1e-5)
    with pytest.raises(ValueError, match="binary_loss"):
        multitask_loss({"churn_signal": z.float()}, {"churn_signal": y.float()}, binary_loss="hinge")


def test_missing_labels_contribute_zero_loss_and_zero_gradient():
    pred = torch.randn(8, requires_grad=True)
    with torch.no_grad():
        pred[3] = float("nan")  # even a NaN prediction behind a missing label must not leak
    y = torch.randn(8)
    y[3] = float("nan")
    y[5] = -1.0  # a real regression value, not a missing marker
    loss, n = task_loss(pred, y, "regression")
    keep = torch.tensor([i != 3 for i in range(8)])
    assert n == 7 and float(loss) == pytest.approx(float(F.huber_loss(pred[keep], y[keep])), rel=1e-6)
    loss.backward()
    assert pred.grad[3] == 0 and (pred.grad[keep] != 0).all()

    logits = torch.randn(6, 7, requires_grad=True)
    cls = torch.tensor([2.0, float("nan"), -1.0, 0.0, 6.0, 1.0])
    loss, n = task_loss(logits, cls, "multiclass")
    loss.backward()
    assert n == 4 and (logits.grad[[1, 2]] == 0).all()
    binary = torch.tensor([1.0, -1.0, 0.0, float("nan")])
    z = torch.randn(4, requires_grad=True)
    loss, n = task_loss(z, binary, "binary", mask=torch.tensor([True, True, False, True]))  # explicit mask too
    loss.backward()
    assert n == 1 and (z.grad[1:] == 0).all() and z.grad[0] != 0

    # A task with no labelled row adds nothing, not even its log-variance.
    uw = UncertaintyWeighting(("spend_change", "churn_signal"))
    with torch.no_grad():
        uw.log_vars.fill_(1.5)
    out = {"spend_change": torch.randn(4), "churn_signal": torch.randn(4)}
    total, terms = multitask_loss(out, {"spend_change": torch.full((4,), float("nan")),
                                        "churn_signal": torch.ones(4)}, weights=uw)
    assert "loss/spend_change" not in terms and terms["n/spend_change"] == 0
    assert float(total) == pytest.approx(math.exp(-1.5) * terms["loss/churn_signal"] + 1.5, rel=1e-6)


def test_uncertainty_weights_are_applied_once():
    """Form: total = sum_k exp(-s_k) * L_k + s_k + aux (s_k = log sigma_k^2, clamped to [-4, 4])."""
    names = ("churn_signal", "nba_primary", "spend_change")
    uw = UncertaintyWeighting(names)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.7, -0.3, 10.0]))  # the last is clamped to 4
    g = torch.Generator().manual_seed(0)
    out = {"churn_signal": torch.randn(10, generator=g), "nba_primary": torch.randn(10, 7, generator=g),
           "spend_change": torch.randn(10, generator=g)}
    labels = {"churn_signal": (torch.rand(10, generator=g) > 0.5).float(),
              "nba_primary": torch.randint(0, 7, (10,), generator=g).float(),
              "spend_change": torch.randn(10, generator=g)}
    aux = torch.tensor(0.25)
    total, terms = multitask_loss(out, labels, weights=uw, aux=aux)
    s = {"churn_signal": 0.7, "nba_primary": -0.3, "spend_change": LOG_VAR_RANGE[1]}
    losses = {k: float(task_loss(out[k], labels[k], TASKS_BY_NAME[k].kind)[0]) for k in names}
    expected = sum(math.exp(-s[k]) * losses[k] + s[k] for k in names) + 0.25
    assert float(total) == pytest.approx(expected, rel=1e-6)
    for k in names:
        assert terms[f"loss/{k}"] == pytest.approx(losses[k], rel=1e-6)
        assert terms[f"precision/{k}"] == pytest.approx(math.exp(-s[k]), rel=1e-6)
    assert terms["aux"] == 0.25 and terms["total"] == pytest.approx(float(total))
    fixed, _ = multitask_loss(out, labels, weights={"churn_signal": 2.0})  # fixed weights, also once
    assert float(fixed) == pytest.approx(2 * losses["churn_signal"] + losses["nba_primary"] + losses["spend_change"],
                                         rel=1e-6)


def test_validation_metrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)  # rounded: ties
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert binary_auc(y, s) == pytest.approx(brute)
    assert math.isnan(binary_auc(np.ones(5), np.arange(5.0)))
    out = {"churn_signal": torch.tensor([0.1, 0.9, 0.2, 0.8]), "nba_primary": torch.eye(7)[[1, 2, 3, 3]],
           "spend_change": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    labels = {"churn_signal": torch.tensor([0.0, 1.0, float("nan"), 1.0]),
              "nba_primary": torch.tensor([1.0, 2.0, 0.0, float("nan")]),
              "spend_change": torch.tensor([1.5, 2.0, 3.0, 3.0])}
    m = validation_metrics(out, labels)
    assert m["auc/churn_signal"] == 1.0 and m["acc/nba_primary"] == pytest.approx(2 / 3)
    assert m["mae/spend_change"] == pytest.approx(0.375)
    assert m["composite"] == pytest.approx((1.0 + 2 / 3 - 0.375) / 3)


# ------------------------------------------------------------------------------------------------ training


def test_manifold_parameters_go_to_riemannian_adam_without_weight_decay():
    model = model_of(experts=("hgcn", "causal"))
    opts = build_optimizers(model, TrainConfig(weight_decay=0.05))
    node_emb = model.shared0["hgcn"].node_emb
    assert type(opts[1]).__name__ == "RiemannianAdam"
    assert [p for g in opts[1].param_groups for p in g["params"]] == [node_emb]
    assert all(g["weight_decay"] == 0 for g in opts[1].param_groups)
    adamw = {id(p) for g in opts[0].param_groups for p in g["params"]}
    assert id(node_emb) not in adamw
    assert len(adamw) + 1 == sum(p.requires_grad for p in model.parameters())
    no_decay = {id(p) for g in opts[0].param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(model.loss_weighting.log_vars) in no_decay


def _run(tmp, crash_at=None, resume=False, epochs=3):
    model = model_of(seed=5, experts=("hgcn", "causal", "perslay"))
    train = [make_batch(16, seed=s) for s in (10, 11)]
    val = [make_batch(24, seed=12)]

    def batches(epoch):
        if epoch == crash_at:
            raise RuntimeError("simulated crash")
        return train

    return train_teacher(model, batches, val, TrainConfig(epochs=epochs, patience=99, lr=3e-3), seed=7,
                         checkpoint_dir=tmp, resume=resume)


def _untimed(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in history["epochs"]]


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    full, h_full = _run(tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path / "cut", crash_at=1)
    ck = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)  # plain dicts and tensors only
    assert ck["epoch"] == 0 and {"model", "optimizers", "schedulers", "history", "rng"} <= set(ck)
    assert PLEConfig.from_dict(ck["model_config"]) == tiny(experts=("hgcn", "causal", "perslay"))
    resumed, h_res = _run(tmp_path / "cut", resume=True)

    for a, b in ((full.state_dict(), resumed.state_dict()),
                 (torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"],
                  torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"])):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _untimed(h_full) == _untimed(h_res) and h_full["best_epoch"] == h_res["best_epoch"]

    last = h_full["epochs"][-1]
    for t in TASKS:  # every term is logged
        assert {f"train/loss/{t.name}", f"train/precision/{t.name}", f"val/loss/{t.name}"} <= set(last)
    assert {"train/aux", "train/total", "val/composite", "lr", "train/grad_norm"} <= set(last)
    assert "lagrangian/shared0.causal/rho" in last  # update_lagrangian ran once per epoch
    ball = full.shared0["hgcn"].ball
    assert torch.allclose(ball.projx(full.shared0["hgcn"].node_emb), full.shared0["hgcn"].node_emb)


def test_mlp_kind_builds_and_trains(tmp_path):
    model = model_of(expert_kind="mlp")
    assert model.expert_names == tuple(f"mlp_{i}" for i in range(len(EXPERTS)))
    assert all(isinstance(e, nn.Sequential) for e in model.shared0.values())
    assert model.full_input.dim > TOTAL_FEATURE_WIDTH - len(CATEGORICAL_COLUMNS)  # the full vector
    assert not model.manifold_parameters()
    train = [make_batch(16, seed=s) for s in (20, 21)]
    model, history = train_teacher(model, train, [make_batch(24, seed=22)], TrainConfig(epochs=3, lr=3e-3),
                                   checkpoint_dir=tmp_path)
    totals = [r["train/total"] for r in history["epochs"]]
    assert totals[-1] < totals[0] and history["best_epoch"] is not None
    assert (tmp_path / "best.pt").exists()
    out = model(make_batch(8, seed=23)[0])
    assert float(out.aux_loss) == 0 and out.gates["churn_signal"].shape == (8, len(EXPERTS) + 1)

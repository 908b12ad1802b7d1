"""Loss scale: with the default training config every binary task gets a fair share of the gradient at init."""

from __future__ import annotations

import numpy as np
import torch

from ple_platform.core.features.spec import CATEGORICAL_COLUMNS, FEATURE_GROUPS
from ple_platform.core.model.losses import loss_normalisers, multitask_loss, output_priors
from ple_platform.core.model.ple import PLEConfig, PLEModel
from ple_platform.core.model.train import TrainConfig
from ple_platform.core.tasks.spec import TASKS

N = 2048
BASE_RATES = {"churn_signal": 0.08, "will_acquire_deposits": 0.01, "will_acquire_investments": 0.006,
              "will_acquire_accounts": 0.03, "will_acquire_lending": 0.008, "will_acquire_payments": 0.05,
              "top_mcc_shift": 0.4}


def bank_like_batch(seed: int = 0):
    """Features as the warehouse serves them and labels with the bank's scales: rare acquisitions, a skewed
    50-class next MCC, counts and a diversity trend in the units of the data."""
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for grp in FEATURE_GROUPS:
        x = torch.randn(N, grp.dim, generator=g)
        for j, c in enumerate(grp.columns):
            if c in CATEGORICAL_COLUMNS:
                x[:, j] = torch.randint(0, 9, (N,), generator=g).float()
        batch[grp.name] = x
    rng = np.random.default_rng(seed)
    labels = {}
    for t in TASKS:
        if t.kind == "binary":
            y = rng.random(N) < BASE_RATES[t.name]
        elif t.kind == "multiclass":
            p = np.exp(-0.15 * np.arange(t.n_classes))
            y = rng.choice(t.n_classes, N, p=p / p.sum())
        elif t.name == "mcc_diversity_trend":
            y = rng.normal(0, 6, N)
        elif t.name == "cross_sell_count":
            y = rng.poisson(0.1, N)
        elif t.name == "product_stability":
            y = rng.beta(8, 1, N)
        else:
            y = rng.normal(0, 1.5, N)
        labels[t.name] = torch.as_tensor(y, dtype=torch.float32)
    return batch, labels


def gradient_shares(cfg: TrainConfig, at_constant_predictor: bool | None = None) -> dict[str, float]:
    """Each task's gradient norm on the shared experts at init, as a share of the sum over tasks.

    ``at_constant_predictor`` (default: ``cfg.prior_init``) places the heads at the constant predictor: where the
    default config starts, and where any config is after its first steps have fitted the head biases."""
    at_prior = cfg.prior_init if at_constant_predictor is None else at_constant_predictor
    torch.manual_seed(0)
    model = PLEModel(PLEConfig(expert_kind="mlp", expert_dim=16, n_layers=2, mlp_hidden=(32,), tower_dims=(16,)))
    model.eval()  # no dropout noise in the measurement
    batch, labels = bank_like_batch()
    np_labels = {k: v.numpy() for k, v in labels.items()}
    kw = dict(binary_loss=cfg.binary_loss, focal_gamma=cfg.focal_gamma, focal_alpha=cfg.focal_alpha,
              huber_delta=cfg.huber_delta)
    if at_prior:
        model.set_output_priors(output_priors(np_labels, cfg.huber_delta))
    norms = loss_normalisers(np_labels, **kw) if cfg.normalise_tasks else None
    out = model(batch)
    shared = [p for p in model.shared0.parameters()]
    grads = {}
    for t in TASKS:
        loss, _ = multitask_loss({t.name: out.outputs[t.name]}, {t.name: labels[t.name]},
                                 weights=model.loss_weighting, normalisers=norms, **kw)
        g = torch.autograd.grad(loss, shared, retain_graph=True)
        grads[t.name] = float(torch.sqrt(sum((x ** 2).sum() for x in g)))
    total = sum(grads.values())
    return {k: v / total for k, v in grads.items()}


def _worst_ratio(shares: dict[str, float]) -> float:
    binary = [t.name for t in TASKS if t.kind == "binary"]
    return max(max(shares[b] / shares[o], shares[o] / shares[b]) for b in binary for o in shares if o != b)


def test_default_config_gives_every_binary_task_a_gradient_share_within_10x_of_every_other_task():
    shares = gradient_shares(TrainConfig())
    assert _worst_ratio(shares) <= 10.0, shares


def test_the_old_loss_starves_binary_tasks():
    """Control: the previous loss (focal, alpha 0.25, no normalisation) fails the same check once the heads sit
    at the constant predictor (at p = 0.5 every binary task has a large gradient; it vanishes within the first
    steps, as the biases reach the base rates)."""
    old = TrainConfig(binary_loss="focal", focal_alpha=0.25, normalise_tasks=False, prior_init=False)
    assert _worst_ratio(gradient_shares(old, at_constant_predictor=True)) > 10.0

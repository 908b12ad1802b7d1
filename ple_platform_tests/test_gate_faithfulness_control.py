"""Gate faithfulness against a no-information control: gates that carry no information about the customer fail.

Built models with known ground truth: four shared experts, each linear in one demographics column; every
customer has exactly one active column (value 3), so expert k is the one that matters for customers whose column
k is active. A gate that routes those customers to expert k is informative; the same gate pointed at the wrong
expert, or an untrained model's gates, are not — and the old zero-masking share cannot tell them apart.
"""

import pytest
import torch
from torch import nn

from ple_platform.core.model import evaluate as ev
from ple_platform.core.model.ple import PLEConfig, PLEModel
from ple_platform_tests.test_ple import make_batch

EXPERTS = ("deepfm", "temporal", "causal", "ot")
TASK = "churn_signal"


class _Linear(nn.Module):
    """An expert whose output is linear in demographics column ``k`` (fixed random directions)."""

    def __init__(self, k: int, out_dim: int):
        super().__init__()
        g = torch.Generator().manual_seed(k)
        self.k = k
        self.register_buffer("v", torch.randn(out_dim, generator=g))
        self.register_buffer("u", torch.randn(out_dim, generator=g))

    def forward(self, batch):
        return batch["demographics"][:, self.k:self.k + 1].float() * self.v + self.u

    def aux_loss(self):
        return self.v.new_zeros(())


def _model(shift: int | None, scale: float = 0.3) -> PLEModel:
    """``shift`` 0: the gate routes column-k customers to expert k; 1: to expert k+1 (wrong); None: untrained."""
    torch.manual_seed(0)
    cfg = PLEConfig(expert_dim=16, n_layers=1, mlp_hidden=(16,), tower_dims=(16,), experts=EXPERTS,
                    task_input_groups=("demographics",))
    factories = {e: (lambda k: (lambda router, out_dim, **kw: _Linear(k, out_dim)))(k) for k, e in enumerate(EXPERTS)}
    model = PLEModel(cfg, factories=factories)
    if shift is not None:
        gate = model.gates0.task_gates[TASK]
        with torch.no_grad():
            gate.weight.zero_()
            gate.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, -12.0]))  # the task-specific expert is switched off
            for k in range(4):
                gate.weight[k, (k + shift) % 4] = scale
    return model


@pytest.fixture(scope="module")
def batch():
    b, _ = make_batch(n=512, seed=6)
    active = torch.randint(0, 4, (512,), generator=torch.Generator().manual_seed(1))
    b["demographics"][:, :4] = 3.0 * torch.nn.functional.one_hot(active, 4).float()
    return b


def _check(model, batch):
    return ev.gate_faithfulness_control(model, batch, tasks=[TASK], n_perm=2, n_boot=100)[TASK]


def test_informative_gates_beat_the_no_information_control(batch):
    r = _check(_model(shift=0), batch)
    assert r["passes"] and r["significant"], r
    assert r["margin"]["lo"] > 0 and r["margin"]["value"] >= ev.FAITHFULNESS_GOAL_MARGIN


def test_gates_routing_to_the_wrong_expert_fail(batch):
    r = _check(_model(shift=1), batch)
    assert not r["passes"] and r["margin"]["value"] < ev.FAITHFULNESS_GOAL_MARGIN, r


def test_an_untrained_models_gates_fail_although_zero_masking_scores_them_high(batch):
    r = _check(_model(shift=None), batch)
    assert not r["passes"], r
    assert r["zero_mask_share"] > 0.5  # the control-free score calls random gates "faithful"


def test_the_control_needs_at_least_one_permutation(batch):
    with pytest.raises(ValueError, match="n_perm"):
        ev.gate_faithfulness_control(_model(shift=0), batch, tasks=[TASK], n_perm=0)

"""PLE teacher (Tang et al. 2020): a heterogeneous CGC extraction layer, 1-2 MLP CGC layers, 13 task towers.

Layer 0 (the explanation layer)::

    shared experts  : the 7 heterogeneous experts, each reading its routed groups   (B, d) each
                      ("mlp" kind: as many MLPs over the full concatenated tabular groups = vanilla PLE)
    task experts    : per task, ``task_experts`` MLPs over the *compact* input
                      (demographics + product_holdings + txn_behavior, categorical codes embedded)
    normalisation   : one LayerNorm per expert output, so no expert wins the gate by scale alone
    task gate k     : softmax(Linear(compact)) over [shared..., own task experts]   -> recorded per customer
    shared gate     : softmax(Linear(compact)) over all experts of the layer        -> next layer's shared input

Layers 1..n-1: the same CGC with MLP experts; shared experts read the previous shared-gate output, task k's
experts and gate read task k's previous output (the paper's selector); the last layer has no shared gate.
Towers: MLP per task -> raw head (binary 1 logit, multiclass C logits, regression 1 value). Sigmoid/softmax
only in ``predict`` and in the losses (reference defect: sigmoid on multiclass logits, then CE).

Task experts deliberately do not see the full 1,211-d vector: in the reference they did, and dominated the
gate, which made the heterogeneous experts' gate weights meaningless as an explanation.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ple_platform.core.features.spec import CATEGORICAL_COLUMNS, EXPERTS, FEATURE_GROUPS, FeatureGroupSpec, group
from ple_platform.core.model.batch import Batch, Router
from ple_platform.core.model.losses import UncertaintyWeighting
from ple_platform.core.model.ple_config import COMPACT_GROUPS, PLEConfig  # noqa: F401  (re-exported)
from ple_platform.core.tasks.spec import TASKS_BY_NAME, TaskSpec

# --------------------------------------------------------------------------------------------- expert registry

_EXPERT_CLASSES: dict[str, tuple[str, str]] = {
    "deepfm": ("ple_platform.core.model.experts.deepfm", "DeepFM"),
    "temporal": ("ple_platform.core.model.experts.temporal", "TemporalEnsemble"),
    "hgcn": ("ple_platform.core.model.experts.hgcn", "HGCNExpert"),
    "perslay": ("ple_platform.core.model.experts.perslay", "PersLay"),
    "lightgcn": ("ple_platform.core.model.experts.lightgcn_expert", "LightGCNExpert"),
    "causal": ("ple_platform.core.model.experts.causal", "CausalExpert"),
    "ot": ("ple_platform.core.model.experts.optimal_transport", "OptimalTransportExpert"),
}
assert tuple(_EXPERT_CLASSES) == EXPERTS


def _lazy_factory(name: str) -> Callable[..., nn.Module]:
    module, cls = _EXPERT_CLASSES[name]

    def build(router: Router = Router(), out_dim: int = 64, **config) -> nn.Module:
        # Imported on use: an expert's heavy dependency (POT, torch-geometric, geoopt) is only needed when built.
        try:
            klass = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as e:
            raise ImportError(f"expert {name!r} needs {module}.{cls}, which cannot be imported: {e}") from e
        return klass(router=router, out_dim=out_dim, **config)

    build.__name__ = f"build_{name}"
    return build


EXPERT_FACTORIES: dict[str, Callable[..., nn.Module]] = {name: _lazy_factory(name) for name in EXPERTS}

# --------------------------------------------------------------------------------------------- building blocks


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(dropout)]
        in_dim = h
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


class TabularInput(nn.Module):
    """Concatenated feature groups: standardised numeric columns as they are, each categorical code column
    through a small embedding (raw integer codes are not a meaningful scale for a linear layer)."""

    def __init__(self, groups: tuple[FeatureGroupSpec, ...], n_buckets: int = 64, cat_dim: int = 4):
        super().__init__()
        self.names = tuple(g.name for g in groups)
        cols = [(g.name, j, c) for g in groups for j, c in enumerate(g.columns)]
        num = [i for i, (_, _, c) in enumerate(cols) if c not in CATEGORICAL_COLUMNS]
        cat = [i for i, (_, _, c) in enumerate(cols) if c in CATEGORICAL_COLUMNS]
        self.register_buffer("num_idx", torch.tensor(num, dtype=torch.long), persistent=False)
        self.register_buffer("cat_idx", torch.tensor(cat, dtype=torch.long), persistent=False)
        self.n_buckets = n_buckets
        self.embeds = nn.ModuleList(nn.Embedding(n_buckets, cat_dim) for _ in cat)
        self.dim = len(num) + cat_dim * len(cat)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = torch.cat([batch[n] for n in self.names], dim=1).float()
        parts = [x.index_select(1, self.num_idx)]
        if len(self.embeds):
            codes = x.index_select(1, self.cat_idx).round().long().clamp(min=0) % self.n_buckets
            parts += [emb(c) for emb, c in zip(self.embeds, codes.unbind(1), strict=True)]
        return torch.cat(parts, dim=1)


class CGCGates(nn.Module):
    """Normalisation + gating of one extraction layer, given its experts' raw outputs.

    Task k's gate mixes the shared experts and task k's own experts; the optional shared gate mixes all of them.
    """

    def __init__(self, n_shared: int, tasks: tuple[str, ...], m: int, dim: int, task_sel_dim: int,
                 shared_sel_dim: int | None):
        super().__init__()
        self.tasks = tasks
        self.shared_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_shared))
        self.task_norms = nn.ModuleDict({t: nn.ModuleList(nn.LayerNorm(dim) for _ in range(m)) for t in tasks})
        self.task_gates = nn.ModuleDict({t: nn.Linear(task_sel_dim, n_shared + m) for t in tasks})
        self.shared_gate = (
            nn.Linear(shared_sel_dim, n_shared + m * len(tasks)) if shared_sel_dim is not None else None
        )

    def forward(self, shared: list[torch.Tensor], own: dict[str, list[torch.Tensor]],
                task_sel: dict[str, torch.Tensor], shared_sel: torch.Tensor | None,
                masked: frozenset[int] = frozenset()):
        s = [norm(e) for norm, e in zip(self.shared_norms, shared, strict=True)]
        s = [torch.zeros_like(e) if i in masked else e for i, e in enumerate(s)]  # masking = removing its signal
        o = {t: [norm(e) for norm, e in zip(self.task_norms[t], own[t], strict=True)] for t in self.tasks}
        outs, gates = {}, {}
        for t in self.tasks:
            stack = torch.stack(s + o[t], dim=1)  # (B, n_shared + m, d)
            w = torch.softmax(self.task_gates[t](task_sel[t]), dim=-1)
            outs[t], gates[t] = torch.einsum("be,bed->bd", w, stack), w
        shared_out = None
        if self.shared_gate is not None:
            stack = torch.stack(s + [e for t in self.tasks for e in o[t]], dim=1)
            w = torch.softmax(self.shared_gate(shared_sel), dim=-1)
            shared_out = torch.einsum("be,bed->bd", w, stack)
        return outs, shared_out, gates


@dataclass
class ModelOutput:
    outputs: dict[str, torch.Tensor]  # binary/regression (B,), multiclass (B, C) raw logits
    gates: dict[str, torch.Tensor]  # layer-0 task gates (B, n_shared + task_experts), columns: gate_columns(task)
    aux_loss: torch.Tensor  # sum of the shared experts' structural losses (scalar)
    aux_terms: dict[str, torch.Tensor] = field(default_factory=dict)  # per expert, for logging


# ------------------------------------------------------------------------------------------------------ model


class PLEModel(nn.Module):
    """Multi-task PLE teacher; see the module docstring. ``forward(batch) -> ModelOutput``."""

    def __init__(self, config: PLEConfig | None = None, router: Router = Router(),
                 factories: Mapping[str, Callable[..., nn.Module]] | None = None):
        super().__init__()
        self.config = cfg = config or PLEConfig()
        self.tasks: tuple[TaskSpec, ...] = tuple(TASKS_BY_NAME[t] for t in cfg.tasks)
        names = cfg.tasks
        d, m = cfg.expert_dim, cfg.task_experts
        factories = {**EXPERT_FACTORIES, **(factories or {})}

        # Layer 0 -----------------------------------------------------------------------------------------
        self.compact = TabularInput(tuple(group(g) for g in cfg.task_input_groups), cfg.n_buckets, cfg.cat_dim)
        if cfg.expert_kind == "heterogeneous":
            self.expert_names = tuple(cfg.experts)
            self.full_input = None
            self.shared0 = nn.ModuleDict(
                {n: factories[n](router=router, out_dim=d, **cfg.expert_config.get(n, {})) for n in cfg.experts}
            )
        else:
            self.expert_names = tuple(f"mlp_{i}" for i in range(len(cfg.experts)))
            self.full_input = TabularInput(FEATURE_GROUPS, cfg.n_buckets, cfg.cat_dim)  # shared by the MLPs
            self.shared0 = nn.ModuleDict(
                {n: mlp(self.full_input.dim, cfg.mlp_hidden, d, cfg.dropout) for n in self.expert_names}
            )
        self.task0 = nn.ModuleDict(
            {t: nn.ModuleList(mlp(self.compact.dim, cfg.mlp_hidden, d, cfg.dropout) for _ in range(m)) for t in names}
        )
        n_shared = len(self.expert_names)
        self.gates0 = CGCGates(n_shared, names, m, d, self.compact.dim, self.compact.dim if cfg.n_layers > 1 else None)

        # Layers 1..n-1 -----------------------------------------------------------------------------------
        n_up = cfg.upper_shared_experts or n_shared
        self.upper = nn.ModuleList()
        for j in range(1, cfg.n_layers):
            last = j == cfg.n_layers - 1
            self.upper.append(nn.ModuleDict({
                "shared": nn.ModuleList(mlp(d, cfg.mlp_hidden, d, cfg.dropout) for _ in range(n_up)),
                "task": nn.ModuleDict(
                    {t: nn.ModuleList(mlp(d, cfg.mlp_hidden, d, cfg.dropout) for _ in range(m)) for t in names}
                ),
                "gates": CGCGates(n_up, names, m, d, d, None if last else d),
            }))

        # Towers ------------------------------------------------------------------------------------------
        self.towers = nn.ModuleDict()
        for t in self.tasks:
            layers, width = [], d
            for h in cfg.tower_dims:
                layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.SiLU(), nn.Dropout(cfg.dropout)]
                width = h
            self.towers[t.name] = nn.Sequential(*layers, nn.Linear(width, t.output_dim))

        self.loss_weighting = UncertaintyWeighting(names) if cfg.uncertainty else None
        self._masked: frozenset[int] = frozenset()

    # ------------------------------------------------------------------------------------------------------

    def gate_columns(self, task: str) -> tuple[str, ...]:
        """Names of the columns of ``gates[task]``: the shared experts, then the task's own experts."""
        return self.expert_names + tuple(f"{task}/own_{i}" for i in range(self.config.task_experts))

    @contextlib.contextmanager
    def mask_expert(self, *names: str) -> Iterator[None]:
        """Zero the (normalised) layer-0 output of the named shared experts inside the block; gate weights are
        unchanged, so the block measures what the gated contribution of those experts was."""
        unknown = [n for n in names if n not in self.expert_names]
        if unknown:
            raise KeyError(f"unknown shared experts {unknown}; known: {self.expert_names}")
        before = self._masked
        self._masked = before | {self.expert_names.index(n) for n in names}
        try:
            yield
        finally:
            self._masked = before

    def forward(self, batch: Batch, mask: tuple[str, ...] = ()) -> ModelOutput:
        if mask:
            with self.mask_expert(*mask):
                return self.forward(batch)
        names = self.config.tasks
        compact = self.compact(batch)
        if self.full_input is not None:
            full = self.full_input(batch)
            shared = [e(full) for e in self.shared0.values()]
            aux_terms: dict[str, torch.Tensor] = {}
        else:
            shared = [e(batch) for e in self.shared0.values()]
            aux_terms = {n: e.aux_loss() for n, e in self.shared0.items()}  # read after forward (latest batch)
        own = {t: [e(compact) for e in self.task0[t]] for t in names}
        outs, shared_out, gates = self.gates0(shared, own, {t: compact for t in names}, compact, self._masked)

        for layer in self.upper:
            sh = [e(shared_out) for e in layer["shared"]]
            own = {t: [e(outs[t]) for e in layer["task"][t]] for t in names}
            outs, shared_out, _ = layer["gates"](sh, own, outs, shared_out)

        outputs = {}
        for t in self.tasks:
            y = self.towers[t.name](outs[t.name])
            outputs[t.name] = y if t.kind == "multiclass" else y.squeeze(-1)
        aux = sum(aux_terms.values(), compact.new_zeros(()))
        return ModelOutput(outputs=outputs, gates=gates, aux_loss=aux, aux_terms=aux_terms)

    @torch.no_grad()
    def set_output_priors(self, priors: Mapping[str, np.ndarray]) -> None:
        """Start each task head at its constant predictor (``losses.output_priors``) instead of p = 0.5 / uniform
        classes / 0: the bias is the prior and the head's weights are shrunk 100x, so the initial predictions
        barely vary across customers and no task starts with a loss (and gradient) far above its baseline."""
        for name, prior in priors.items():
            if name in self.towers:
                head = self.towers[name][-1]
                head.bias.copy_(torch.as_tensor(np.asarray(prior), dtype=head.bias.dtype).reshape(head.bias.shape))
                head.weight.mul_(0.01)

    # ------------------------------------------------------------------------------------------------------

    def manifold_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters on a Riemannian manifold (geoopt), to be stepped by RiemannianAdam."""
        return [p for p in self.parameters() if p.requires_grad and hasattr(p, "manifold")]

    def euclidean_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad and not hasattr(p, "manifold")]


@torch.no_grad()
def predict(outputs: ModelOutput | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw heads -> probabilities (binary: sigmoid), class probabilities (multiclass: softmax), values."""
    raw = outputs.outputs if isinstance(outputs, ModelOutput) else outputs
    out = {}
    for name, y in raw.items():
        kind = TASKS_BY_NAME[name].kind
        out[name] = torch.sigmoid(y) if kind == "binary" else torch.softmax(y, dim=-1) if kind == "multiclass" else y
    return out

"""Multi-task losses of the PLE teacher: BCE (binary; focal optional), softmax cross-entropy (multiclass), Huber
(regression), label masks, per-task normalisation by the constant-predictor loss, Kendall uncertainty weighting.

Why normalise: raw task losses live on unrelated scales. At the best constant predictor a 1%-positive binary task
costs ~0.06 nats while a 50-class cross-entropy costs ~3 and a regression's Huber loss anything from 0.005 to 5, so
an unnormalised sum spends almost all of its gradient on a few heads (learned log-variances, clamped to e^±4, move
far too little to fix that). Each task loss is divided by ``sqrt(L0_k)``, L0_k = the task's loss at the best
constant predictor on the training labels (``loss_normalisers``). The square root, not L0 itself, is what equalises
the *gradient*: at the baseline the residual of a quadratic loss has scale sqrt(2 L0) and that of a cross-entropy
at a rare rate p scales like sqrt(p) while L0 ~ p log(1/p); dividing by L0 would hand a tight regression (L0 = 0.005)
100x the gradient of a wide one. Heads start at that constant predictor (``output_priors``, applied by
``PLEModel.set_output_priors``), so no task starts far above its baseline.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ple_platform.core.tasks.spec import TASKS_BY_NAME

LOG_VAR_RANGE = (-4.0, 4.0)


def label_mask(labels: torch.Tensor, kind: str) -> torch.Tensor:
    """True where the label is present (finite, and not the -1 sentinel for binary/multiclass)."""
    ok = torch.isfinite(labels)
    if kind != "regression":
        ok = ok & (labels != -1)
    return ok


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               alpha: float | None = 0.25) -> torch.Tensor:
    """Per-sample binary focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t, from logits.

    ``log p_t = -BCE(logits, target)`` keeps it stable; ``alpha=None`` disables the class weighting.
    """
    target = target.to(logits.dtype)
    log_pt = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = -((1.0 - log_pt.exp()) ** gamma) * log_pt
    if alpha is not None:
        loss = loss * (alpha * target + (1.0 - alpha) * (1.0 - target))
    return loss


BINARY_LOSSES = ("bce", "focal")
NORM_FLOOR = 1e-3  # a task whose constant predictor is (almost) perfect is not blown up by 1 / L0


def task_loss(output: torch.Tensor, labels: torch.Tensor, kind: str, mask: torch.Tensor | None = None, *,
              binary_loss: str = "bce", focal_gamma: float = 2.0, focal_alpha: float | None = None,
              huber_delta: float = 1.0) -> tuple[torch.Tensor | None, int]:
    """Mean loss over the labelled rows of one task and their count; (None, 0) if no row is labelled."""
    valid = label_mask(labels, kind)
    if mask is not None:
        valid = valid & mask.bool()
    n = int(valid.sum())
    if n == 0:
        return None, 0
    y, out = labels[valid], output[valid]  # row selection: masked rows get exactly zero gradient
    if kind == "binary":
        if binary_loss == "bce":
            loss = F.binary_cross_entropy_with_logits(out.float(), y.float(), reduction="none")
        elif binary_loss == "focal":
            loss = focal_loss(out.float(), y, focal_gamma, focal_alpha)
        else:
            raise ValueError(f"binary_loss must be one of {BINARY_LOSSES}, got {binary_loss!r}")
    elif kind == "multiclass":
        loss = F.cross_entropy(out.float(), y.long(), reduction="none")  # softmax CE on raw logits
    elif kind == "regression":
        loss = F.huber_loss(out.float(), y.to(torch.float32), delta=huber_delta, reduction="none")
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    return loss.mean(), n


def _present(y: np.ndarray, kind: str) -> np.ndarray:
    y = np.asarray(y, np.float64)
    ok = np.isfinite(y)
    if kind != "regression":
        ok &= y != -1
    return y[ok]


def output_priors(labels: Mapping[str, np.ndarray], huber_delta: float = 1.0) -> dict[str, np.ndarray]:
    """The best constant raw head of each task on ``labels``: binary log-odds of the positive rate, multiclass
    log class frequencies, regression Huber location (``huber_location``).
    Tasks without a labelled row are left out."""
    out = {}
    for name, y in labels.items():
        spec = TASKS_BY_NAME[name]
        v = _present(y, spec.kind)
        if not len(v):
            continue
        if spec.kind == "binary":
            p = float(np.clip(v.mean(), 1e-4, 1 - 1e-4))
            out[name] = np.array([np.log(p / (1 - p))])
        elif spec.kind == "multiclass":
            k = spec.n_classes
            freq = np.bincount(v.astype(np.int64).clip(0, k - 1), minlength=k) / len(v)
            out[name] = np.log(np.clip(freq, 1e-4, None))
        else:
            out[name] = np.array([huber_location(v, huber_delta)])
    return out


def huber_location(y: np.ndarray, delta: float = 1.0, n_iter: int = 100) -> float:
    """The constant minimising the mean Huber loss (Newton steps from the median; exact for bounded data): the
    head's start, where the regression loss has zero mean gradient, as the priors of the other kinds have."""
    m = float(np.median(y))
    for _ in range(n_iter):
        r = y - m
        inside = np.abs(r) <= delta
        step = float(np.clip(r, -delta, delta).mean()) / max(float(inside.mean()), 1e-3)
        m += step
        if abs(step) < 1e-10:
            break
    return m


def constant_predictor_losses(labels: Mapping[str, np.ndarray], *, binary_loss: str = "bce",
                              focal_gamma: float = 2.0, focal_alpha: float | None = None,
                              huber_delta: float = 1.0) -> dict[str, float]:
    """Each task's mean loss at ``output_priors`` (floored at ``NORM_FLOOR``): the "learned nothing" level every
    task loss is divided by. Computed with the same ``task_loss`` the training uses."""
    out = {}
    for name, prior in output_priors(labels, huber_delta).items():
        spec = TASKS_BY_NAME[name]
        y = torch.as_tensor(np.asarray(labels[name], np.float64), dtype=torch.float32)
        head = torch.as_tensor(prior, dtype=torch.float32)
        pred = head.expand(len(y), len(prior)) if spec.kind == "multiclass" else head.expand(len(y))
        loss, _ = task_loss(pred, y, spec.kind, binary_loss=binary_loss, focal_gamma=focal_gamma,
                            focal_alpha=focal_alpha, huber_delta=huber_delta)
        out[name] = max(float(loss), NORM_FLOOR)
    return out


def loss_normalisers(labels: Mapping[str, np.ndarray], **loss_kw) -> dict[str, float]:
    """{task: sqrt(L0)} (``constant_predictor_losses``): what ``multitask_loss(normalisers=...)`` divides by."""
    return {k: float(np.sqrt(v)) for k, v in constant_predictor_losses(labels, **loss_kw).items()}


class UncertaintyWeighting(nn.Module):
    """One learned log-variance s_k per task (init 0 = weight 1), clamped to ``LOG_VAR_RANGE``."""

    def __init__(self, tasks: tuple[str, ...]):
        super().__init__()
        self.tasks = tuple(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def log_var(self, task: str) -> torch.Tensor:
        return self.log_vars[self.tasks.index(task)].clamp(*LOG_VAR_RANGE)


def multitask_loss(outputs, labels: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None,
                   weights: UncertaintyWeighting | Mapping[str, float] | None = None, *,
                   aux: torch.Tensor | None = None, normalisers: Mapping[str, float] | None = None,
                   binary_loss: str = "bce", focal_gamma: float = 2.0, focal_alpha: float | None = None,
                   huber_delta: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and every term as floats.

    ``outputs``: a ``ModelOutput`` (its ``aux_loss`` is used unless ``aux`` is given) or {task: raw head}.
    ``weights``: an ``UncertaintyWeighting`` (learned), fixed {task: w}, or None (all 1).
    ``normalisers``: {task: divisor} (``loss_normalisers``); each task loss is divided by it before weighting.
    Terms: ``loss/<task>`` (unweighted, unnormalised mean loss), ``n/<task>`` (labelled rows), ``log_var/<task>`` and
    ``precision/<task>`` (= exp(-s), uncertainty weighting only), ``aux``, ``total``.
    """
    raw = outputs.outputs if hasattr(outputs, "outputs") else outputs
    if aux is None:
        aux = getattr(outputs, "aux_loss", None)
    fixed = weights if isinstance(weights, Mapping) else {}
    uw = weights if isinstance(weights, UncertaintyWeighting) else None
    total, terms, logged = None, {}, {}  # logged: tensors, converted in one transfer at the end
    for name, out in raw.items():
        if name not in labels:
            continue
        kind = TASKS_BY_NAME[name].kind
        loss, n = task_loss(out, labels[name].to(out.device), kind, None if masks is None else masks.get(name),
                            binary_loss=binary_loss, focal_gamma=focal_gamma, focal_alpha=focal_alpha,
                            huber_delta=huber_delta)
        terms[f"n/{name}"] = float(n)
        if loss is None:
            continue
        logged[f"loss/{name}"] = loss
        if normalisers is not None and name in normalisers:
            loss = loss / normalisers[name]
        if uw is not None:
            s = uw.log_var(name)
            term = torch.exp(-s) * loss + s
            logged[f"log_var/{name}"], logged[f"precision/{name}"] = s, torch.exp(-s)
        else:
            term = loss
        term = fixed.get(name, 1.0) * term
        total = term if total is None else total + term
    if total is None:  # no labelled row at all (callers skip the backward: it has no graph)
        total = torch.zeros((), device=next(iter(raw.values())).device)
    if aux is not None:
        total = total + aux
        logged["aux"] = aux
    logged["total"] = total
    values = torch.stack([v.detach().float().reshape(()) for v in logged.values()]).tolist()
    terms.update(zip(logged, values, strict=True))
    return total, terms

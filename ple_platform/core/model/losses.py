"""Multi-task losses of the PLE teacher: focal (binary), softmax cross-entropy (multiclass), Huber (regression),
label masks, Kendall uncertainty weighting.

Missing labels: NaN for every kind; additionally -1 for binary and multiclass (integer-coded labels never take
that value). Regression labels use NaN only, because -1 is a legitimate value of e.g. ``mcc_diversity_trend``.
A missing label contributes exactly zero loss and zero gradient: rows are *selected* before the loss is
computed (no ``where``/multiply-by-zero, which would let a NaN prediction or label poison the gradient).
Each task loss is the mean over that task's labelled rows; a task without labelled rows in the batch is skipped
(it neither adds a loss nor pulls its log-variance).

Uncertainty weighting (Kendall, Gal & Cipolla 2018), the form used here, applied exactly once::

    total = sum_k  w_k * (exp(-s_k) * L_k + s_k)  +  aux

with s_k = log sigma_k^2 learned and clamped to [-4, 4], w_k an optional fixed task weight (default 1) and aux the
experts' structural losses. This is 2x Kendall's regression form 0.5*exp(-s)L + 0.5*s (same optimum in s,
``exp(-s) = 1/L``); the reference applied w_k twice (w_k^2) — here it enters once.
"""

from __future__ import annotations

from collections.abc import Mapping

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


def task_loss(output: torch.Tensor, labels: torch.Tensor, kind: str, mask: torch.Tensor | None = None, *,
              focal_gamma: float = 2.0, focal_alpha: float | None = 0.25,
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
        loss = focal_loss(out.float(), y, focal_gamma, focal_alpha)
    elif kind == "multiclass":
        loss = F.cross_entropy(out.float(), y.long(), reduction="none")  # softmax CE on raw logits
    elif kind == "regression":
        loss = F.huber_loss(out.float(), y.to(torch.float32), delta=huber_delta, reduction="none")
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    return loss.mean(), n


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
                   aux: torch.Tensor | None = None, focal_gamma: float = 2.0, focal_alpha: float | None = 0.25,
                   huber_delta: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and every term as floats.

    ``outputs``: a ``ModelOutput`` (its ``aux_loss`` is used unless ``aux`` is given) or {task: raw head}.
    ``weights``: an ``UncertaintyWeighting`` (learned), fixed {task: w}, or None (all 1).
    Terms: ``loss/<task>`` (unweighted mean loss), ``n/<task>`` (labelled rows), ``log_var/<task>`` and
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
                            focal_gamma=focal_gamma, focal_alpha=focal_alpha, huber_delta=huber_delta)
        terms[f"n/{name}"] = float(n)
        if loss is None:
            continue
        logged[f"loss/{name}"] = loss
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

"""Training loop of the PLE teacher: two optimisers, cosine schedule, clipping, early stopping on a validation
composite, per-epoch checkpoints that resume bit-for-bit.

* **Optimisers.** AdamW over the Euclidean parameters (weight decay only on matrices; biases, norms and the
  log-variances are not decayed) and ``geoopt.optim.RiemannianAdam`` over manifold parameters (HGCN's Poincaré
  node embeddings), without weight decay: a Euclidean step or decay would treat the ball as flat.
* **Schedule.** Per-epoch learning-rate factor: optional linear warm-up, then cosine from 1 to ``min_lr_ratio``.
* **Loss**: BCE for binary tasks (``binary_loss="focal"`` optional), every task loss divided by the square root
  of its constant-predictor loss on the training labels and the heads started at that constant predictor
  (``losses`` module docstring: otherwise a few multiclass and regression tasks take most of the gradient).
* **Model selection / early stopping** on ``selection_metric`` (default ``mean_binary_auc`` over the binary
  tasks, which regression errors cannot dominate; ``composite`` = mean of binary AUC, multiclass accuracy and
  regression -MAE is the alternative); recorded in the history. Never on a validation loss: with learned
  log-variances the loss moves when the weights move (reference defect 22).
* **Checkpoints** (``checkpoint_dir/last.pt`` every epoch, ``best.pt`` on improvement): plain dicts of tensors
  and numbers (``torch.load(weights_only=True)`` reads them; no module pickling): model and optimiser/scheduler
  state, epoch, history, early-stopping state, the best weights so far and every RNG state, so a resumed run
  continues exactly where the uninterrupted one would have been.
* **Batches**: ``train_batches``/``val_batches`` are re-iterables of ``(Batch, labels)`` or callables
  ``f(epoch) -> iterable`` (use the epoch to reshuffle deterministically).
* Experts with an ``update_lagrangian()`` (NOTEARS' outer step) are stepped once per epoch, after training.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from ple_platform.core.model.batch import Batch
from ple_platform.core.model.losses import label_mask, loss_normalisers, multitask_loss, output_priors
from ple_platform.core.progress import Progress
from ple_platform.core.tasks.spec import TASKS_BY_NAME

log = logging.getLogger(__name__)

Labels = dict[str, torch.Tensor]
BatchSource = Iterable[tuple[Batch, Labels]] | Callable[[int], Iterable[tuple[Batch, Labels]]]
CHECKPOINT_FORMAT = 1


@dataclass
class TrainConfig:
    epochs: int = 20
    lr: float = 1e-3
    riemannian_lr: float | None = None  # default: lr
    weight_decay: float = 0.01
    warmup_epochs: int = 0
    min_lr_ratio: float = 0.05
    grad_clip: float = 5.0
    patience: int = 4  # epochs without a composite improvement > min_delta
    min_delta: float = 1e-4
    binary_loss: str = "bce"  # or "focal"
    focal_gamma: float = 2.0
    focal_alpha: float | None = None  # class weight of the focal loss; 0.25 (Lin et al.) down-weights rare positives
    huber_delta: float = 1.0
    normalise_tasks: bool = True  # divide each task loss by sqrt(its constant-predictor loss on the training labels)
    prior_init: bool = True  # start every head at the constant predictor
    selection_metric: str = "mean_binary_auc"  # or "composite"
    task_weights: dict[str, float] | None = None  # fixed weights, used when the model has no uncertainty weighting
    device: str = "auto"  # "auto" = CUDA when available, else CPU
    amp: bool = True  # bf16 autocast, CUDA only
    deterministic: bool = True  # TorchScript graph optimisation off: bit-identical reruns and resumes on CPU


# ------------------------------------------------------------------------------------------------ metrics


def binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties at half); NaN when only one class is present."""
    y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def validation_metrics(outputs: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per-task metric (``auc/``, ``acc/``, ``mae/``) on labelled rows, and ``composite`` (higher is better)."""
    out, parts = {}, []
    for name, pred in outputs.items():
        if name not in labels:
            continue
        kind = TASKS_BY_NAME[name].kind
        y = labels[name]
        ok = label_mask(y, kind)
        if not bool(ok.any()):
            continue
        p, y = pred[ok].float().cpu(), y[ok].cpu()
        if kind == "binary":
            value = binary_auc(y.numpy(), p.numpy())  # logits rank like probabilities
            out[f"auc/{name}"], score = value, value
        elif kind == "multiclass":
            value = float((p.argmax(dim=1) == y.long()).float().mean())
            out[f"acc/{name}"], score = value, value
        else:
            value = float((p - y).abs().mean())
            out[f"mae/{name}"], score = value, -value
        if math.isfinite(score):
            parts.append(score)
    out["composite"] = float(np.mean(parts)) if parts else float("nan")
    aucs = [v for k, v in out.items() if k.startswith("auc/") and math.isfinite(v)]
    out["mean_binary_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return out


# ------------------------------------------------------------------------------------------------ helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _lr_factor(epoch: int, cfg: TrainConfig) -> float:
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / (cfg.warmup_epochs + 1)
    span = max(cfg.epochs - cfg.warmup_epochs, 1)
    progress = min((epoch - cfg.warmup_epochs) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """[AdamW over Euclidean parameters, RiemannianAdam over manifold parameters (if any)]."""
    manifold = [p for p in model.parameters() if p.requires_grad and hasattr(p, "manifold")]
    weighting = getattr(model, "loss_weighting", None)
    no_decay_ids = {id(p) for p in weighting.parameters()} if weighting is not None else set()
    euclid = [p for p in model.parameters() if p.requires_grad and not hasattr(p, "manifold")]
    decay = [p for p in euclid if p.ndim >= 2 and id(p) not in no_decay_ids]
    rest = [p for p in euclid if p.ndim < 2 or id(p) in no_decay_ids]
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=cfg.lr
    )]
    if manifold:
        import geoopt

        opts.append(geoopt.optim.RiemannianAdam(manifold, lr=cfg.riemannian_lr or cfg.lr, weight_decay=0.0))
    return opts


def _load_optimizer(opt: torch.optim.Optimizer, state: dict) -> None:
    opt.load_state_dict(state)
    # torch turns every "step" into a float32 tensor on load; geoopt's RiemannianAdam keeps a Python int and
    # derives its bias corrections from it in float64: restore the int, or a resumed run drifts in the last bit.
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, saved in state["state"].items():
        if isinstance(saved.get("step"), int):
            opt.state[params[i]]["step"] = saved["step"]


def _batches(src: BatchSource, epoch: int) -> Iterable[tuple[Batch, Labels]]:
    return src(epoch) if callable(src) else src


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write leaves the previous checkpoint intact


def _mean_terms(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    out = {}
    for k in sorted(keys):
        vals = [r[k] for r in rows if k in r]
        out[k] = float(np.sum(vals)) if k.startswith("n/") else float(np.mean(vals))
    return out


# ------------------------------------------------------------------------------------------------ training


def train_teacher(model: nn.Module, train_batches: BatchSource, val_batches: BatchSource | None,
                  config: TrainConfig | None = None, seed: int = 0, checkpoint_dir: str | Path | None = None,
                  resume: bool = False, train_labels: Mapping[str, np.ndarray] | None = None,
                  progress_label: str = "teacher", samples_per_epoch: int | None = None,
                  on_checkpoint: Callable[[Path], None] | None = None) -> tuple[nn.Module, dict]:
    """Train ``model`` (a ``PLEModel``) and return it with the best validation weights loaded, and the history.

    ``train_labels`` ({task: all training labels}) fit the loss normalisers and head priors; without them they
    are read from one pass over ``train_batches``. Each epoch reports progress (samples, samples/s, ETA against
    ``samples_per_epoch``) as ``"<progress_label> epoch i/n"`` on the progress logger (``core/progress.py``).
    ``history = {"epochs": [per-epoch dict of every term], "best_epoch", "best_score", "stopped_early",
    "selection_metric", "task_norms"}``.
    With ``resume=True`` and a ``last.pt`` in ``checkpoint_dir`` training continues after its epoch; without a
    checkpoint it starts fresh. ``on_checkpoint(last_pt_path)`` runs after each epoch's ``last.pt`` is written
    (the GPU worker copies it to the artifact store, so a rescheduled pod resumes where the lost one stopped).
    """
    cfg = config or TrainConfig()
    if cfg.selection_metric not in ("mean_binary_auc", "composite"):
        raise ValueError(f"selection_metric must be 'mean_binary_auc' or 'composite', got {cfg.selection_metric!r}")
    loss_kw = dict(binary_loss=cfg.binary_loss, focal_gamma=cfg.focal_gamma, focal_alpha=cfg.focal_alpha,
                   huber_delta=cfg.huber_delta)
    if (cfg.normalise_tasks or cfg.prior_init) and train_labels is None:
        train_labels = _collect_labels(_batches(train_batches, 0))
    task_norms = loss_normalisers(train_labels, **loss_kw) if cfg.normalise_tasks else None
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    model.to(device)
    optimizers = build_optimizers(model, cfg)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda e: _lr_factor(e, cfg)) for o in optimizers]
    weighting = getattr(model, "loss_weighting", None)
    weights = weighting if weighting is not None else cfg.task_weights
    use_amp = cfg.amp and device.type == "cuda"
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    history: dict = {"epochs": [], "best_epoch": None, "best_score": None, "stopped_early": False,
                     "selection_metric": cfg.selection_metric, "task_norms": task_norms}
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs, start = 0, 0
    last = ckpt_dir / "last.pt" if ckpt_dir is not None else None
    if resume and last is not None and last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)  # RNG states must stay on the CPU
        model.load_state_dict(ck["model"])
        for o, s in zip(optimizers, ck["optimizers"], strict=True):
            _load_optimizer(o, s)
        for sch, s in zip(schedulers, ck["schedulers"], strict=True):
            sch.load_state_dict(s)
        history, best_state, bad_epochs = ck["history"], ck["best_state"], ck["bad_epochs"]
        start = ck["epoch"] + 1
        _set_rng_state(ck["rng"])
        log.info("resumed from %s after epoch %d", last, ck["epoch"])
    else:
        seed_everything(seed)
        if cfg.prior_init and callable(getattr(model, "set_output_priors", None)):
            model.set_output_priors(output_priors(train_labels, cfg.huber_delta))
    loss_kw["normalisers"] = task_norms
    # TorchScript (geoopt's Poincaré maths) swaps in an optimised graph after the first calls, which changes
    # results in the last bit: a resumed process would then diverge from an uninterrupted one.
    with torch.jit.optimized_execution(not cfg.deterministic):
        for epoch in range(start, cfg.epochs):
            if history["stopped_early"]:
                break
            seconds_start = time.perf_counter()
            bar = Progress(f"{progress_label} epoch {epoch + 1}/{cfg.epochs}", samples_per_epoch, "samples")
            rows, n_samples = _train_epoch(model, _batches(train_batches, epoch), optimizers, weights, cfg,
                                           device, use_amp, loss_kw, bar)
            if not rows:
                raise ValueError(f"train_batches yielded no batch in epoch {epoch}: pass a re-iterable or f(epoch)")
            seconds = time.perf_counter() - seconds_start
            record = {"epoch": epoch, "lr": optimizers[0].param_groups[0]["lr"], "seconds": seconds,
                      "samples_per_s": n_samples / max(seconds, 1e-9)}
            record.update({f"train/{k}": v for k, v in _mean_terms(rows).items()})
            for name, mod in model.named_modules():
                if mod is not model and callable(getattr(mod, "update_lagrangian", None)):
                    stats = mod.update_lagrangian() or {}
                    record.update({f"lagrangian/{name}/{k}": float(v) for k, v in stats.items()})
            for sch in schedulers:
                sch.step()

            # ---- validate, early stopping
            if val_batches is not None:
                record.update({f"val/{k}": v for k, v in evaluate(model, val_batches, epoch, device, use_amp,
                                                                  weights, loss_kw).items()})
                score = record[f"val/{cfg.selection_metric}"]
            else:
                score = -record["train/total"]
            best = history["best_score"]
            if math.isfinite(score) and (best is None or score > best + cfg.min_delta):
                history["best_epoch"], history["best_score"], bad_epochs = epoch, score, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if ckpt_dir is not None:
                    _save({"format": CHECKPOINT_FORMAT, "epoch": epoch, "score": score, "model": best_state,
                           "model_config": _model_config(model), "train_config": asdict(cfg)}, ckpt_dir / "best.pt")
            else:
                bad_epochs += 1
                history["stopped_early"] = bad_epochs >= cfg.patience
            history["epochs"].append(record)
            bar.close(val_composite=f"{record.get('val/composite', float('nan')):.4f}")
            log.info("epoch %d: train %.4f composite %.4f (%.0f samples/s)", epoch, record["train/total"],
                     record.get("val/composite", float("nan")), record["samples_per_s"])

            if last is not None:
                _save({
                    "format": CHECKPOINT_FORMAT, "epoch": epoch, "seed": seed,
                    "model": model.state_dict(),
                    "optimizers": [o.state_dict() for o in optimizers],
                    "schedulers": [s.state_dict() for s in schedulers],
                    "history": history, "best_state": best_state, "bad_epochs": bad_epochs,
                    "rng": _rng_state(), "model_config": _model_config(model), "train_config": asdict(cfg),
                }, last)
                if on_checkpoint is not None:
                    on_checkpoint(last)

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


def _train_epoch(model: nn.Module, batches: Iterable[tuple[Batch, Labels]], optimizers: list[torch.optim.Optimizer],
                 weights, cfg: TrainConfig, device: torch.device, use_amp: bool,
                 loss_kw: Mapping, bar: Progress | None = None) -> tuple[list[dict[str, float]], int]:
    """One pass over the training batches; returns every batch's loss terms and the number of samples."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    rows, n_samples = [], 0
    for batch, labels in batches:
        batch, labels = _to(batch, device), _to(labels, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = model(batch)
        loss, terms = multitask_loss(out, labels, weights=weights, **loss_kw)
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        if loss.requires_grad:  # False only when the batch has no label at all and no expert loss
            loss.backward()
            terms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))  # before clipping
            for o in optimizers:
                o.step()
        rows.append(terms)
        n = next(iter(batch.values())).shape[0]
        n_samples += n
        if bar is not None:
            bar.advance(n)
    return rows, n_samples


def _collect_labels(batches: Iterable[tuple[Batch, Labels]]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for _, labels in batches:
        for k, v in labels.items():
            parts.setdefault(k, []).append(v.detach().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def _model_config(model: nn.Module) -> dict | None:
    cfg = getattr(model, "config", None)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else None


@torch.no_grad()
def evaluate(model: nn.Module, batches: BatchSource, epoch: int = 0, device: torch.device | str = "cpu",
             use_amp: bool = False, weights=None, loss_kw: Mapping | None = None) -> dict[str, float]:
    """Validation loss terms (labelled-row means over the whole set) and ``validation_metrics``."""
    device = torch.device(device)
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    labs: dict[str, list[torch.Tensor]] = {}
    aux = []
    for batch, labels in _batches(batches, epoch):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = model(_to(batch, device))
        for k, v in out.outputs.items():
            outs.setdefault(k, []).append(v.float().cpu())
        for k, v in labels.items():
            labs.setdefault(k, []).append(v.cpu())
        aux.append(float(out.aux_loss))
    if not outs:
        return {"composite": float("nan"), "mean_binary_auc": float("nan")}
    outputs = {k: torch.cat(v) for k, v in outs.items()}
    labels = {k: torch.cat(v) for k, v in labs.items()}
    _, terms = multitask_loss(_to(outputs, device), _to(labels, device), weights=weights,
                              aux=torch.tensor(float(np.mean(aux)), device=device), **(loss_kw or {}))
    return {**terms, **validation_metrics(outputs, labels)}

"""Fitting the PLE teacher for one model month: split -> data -> train -> a self-describing checkpoint.

The checkpoint is a plain dict saved with ``torch.save`` (state dict, config, scaler arrays, split, metrics,
code version): no module is pickled, and ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ple_platform.core.runtime import compute_threads
from ple_platform.core.tasks.split import TimeSplit, time_split
from ple_platform.core.versioning import source_version

if TYPE_CHECKING:  # torch and the model modules load where a model is built: they cost seconds at import
    import duckdb

    from ple_platform.core.model.data import TeacherData
    from ple_platform.core.model.ple import PLEConfig, PLEModel

# The modules whose source defines the teacher (the experts package: all its modules); order fixes the hash.
MODEL_SOURCES = tuple(f"ple_platform.core.model.{m}" for m in ("ple", "losses", "train", "data", "teacher", "batch",
                                                                "experts", "handoff"))


def code_version() -> str:
    """Hash of the model's source files: a new version exactly when the teacher's code changes."""
    return source_version(*MODEL_SOURCES)


def teacher_checkpoint_key(month: date, sha256: str | None = None) -> str:
    """Artifact-store key of model month ``month``'s latest checkpoint, or (with ``sha256``) of its immutable
    content-addressed copy that registered bundles reference."""
    return f"teacher/{month.isoformat()}/" + (f"{sha256[:16]}.pt" if sha256 else "checkpoint.pt")


def teacher_evaluation_key(month: date) -> str:
    """Artifact-store key of model month ``month``'s ``teacher_evaluation`` result (JSON, with the checkpoint sha)."""
    return f"teacher/{month.isoformat()}/evaluation.json"


@dataclass(frozen=True)
class TeacherSettings:
    """Run-level knobs (demo vs benchmark vs production).

    ``max_customers_per_month=None`` (default) trains on every eligible customer of every month; an integer is an
    explicit, recorded sample (the same customers each month, picked by ``seed``) for quick experiments."""

    max_customers_per_month: int | None = None
    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 7
    expert_kind: str = "heterogeneous"
    patience: int = 2
    model: dict = field(default_factory=dict)  # extra PLEConfig fields

    def ple_config(self) -> PLEConfig:
        from ple_platform.core.model.ple import PLEConfig

        return PLEConfig(expert_kind=self.expert_kind, **self.model)  # type: ignore[arg-type]


@dataclass
class TeacherResult:
    checkpoint: bytes
    split: TimeSplit
    metrics: dict[str, float]
    history: dict
    data_summary: dict
    seconds: float
    samples_per_second: float

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.checkpoint).hexdigest()


def load_teacher_data(con: duckdb.DuckDBPyConnection, model_month: date, first_train_month: date,
                      settings: TeacherSettings) -> TeacherData:
    """The standardised train and validation parts of model month ``model_month`` (all the fit reads from DuckDB)."""
    from ple_platform.core.model.data import TeacherData

    split = time_split(model_month, first_train_month)
    return TeacherData.from_split(con, split, max_customers_per_month=settings.max_customers_per_month,
                                  sample_seed=settings.seed, parts=("train", "validation"))


def fit_teacher(
    con: duckdb.DuckDBPyConnection,
    model_month: date,
    first_train_month: date,
    settings: TeacherSettings,
    workdir: Path,
    resume: bool = False,
    progress_label: str = "teacher",
) -> TeacherResult:
    data = load_teacher_data(con, model_month, first_train_month, settings)
    return train_on_data(data, model_month, settings, workdir, resume, progress_label)


def train_on_data(data: TeacherData, model_month: date, settings: TeacherSettings, workdir: Path,
                  resume: bool = False, progress_label: str = "teacher",
                  on_epoch_checkpoint: Callable[[Path], None] | None = None) -> TeacherResult:
    """Train the teacher on loaded data (no warehouse needed: this is what the GPU worker runs).
    ``on_epoch_checkpoint(path)`` is called after each epoch's resume checkpoint is written to ``workdir``."""
    import torch

    from ple_platform.core.model.ple import PLEModel
    from ple_platform.core.model.train import TrainConfig, evaluate

    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    model = PLEModel(settings.ple_config())
    train_cfg = TrainConfig(epochs=settings.epochs, lr=settings.lr, patience=settings.patience)
    t0 = time.perf_counter()
    with compute_threads():
        model, history = _train(model, data, train_cfg, settings, workdir, resume,
                                f"{progress_label} {model_month:%Y-%m}", on_epoch_checkpoint)
    seconds = time.perf_counter() - t0
    n_train = len(data.part("train").customer_ids)
    epochs_run = len(history["epochs"])
    with compute_threads():
        val = evaluate(model, data.batches("validation", 1024), device=next(model.parameters()).device)
    return _result(model, data, settings, data.split, val, history, seconds,
                   n_train * epochs_run / max(seconds, 1e-9))


def _train(model, data, train_cfg, settings, workdir, resume, progress_label, on_epoch_checkpoint=None):
    from ple_platform.core.model.train import train_teacher

    return train_teacher(
        model,
        data.batches("train", settings.batch_size, seed=settings.seed),
        data.batches("validation", 1024),
        train_cfg,
        seed=settings.seed,
        checkpoint_dir=workdir,
        resume=resume,
        progress_label=progress_label,
        samples_per_epoch=len(data.part("train").customer_ids),
        train_labels=data.part("train").labels,
        on_checkpoint=on_epoch_checkpoint,
    )


def _result(model, data, settings, split, val, history, seconds, samples_per_second) -> TeacherResult:
    import torch

    payload = {
        "format": "ple-teacher/1",
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": json.dumps(settings.ple_config().to_dict(), default=list),
        "settings": json.dumps(asdict(settings), default=list),
        "scaler": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.scaler.to_arrays().items()},
        "split": json.dumps(split.as_dict()),
        "code_version": code_version(),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return TeacherResult(
        checkpoint=buf.getvalue(),
        split=split,
        metrics={k: float(v) for k, v in val.items() if isinstance(v, (int, float, np.floating))},
        history=history,
        data_summary=data.summary(),
        seconds=seconds,
        samples_per_second=samples_per_second,
    )


def load_teacher(checkpoint: bytes) -> tuple[PLEModel, dict]:
    """Rebuild the model from checkpoint bytes (weights only: no code is unpickled)."""
    import torch

    from ple_platform.core.model.ple import PLEConfig, PLEModel

    payload = torch.load(io.BytesIO(checkpoint), weights_only=True)
    model = PLEModel(PLEConfig.from_dict(json.loads(payload["config"])))
    model.load_state_dict(payload["model_state"])
    model.eval()
    return model, payload

"""Scoring a month with a trained PLE model: task predictions and the layer-0 gate weights of every customer.

Used by the teacher evaluation (out-of-time metrics), the students (soft targets) and the recommendations
(gate-weight reasons). Batches go through ``MonthData.to_batch`` (the same contract as training) in eval mode
without gradients; nothing is kept per batch except numpy outputs, so memory is bounded by the month.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import torch

from ple_platform.core.model.data import FeatureScaler, MonthData, load_months
from ple_platform.core.model.ple import PLEModel, predict
from ple_platform.core.model.teacher import TeacherSettings, load_teacher
from ple_platform.core.runtime import compute_threads
from ple_platform.core.tasks.split import TimeSplit


@dataclass
class MonthPredictions:
    customer_ids: np.ndarray
    preds: dict[str, np.ndarray]  # binary P(y=1) (N,), multiclass probabilities (N, C), regression values (N,)
    gates: dict[str, np.ndarray]  # task -> (N, n_shared + task experts) layer-0 gate weights
    gate_columns: dict[str, tuple[str, ...]]

    def shared_gates(self, task: str) -> dict[str, np.ndarray]:
        """{shared expert: (N,) weight} of a task's gate (the heterogeneous experts; own experts left out)."""
        cols = self.gate_columns[task]
        return {c: self.gates[task][:, i] for i, c in enumerate(cols) if "/own_" not in c}


@torch.no_grad()
def predict_month(model: PLEModel, md: MonthData, batch_size: int = 1024) -> MonthPredictions:
    """Predictions and gates for every row of standardised ``md`` (rows in ``md`` order)."""
    if not md.standardised:
        raise ValueError("predict_month needs standardised MonthData (apply the checkpoint's scaler first)")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds: dict[str, list[np.ndarray]] = {}
    gates: dict[str, list[np.ndarray]] = {}
    try:
        with compute_threads():
            for start in range(0, md.n_rows, batch_size):
                rows = np.arange(start, min(start + batch_size, md.n_rows))
                batch = {k: v.to(device) for k, v in md.to_batch(rows).items()}
                out = model(batch)
                for task, p in predict(out).items():
                    preds.setdefault(task, []).append(p.float().cpu().numpy())
                for task, g in out.gates.items():
                    gates.setdefault(task, []).append(g.float().cpu().numpy())
    finally:
        model.train(was_training)
    return MonthPredictions(
        customer_ids=md.customer_ids,
        preds={k: np.concatenate(v).astype(np.float64) for k, v in preds.items()},
        gates={k: np.concatenate(v) for k, v in gates.items()},
        gate_columns={t: model.gate_columns(t) for t in gates},
    )


@dataclass
class CheckpointData:
    """A teacher checkpoint with the raw (unstandardised) months of its split, loaded with the teacher's own
    customer subsample, and its scaler (fitted on the training months at training time)."""

    model: PLEModel
    split: TimeSplit
    settings: TeacherSettings
    scaler: FeatureScaler
    raw: dict[str, MonthData]  # part -> raw MonthData (train / validation / test)
    code_version: str

    def scaled(self, part: str) -> MonthData:
        return self.scaler.transform(self.raw[part])


def load_checkpoint_data(con: duckdb.DuckDBPyConnection, checkpoint: bytes,
                         parts: Sequence[str] = ("train", "validation", "test"),
                         all_customers: Sequence[str] = ()) -> CheckpointData:
    """Rebuild the teacher and load ``parts`` of its split. Parts named in ``all_customers`` load every customer
    of the month instead of the teacher's training subsample (an evaluation should score the whole month)."""
    model, payload = load_teacher(checkpoint)
    settings = TeacherSettings(**json.loads(payload["settings"]))
    split = TimeSplit.from_dict(json.loads(payload["split"]))
    scaler = FeatureScaler.from_arrays({k: v.numpy() for k, v in payload["scaler"].items()})
    months = {"train": list(split.train), "validation": [split.validation], "test": [split.test]}
    kw = dict(labels="require", sample_seed=settings.seed)
    raw = {p: load_months(con, months[p], max_customers=None if p in all_customers
                          else settings.max_customers_per_month, **kw) for p in parts}
    return CheckpointData(model, split, settings, scaler, raw, payload["code_version"])

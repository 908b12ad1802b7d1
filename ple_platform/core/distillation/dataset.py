"""What the 13 students learn from: the teacher's split as raw feature matrices, hard labels and the teacher's
predictions (soft targets), built once per model month and shared by every student.

Rows are the teacher's own training / validation / test customers (its subsample and seed), so a student is
distilled on exactly the rows its teacher saw and is compared with it on the same out-of-time month. Features
are the 1,211 raw columns in spec order (``all_columns()``): trees need no scaler, serving reads the same raw
values from the warehouse, and reasons can quote them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import duckdb
import numpy as np

from ple_platform.core.features.spec import all_columns
from ple_platform.core.tasks.spec import TASKS

PARTS = ("train", "validation", "test")
_SEP = "__"


@dataclass
class DistillationPart:
    customer_ids: np.ndarray  # (N,) str
    months: np.ndarray  # (N,) datetime64[D]
    X: np.ndarray  # (N, 1211) float32 raw features
    labels: dict[str, np.ndarray]  # task -> (N,) float, NaN = missing
    teacher: dict[str, np.ndarray]  # task -> (N,) or (N, C) teacher predictions

    @property
    def n_rows(self) -> int:
        return len(self.customer_ids)


@dataclass
class DistillationData:
    model_month: str
    parts: dict[str, DistillationPart]
    feature_names: tuple[str, ...]

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {"model_month": np.array(self.model_month),
                                         "feature_names": np.array(self.feature_names)}
        for name, part in self.parts.items():
            arrays[f"{name}{_SEP}ids"] = part.customer_ids.astype(str)
            arrays[f"{name}{_SEP}months"] = part.months
            arrays[f"{name}{_SEP}X"] = part.X
            arrays.update({f"{name}{_SEP}label{_SEP}{t}": v for t, v in part.labels.items()})
            arrays.update({f"{name}{_SEP}teacher{_SEP}{t}": v for t, v in part.teacher.items()})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> DistillationData:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            names = tuple(str(c) for c in z["feature_names"])
            parts = {}
            for name in PARTS:
                if f"{name}{_SEP}X" not in z:
                    continue
                pick = lambda kind: {k.split(_SEP)[2]: z[k] for k in z.files  # noqa: E731
                                     if k.startswith(f"{name}{_SEP}{kind}{_SEP}")}
                parts[name] = DistillationPart(z[f"{name}{_SEP}ids"].astype(object), z[f"{name}{_SEP}months"],
                                               z[f"{name}{_SEP}X"], pick("label"), pick("teacher"))
            return cls(str(z["model_month"]), parts, names)


def build_distillation_data(con: duckdb.DuckDBPyConnection, checkpoint: bytes) -> DistillationData:
    """Raw matrices, labels and teacher predictions of the checkpoint's train, validation and test months."""
    from ple_platform.core.model.inference import load_checkpoint_data, predict_month  # torch: only when building

    data = load_checkpoint_data(con, checkpoint, PARTS)
    parts = {}
    for name in PARTS:
        raw = data.raw[name]
        preds = predict_month(data.model, data.scaled(name)).preds
        labels = raw.labels or {}
        parts[name] = DistillationPart(raw.customer_ids, raw.months, raw.matrix(),
                                       {t.name: labels[t.name] for t in TASKS if t.name in labels},
                                       {t.name: preds[t.name] for t in TASKS if t.name in preds})
    return DistillationData(data.split.model_month.isoformat(), parts, all_columns())

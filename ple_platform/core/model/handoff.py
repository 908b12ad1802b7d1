"""The teacher's inputs as one self-describing archive, so training can run in another process or on another node.

The DuckDB warehouse lives with the run, not on the GPU node: the asset loads the standardised training and
validation parts here, packs them with the run settings into an ``.npz`` (plain arrays, no pickle: loading uses
``allow_pickle=False``), puts it in the artifact store and closes the warehouse connection. The GPU worker
(``ple_platform.gpu_worker``) unpacks it and trains exactly what an in-process fit would have trained.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from datetime import date

import numpy as np

from ple_platform.core.model.data import FeatureScaler, MonthData, TeacherData
from ple_platform.core.model.teacher import TeacherSettings
from ple_platform.core.tasks.split import TimeSplit

FORMAT = "ple-teacher-inputs/1"
_MD_ARRAYS = ("customer_ids", "months", "txn_seq", "diagrams", "diagram_mask", "holdings", "diagram_points")


class HandoffError(ValueError):
    """The archive is not a teacher-inputs archive this code can read."""


def pack_teacher_inputs(data: TeacherData, model_month: date, settings: TeacherSettings) -> bytes:
    """``data`` (standardised parts, all sharing one scaler) + month + settings -> ``.npz`` bytes."""
    arrays: dict[str, np.ndarray] = {
        "meta": np.array(json.dumps({"format": FORMAT, "model_month": model_month.isoformat(),
                                     "split": data.split.as_dict(), "settings": asdict(settings),
                                     "parts": sorted(data.parts)}, default=list)),
    }
    arrays.update({f"scaler/{k}": v for k, v in data.scaler.to_arrays().items()})
    for part, md in data.parts.items():
        if md.scaler is not data.scaler:
            raise HandoffError(f"part {part!r} is not standardised with the training scaler; cannot hand it off")
        for name in _MD_ARRAYS:
            value = getattr(md, name)
            if value is not None:
                arrays[f"{part}/{name}"] = value.astype(str) if name == "customer_ids" else value
        for name, x in md.groups.items():
            arrays[f"{part}/groups/{name}"] = x
        for task, y in (md.labels or {}).items():
            arrays[f"{part}/labels/{task}"] = y
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # uncompressed: the float features barely compress and zlib would cost minutes
    return buf.getvalue()


def unpack_teacher_inputs(payload: bytes) -> tuple[TeacherData, date, TeacherSettings]:
    """Inverse of :func:`pack_teacher_inputs`; raises :class:`HandoffError` naming what is wrong."""
    try:
        npz = np.load(io.BytesIO(payload), allow_pickle=False)
        meta = json.loads(str(npz["meta"]))
    except Exception as err:  # noqa: BLE001 - any decoding failure means "not our archive"
        raise HandoffError(f"teacher inputs archive is unreadable ({len(payload)} bytes): "
                           f"{type(err).__name__}: {err}") from None
    if meta.get("format") != FORMAT:
        raise HandoffError(f"teacher inputs archive has format {meta.get('format')!r}, expected {FORMAT!r}")
    files = set(npz.files)
    scaler = FeatureScaler.from_arrays({k.split("/", 1)[1]: npz[k] for k in files if k.startswith("scaler/")})
    parts = {}
    for part in meta["parts"]:
        def sub(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix):]: npz[k] for k in sorted(files) if k.startswith(prefix)}

        labels = sub(f"{part}/labels/")
        parts[part] = MonthData(
            customer_ids=npz[f"{part}/customer_ids"].astype(object),
            months=npz[f"{part}/months"],
            groups=sub(f"{part}/groups/"),
            txn_seq=npz[f"{part}/txn_seq"],
            diagrams=npz[f"{part}/diagrams"],
            diagram_mask=npz[f"{part}/diagram_mask"],
            holdings=npz[f"{part}/holdings"],
            labels=labels or None,
            scaler=scaler,
            diagram_points=npz[f"{part}/diagram_points"] if f"{part}/diagram_points" in files else None,
        )
    settings = TeacherSettings(**meta["settings"])
    return (TeacherData(TimeSplit.from_dict(meta["split"]), scaler, parts),
            date.fromisoformat(meta["model_month"]), settings)

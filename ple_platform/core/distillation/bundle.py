"""Where students live in the artifact store, and loading a registered bundle's students with hash checks.

Layout per model month and task: ``students/<month>/<task>/<sha16>.txt`` (LightGBM text model) and
``<sha16>.json`` (metadata: route, calibration, selected features, metrics, fidelity) — immutable, addressed by
content, so retraining a month never changes a registered bundle — plus ``latest.json``, the newest student of
the month that ``model_bundle`` registers. A bundle loaded from the registry is verified against the registry's
sha256 of every model text before any prediction is made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date

from ple_platform.core.distillation.students import Student
from ple_platform.core.governance.promotion.registry import ModelBundle
from ple_platform.core.storage import ArtifactStore, sha256_bytes


class BundleIntegrityError(ValueError):
    """A stored student differs from what the registry recorded."""


def student_model_key(month: date, task: str, sha256: str) -> str:
    return f"students/{month.isoformat()}/{task}/{sha256[:16]}.txt"


def student_meta_key(month: date, task: str, sha256: str) -> str:
    return f"students/{month.isoformat()}/{task}/{sha256[:16]}.json"


def student_latest_key(month: date, task: str) -> str:
    return f"students/{month.isoformat()}/{task}/latest.json"


def distillation_dataset_key(month: date) -> str:
    return f"distillation/{month.isoformat()}/dataset.npz"


def bundle_pointer_key(month: date | str) -> str:
    """Where model month ``month`` records the version of its latest registered bundle."""
    return f"bundles/{month if isinstance(month, str) else month.isoformat()}/bundle.json"


def write_bundle_pointer(store: ArtifactStore, month: date, version: str) -> None:
    store.put(bundle_pointer_key(month), json.dumps({"version": version}).encode())


def bundle_version_for(store: ArtifactStore, month: date | str) -> str:
    """The version of model month ``month``'s latest registered bundle (``month`` as a date or ISO text)."""
    return json.loads(store.get(bundle_pointer_key(month)))["version"]


def load_student(store: ArtifactStore, month: date, task: str, expected_sha256: str) -> Student:
    model_str = store.get(student_model_key(month, task, expected_sha256)).decode("utf-8")
    sha = sha256_bytes(model_str.encode("utf-8"))
    if sha != expected_sha256:
        raise BundleIntegrityError(f"student {task} of {month:%Y-%m}: stored model sha256 {sha[:12]}… differs from "
                                   f"the registered {expected_sha256[:12]}…")
    meta = json.loads(store.get(student_meta_key(month, task, expected_sha256)))
    return Student.from_dict(meta["student"], model_str)


def load_bundle_students(store: ArtifactStore, bundle: ModelBundle) -> dict[str, Student]:
    """Every student of a registered bundle, each verified against the registry's sha256."""
    return {task: load_student(store, bundle.model_month, task, art.sha256) for task, art in bundle.students.items()}


def predict_bundle(students: Mapping[str, Student], X, feature_names) -> dict:
    """{task: predictions} of every student on the full raw feature matrix."""
    return {task: s.predict(X, feature_names) for task, s in students.items()}

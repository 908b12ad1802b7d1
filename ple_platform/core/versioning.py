"""Code versions that follow the code: a short hash of the source files that compute an output.

Modules are located without being imported (``importlib.util.find_spec`` reads only their parent packages), so
hashing the model code does not load torch. A package stands for every ``.py`` file directly in it, sorted.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path


def module_sources(module: str) -> list[Path]:
    """The source files of ``module`` (a module: its file; a package: its ``.py`` files, sorted by name)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"code version: no source for module {module!r}")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: every module directly in it
        return sorted(origin.parent.glob("*.py"))
    return [origin]


def source_version(*modules: str) -> str:
    """16-hex-digit hash of the given modules' source bytes, in the order given: a new version exactly when
    one of them changes."""
    if not modules:
        raise ValueError("source_version needs at least one module")
    h = hashlib.sha256()
    for module in modules:
        for path in module_sources(module):
            h.update(path.read_bytes())
    return h.hexdigest()[:16]

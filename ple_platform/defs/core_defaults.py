"""One default per knob: a run config's field takes its default from the core dataclass field or function
parameter that consumes it, so the launchpad, the CLI and direct core calls agree (test_definitions.py checks
every ``dg.Config`` default against its core source)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any


def core_default(owner: Any, name: str) -> Any:
    """The default of field ``name`` of dataclass ``owner``, or of parameter ``name`` of function ``owner``."""
    if dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}[name]
        if field.default is not dataclasses.MISSING:
            return field.default
        if field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
        raise ValueError(f"{owner.__name__}.{name} has no default")
    default = inspect.signature(owner).parameters[name].default
    if default is inspect.Parameter.empty:
        raise ValueError(f"parameter {name!r} of {owner.__qualname__} has no default")
    return default

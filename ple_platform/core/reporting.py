"""Shared output helpers of every layer: plain-JSON copies of results and markdown tables for asset metadata.

``json_ready`` is the one converter from numpy/dates/enums/tuples to JSON types. Callers choose what a
non-finite float becomes: ``null`` for results that may lack a value (metrics, reports), an error for what is
hashed (the audit log and registry refuse NaN instead of silently recording null).
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np


def json_ready(value: Any, where: str = "value", *, nonfinite: Literal["null", "raise"] = "null",
               keys: Literal["str", "raise"] = "str", digits: int | None = None,
               error: type[ValueError] = ValueError) -> Any:
    """A plain-JSON copy of ``value``: numpy scalars and arrays, enums (their value), dates (ISO text), paths,
    tuples, sets (sorted) and objects with ``to_dict`` are converted; floats are rounded to ``digits`` when
    given. ``nonfinite``: NaN/inf become ``None`` or raise; ``keys``: non-string mapping keys are converted or
    raise. Anything else raises ``error`` (a ValueError class) with a message that starts with the path."""

    def walk(x: Any, at: str) -> Any:
        if isinstance(x, enum.Enum):  # before str: a str-valued enum becomes its plain value
            return walk(x.value, at)
        if x is None or isinstance(x, str):
            return x
        if isinstance(x, np.generic):
            return walk(x.item(), at)
        if isinstance(x, (bool, int)):
            return x
        if isinstance(x, float):
            if not math.isfinite(x):
                if nonfinite == "raise":
                    raise error(f"{at}: {x!r} is not valid JSON (convert NaN/inf to null or a string)")
                return None
            return round(x, digits) if digits is not None else x
        if isinstance(x, np.ndarray):
            return walk(x.tolist(), at)
        if isinstance(x, (dt.date, dt.datetime)):
            return x.isoformat()
        if isinstance(x, Path):
            return str(x)
        if isinstance(x, Mapping):
            out = {}
            for k, v in x.items():
                if not isinstance(k, str) and keys == "raise":
                    raise error(f"{at}: key {k!r} is a {type(k).__name__}; JSON object keys must be str")
                out[str(k)] = walk(v, f"{at}[{k!r}]")
            return out
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{at}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, (set, frozenset)):
            return [walk(v, f"{at}[]") for v in sorted(x, key=str)]
        if hasattr(x, "to_dict"):
            return walk(x.to_dict(), at)
        raise error(f"{at}: {type(x).__name__} value {x!r:.80} is not JSON-serialisable")

    return walk(value, where)


def md_cell(value: Any) -> str:
    """One markdown table cell: a pipe or line break in the text would end the cell or the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (how Dagster renders ``MetadataValue.md``); cells are ``str()``-ed and
    escaped, so format numbers before passing them."""
    lines = ["| " + " | ".join(md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

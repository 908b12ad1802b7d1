"""Progress of long work, reported as standard logging records on the ``ple_platform.progress`` logger.

Core code reports and never renders. Dagster shows the records as log lines of the step in the UI (dagster.yaml
lists ``ple_platform`` under ``managed_python_loggers``); the CLI attaches a handler that draws terminal progress
bars from the structured field ``record.ple_progress`` (see ``ple_platform/progress_view.py``). Records are
throttled (one per ``min_interval_s`` per stage, plus the last), so reporting from a hot loop costs a clock read.

Two shapes:

* ``Progress(stage, total, unit)`` — a counter (samples of an epoch, customers scored): done/total, rate, ETA;
* ``milestone(stage, item, total)`` — one named piece of a known whole finished (student 4 of 13): the view
  counts the distinct items seen for the stage.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

PROGRESS_LOGGER = "ple_platform.progress"
log = logging.getLogger(PROGRESS_LOGGER)


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """A throttled counter for one stage of long work (an epoch, a scoring pass)."""

    def __init__(self, stage: str, total: float | None, unit: str = "items", min_interval_s: float = 5.0):
        self.stage, self.total, self.unit, self.min_interval_s = stage, total, unit, min_interval_s
        self.done = 0.0
        self._t0 = time.monotonic()
        self._last = -math.inf
        self._closed = False
        self._emit(info={}, force=True)

    def advance(self, n: float = 1, **info: Any) -> None:
        self.done += n
        self._emit(info)

    def close(self, **info: Any) -> None:
        """Report the final count (always emitted, once)."""
        if not self._closed:
            self._closed = True
            self._emit(info, force=True, finished=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def rate(self) -> float:
        return self.done / max(time.monotonic() - self._t0, 1e-9)

    def _emit(self, info: dict[str, Any], force: bool = False, finished: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        elapsed = now - self._t0
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / rate if self.total and rate > 0 else math.inf
        of = f"/{self.total:,.0f}" if self.total else ""
        extra = "".join(f", {k} {v}" for k, v in info.items())
        timing = (f"{elapsed:.0f}s, {rate:,.0f} {self.unit}/s" if finished
                  else f"{rate:,.0f} {self.unit}/s, ETA {_fmt_seconds(eta)}" if self.done else "started")
        log.info("%s: %s%s %s (%s%s)", self.stage, f"{self.done:,.0f}", of, self.unit, timing, extra,
                 extra={"ple_progress": {"kind": "counter", "stage": self.stage, "done": self.done,
                                         "total": self.total, "unit": self.unit, "finished": finished,
                                         "info": info}})


def milestone(stage: str, item: str, total: int | None, **info: Any) -> None:
    """One named piece of ``stage`` (of ``total``) finished; ``info`` is shown with it."""
    extra = "".join(f", {k} {v}" for k, v in info.items())
    log.info("%s: %s done%s", stage, item, extra,
             extra={"ple_progress": {"kind": "milestone", "stage": stage, "item": item, "total": total,
                                     "info": info}})

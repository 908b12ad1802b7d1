"""Terminal view of ``ple_platform.core.progress`` records for the CLI: rich progress bars on a terminal, plain
throttled lines otherwise (CI logs, ``make demo | tee``)."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager

from ple_platform.core.progress import PROGRESS_LOGGER


class _PlainHandler(logging.Handler):
    """One line per record, at most one per ``interval_s`` per stage (the last of a stage always)."""

    def __init__(self, stream, interval_s: float = 10.0):
        super().__init__(logging.INFO)
        self.stream, self.interval_s = stream, interval_s
        self._last: dict[str, float] = {}
        self._items: dict[str, set[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        p = getattr(record, "ple_progress", None)
        if p is None:
            return
        stage, now = p["stage"], time.monotonic()
        if p["kind"] == "milestone":
            seen = self._items.setdefault(stage, set())
            seen.add(p["item"])
            of = f"/{p['total']}" if p["total"] else ""
            info = "".join(f", {k} {v}" for k, v in p["info"].items())
            self.stream.write(f"      {stage} {len(seen)}{of}: {p['item']}{info}\n")
        elif p["finished"] or now - self._last.get(stage, -1e9) >= self.interval_s:
            self._last[stage] = now
            self.stream.write(f"      {record.getMessage()}\n")
        self.stream.flush()


def plain_progress_handler(stream, interval_s: float = 10.0) -> logging.Handler:
    """A handler printing progress records as plain lines (at most one per ``interval_s`` per stage)."""
    return _PlainHandler(stream, interval_s)


class _RichHandler(logging.Handler):
    def __init__(self, progress):
        super().__init__(logging.INFO)
        self.progress = progress
        self._tasks: dict[str, int] = {}
        self._items: dict[str, set[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        p = getattr(record, "ple_progress", None)
        if p is None:
            return
        stage = p["stage"]
        if stage not in self._tasks:
            self._tasks[stage] = self.progress.add_task(stage, total=p.get("total"))
        task = self._tasks[stage]
        if p["kind"] == "milestone":
            seen = self._items.setdefault(stage, set())
            seen.add(p["item"])
            self.progress.update(task, completed=len(seen), description=f"{stage}: {p['item']}")
        else:
            self.progress.update(task, completed=p["done"], total=p["total"])
            if p["finished"]:
                self.progress.update(task, total=p["done"] or p["total"], completed=p["done"])


@contextmanager
def terminal_progress(stream=None):
    """Show progress records while the block runs (the CLI wraps each materialization in it)."""
    stream = stream or sys.stdout
    logger = logging.getLogger(PROGRESS_LOGGER)
    previous = logger.level
    logger.setLevel(logging.INFO)
    if stream.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bars = Progress(TextColumn("      {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=Console(file=stream), transient=False)
        handler: logging.Handler = _RichHandler(bars)
        bars.start()
    else:
        bars, handler = None, _PlainHandler(stream)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        if bars is not None:
            bars.stop()

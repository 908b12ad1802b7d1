"""Recovery from dead runs: a materialization whose process was killed keeps its pool slot and blocks every later run.

DuckDB admits one writing process per file, so every asset that writes the warehouse shares one pool with a limit
of 1 (``dagster.yaml``). A run killed with SIGKILL (OOM killer, ``kill -9``, a closed laptop lid) never releases
its claimed slot: Dagster's storage still shows it STARTED, and the next run waits for the slot forever. The
command line tags every run it launches with the launching process (pid and the kernel's start time of that
pid, so a reused pid is not mistaken for the original), and before each launch — or on ``ple-platform recover`` —
fails the runs of this host whose process is gone and frees their slots. Runs launched without those tags (the
UI's daemon, a script) are recovered too when the instance is this machine's own (SQLite storage): the run
worker's pid is in the run's engine events. On a shared instance (Postgres) runs of other hosts are Dagster's run
monitoring's job; ``recover`` also frees slots still claimed by runs that already ended.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TAG_PID, TAG_HOST, TAG_PROC_START = "ple/pid", "ple/host", "ple/proc_start"


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot, /proc/<pid>/stat field 22); None without /proc
    or when the process does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the parenthesised command name start at field 3


def launch_tags() -> dict[str, str]:
    """Tags naming the process that executes a run launched in-process (the CLI's ``dg.materialize``)."""
    pid = os.getpid()
    return {TAG_PID: str(pid), TAG_HOST: socket.gethostname(), TAG_PROC_START: _proc_start(pid) or ""}


def process_alive(pid: int, proc_start: str = "") -> bool:
    """Whether ``pid`` still runs and is the same process (same start time, when it was recorded)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return not proc_start or _proc_start(pid) in (None, proc_start)


@dataclass(frozen=True)
class Recovered:
    run_id: str
    pid: int | None
    freed_pools: tuple[str, ...]
    why: str


def _claims(instance) -> dict[str, list[str]]:
    """{run_id: [pools it holds a slot of]}."""
    storage = instance.event_log_storage
    out: dict[str, list[str]] = {}
    for pool in sorted(storage.get_concurrency_keys()):
        for slot in storage.get_concurrency_info(pool).claimed_slots:
            out.setdefault(slot.run_id, []).append(pool)
    return out


def recover_dead_runs(instance, echo: Callable[[str], None] = print) -> list[Recovered]:
    """Fail the in-progress runs of this host whose launching process is gone, and free every pool slot held by a
    run that is no longer running. One line per recovered run; returns what was done."""
    import dagster as dg

    host = socket.gethostname()
    claims = _claims(instance)
    done: list[Recovered] = []
    in_progress = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING,
                                                                      dg.DagsterRunStatus.STARTED]))
    local = "sqlite" in type(instance.run_storage).__name__.lower()  # runs of this machine's own instance
    for run in in_progress:
        tags = run.tags
        if tags.get(TAG_HOST) == host and tags.get(TAG_PID, "").isdigit():
            pid = int(tags[TAG_PID])
            if process_alive(pid, tags.get(TAG_PROC_START, "")):
                continue
        elif local and (pid := _worker_pid(instance, run.run_id)) is not None:
            # Launched without our tags (the UI's daemon, a script) on this machine's instance: the run worker's pid
            # is in the run's own engine events; a process that started after the run is a reused pid.
            if process_alive(pid) and not _started_after(pid, instance, run.run_id):
                continue
        else:
            continue  # another host, or no pid recorded yet: Dagster's run monitoring's job
        why = (f"the process that executed this run (pid {pid} on {host}) is gone — killed or crashed; marked failed "
               "by `ple-platform recover` so its pool slots are released")
        instance.report_run_failed(run, message=why)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        done.append(Recovered(run.run_id, pid, tuple(claims.pop(run.run_id, ())), why))
    for run_id, pools in claims.items():  # slots left behind by runs that have already ended
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            done.append(Recovered(run_id, None, tuple(pools), "the run has ended but still held its slots"))
    for r in done:
        pools = ", ".join(r.freed_pools) or "none"
        echo(f"recovered run {r.run_id[:8]}: {r.why} (freed pool slots: {pools})")
    return done


def _worker_pid(instance, run_id: str) -> int | None:
    """The pid of the process executing ``run_id``, from its latest engine event that names one."""
    import dagster as dg

    pid = None
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.engine_event_data if entry.dagster_event else None
        value = (data.metadata or {}).get("pid") if data is not None else None
        text = getattr(value, "text", value)
        if text is not None and str(text).isdigit():
            pid = int(str(text))
    return pid


def _started_after(pid: int, instance, run_id: str) -> bool:
    """Whether process ``pid`` started after the run did (so it is not the run's worker); False if unknown."""
    start = _proc_start(pid)
    run = instance.get_run_record_by_id(run_id)
    if start is None or run is None or run.start_time is None:
        return False
    try:
        boot = float(next(line.split()[1] for line in Path("/proc/stat").read_text().splitlines()
                          if line.startswith("btime")))
    except (OSError, StopIteration, ValueError):
        return False
    return boot + int(start) / os.sysconf("SC_CLK_TCK") > run.start_time + 1.0


def slot_holders(instance, pool: str) -> list[str]:
    """Short descriptions of the live runs holding ``pool``: what a waiting run is waiting for."""
    out = []
    for slot in instance.event_log_storage.get_concurrency_info(pool).claimed_slots:
        run = instance.get_run_by_id(slot.run_id)
        pid = (run.tags.get(TAG_PID) or _worker_pid(instance, slot.run_id)) if run is not None else None
        out.append(f"run {slot.run_id[:8]} step {slot.step_key}" + (f" (pid {pid})" if pid else ""))
    return out

"""A real ``dagster dev`` (webserver + daemon + code server) on 127.0.0.1 for end-to-end tests.

``dagster dev`` started from a non-interactive parent inherits SIGINT as ignored and then ignores SIGINT/SIGTERM,
leaving its children behind (docs: environment notes, "Dagster"). So it is started in a new session with default
signal handlers restored; teardown sends SIGINT to the whole process group (clean shutdown in ~2 s) and SIGKILLs
the group if it lingers. The instance lives in a private ``DAGSTER_HOME`` with a copy of the repo's
``dagster.yaml`` (SQLite storage, pool ``default_limit: 1`` for the DuckDB writers, queued runs).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
LOCATION = "ple_platform"  # workspace.yaml's location_name


class DevServerError(RuntimeError):
    """dagster dev did not start, or a GraphQL call failed; the message carries the server log's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _restore_signals() -> None:
    # A non-interactive parent leaves SIGINT ignored, and dagster dev would then ignore our shutdown.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass(frozen=True)
class DevServer:
    port: int
    home: Path
    log_path: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def gql(self, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
        """POST a GraphQL query; raises DevServerError on transport or GraphQL errors."""
        r = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout)
        r.raise_for_status()
        body = r.json()
        if body.get("errors"):
            raise DevServerError(f"GraphQL errors: {body['errors']}")
        return body["data"]


@contextmanager
def dagster_dev(workdir: Path, env: Mapping[str, str], startup_timeout: float = 120) -> Iterator[DevServer]:
    """Start ``dagster dev -w workspace.yaml`` with ``env`` added to the environment; DAGSTER_HOME and the log
    (``dagster_dev.log``) go under ``workdir``. Yields once ``/server_info`` answers; always stops the group."""
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    log_path = workdir / "dagster_dev.log"
    full_env = {**os.environ, **env, "DAGSTER_HOME": str(home)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"),
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_restore_signals,
        )
        server = DevServer(port=port, home=home, log_path=log_path, proc=proc)
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                try:
                    if httpx.get(f"{server.url}/server_info", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None:
                    raise DevServerError(f"dagster dev exited with {proc.returncode}:\n{server.log_tail()}")
                if time.monotonic() > deadline:
                    raise DevServerError(f"dagster dev did not answer /server_info within {startup_timeout:.0f} s:\n"
                                         f"{server.log_tail()}")
                time.sleep(1)
            yield server
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:  # children (code server, daemon, run workers) may outlive the leader: kill whatever is left of the group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)

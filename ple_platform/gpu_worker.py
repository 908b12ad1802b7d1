"""The GPU worker: the process that trains the teacher away from the warehouse, speaking Dagster Pipes.

``ple_teacher`` launches it with the Pipes client of its environment: a local subprocess by default (every CI run
goes through this path), a GPU pod through ``PipesK8sClient`` in production (command ``ple-platform
gpu-train-teacher`` on the GPU image). Everything it needs arrives as Pipes extras; it reads the inputs archive
from the artifact store, trains, writes the checkpoint and the training figures back and reports the checkpoint's SHA-256
through Pipes; ``ple_teacher`` checks it against the stored bytes before registering the materialization. Resume state (``last.pt``) is copied to the artifact store after every epoch, so a
pod that is preempted and rescheduled on another node continues where the lost one stopped.

Messages go back through whatever channel the orchestrator chose: a temp file for the subprocess, an S3 prefix
for pods (``PipesS3MessageReader``, which does not depend on pod logs).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster_pipes import (
    PipesContext,
    PipesDefaultMessageWriter,
    PipesMessageWriter,
    PipesMessageWriterChannel,
    PipesS3MessageWriter,
    open_dagster_pipes,
)

from ple_platform.core.storage import ArtifactStore, artifact_store_from_uri, sha256_bytes

# Extras ple_teacher passes; a missing one is a wiring bug reported by name.
TEACHER_EXTRAS = ("artifacts_uri", "inputs_key", "inputs_sha256", "checkpoint_key", "result_key", "resume_key",
                  "resume")


class _ChosenMessageWriter(PipesMessageWriter):
    """S3 chunks when the orchestrator's reader asked for a bucket (pods), else the default file/stdio writer."""

    def __init__(self, s3_interval: float = 2.0):
        self._s3_interval = s3_interval

    @contextmanager
    def open(self, params) -> Iterator[PipesMessageWriterChannel]:
        if "bucket" in params:
            import boto3  # endpoint from AWS_ENDPOINT_URL when set (tests, non-AWS object stores)

            writer: PipesMessageWriter = PipesS3MessageWriter(boto3.client("s3"), interval=self._s3_interval)
        else:
            writer = PipesDefaultMessageWriter()
        with writer.open(params) as channel:
            yield channel


def _extras(pipes: PipesContext) -> dict[str, Any]:
    missing = [k for k in TEACHER_EXTRAS if k not in pipes.extras]
    if missing:
        raise ValueError(f"gpu worker: Pipes extras lack {missing}; ple_teacher must pass {list(TEACHER_EXTRAS)}")
    return dict(pipes.extras)


class _ProgressToPipes(logging.Handler):
    """Progress records (``core/progress.py``) as Pipes log lines: the step's log in the UI shows the epochs."""

    def __init__(self, pipes: PipesContext):
        super().__init__(logging.INFO)
        self.pipes = pipes

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "ple_progress", None) is not None:
            self.pipes.log.info(record.getMessage())


@contextmanager
def _progress_shown(pipes: PipesContext) -> Iterator[None]:
    """While the job runs, progress goes to the run's log through Pipes and, as plain lines, to this process's
    stdout, which a local subprocess shares with the command that launched it (`make demo` shows the epochs)."""
    from ple_platform.core.progress import PROGRESS_LOGGER
    from ple_platform.progress_view import plain_progress_handler

    logger = logging.getLogger(PROGRESS_LOGGER)
    handlers = [_ProgressToPipes(pipes), plain_progress_handler(sys.stdout)]
    level = logger.level
    logger.setLevel(logging.INFO)
    for h in handlers:
        logger.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            logger.removeHandler(h)
        logger.setLevel(level)


def train_teacher_job(pipes: PipesContext) -> None:
    from ple_platform.core.model.handoff import unpack_teacher_inputs
    from ple_platform.core.model.teacher import train_on_data

    ex = _extras(pipes)
    store: ArtifactStore = artifact_store_from_uri(ex["artifacts_uri"], ex.get("s3_endpoint_url"))
    t0 = time.perf_counter()
    payload = store.get(ex["inputs_key"])
    if sha256_bytes(payload) != ex["inputs_sha256"]:
        raise ValueError(f"gpu worker: inputs at {store.uri(ex['inputs_key'])} have SHA-256 "
                         f"{sha256_bytes(payload)[:16]}…, ple_teacher exported {ex['inputs_sha256'][:16]}…")
    data, month, settings = unpack_teacher_inputs(payload)
    del payload
    load_seconds = time.perf_counter() - t0
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipes.log.info(f"teacher {month:%Y-%m}: {data.summary()['rows']} rows loaded in {load_seconds:.1f} s, "
                   f"training on {device}")

    workdir = Path(tempfile.mkdtemp(prefix=f"ple_teacher_{month:%Y%m}_"))
    resume_key = ex["resume_key"]
    if ex["resume"] and store.exists(resume_key):
        (workdir / "last.pt").write_bytes(store.get(resume_key))
        pipes.log.info(f"resuming from {store.uri(resume_key)}")

    def upload_resume_state(last: Path) -> None:
        store.put(resume_key, last.read_bytes())

    with _progress_shown(pipes):
        result = train_on_data(data, month, settings, workdir, resume=bool(ex["resume"]),
                               on_epoch_checkpoint=upload_resume_state)
    uri, sha = store.put(ex["checkpoint_key"], result.checkpoint)
    history = result.history
    summary = {"metrics": result.metrics, "history": history, "data_summary": result.data_summary,
               "seconds": result.seconds, "samples_per_second": result.samples_per_second}
    store.put(ex["result_key"], json.dumps(summary, default=str, sort_keys=True).encode())
    # The asset registers the result itself after checking this hash against the stored bytes.
    pipes.report_custom_message({"checkpoint_uri": uri, "checkpoint_sha256": sha, "device": device,
                                 "result_key": ex["result_key"]})
    pipes.log.info(f"teacher {month:%Y-%m}: {len(history['epochs'])} epochs in {result.seconds:.1f} s, "
                   f"checkpoint {sha[:16]}… at {uri}")


JOBS = {"train-teacher": train_teacher_job}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in JOBS:
        print(f"usage: python -m ple_platform.gpu_worker {{{'|'.join(JOBS)}}}", file=sys.stderr)
        return 2
    with open_dagster_pipes(message_writer=_ChosenMessageWriter()) as pipes:
        JOBS[argv[0]](pipes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

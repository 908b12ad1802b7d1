"""Transient I/O errors retry with backoff; data errors fail on the first attempt (docs/operations.md)."""

import time

import dagster as dg
import duckdb
import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError

from ple_platform.defs.resources import (
    ArtifactStoreResource,
    LandingZoneResource,
    is_transient_io_error,
    retry_transient_io,
)


class FlakyStore:
    """An artifact store whose first ``failures`` writes raise ``error``; the next ones succeed."""

    def __init__(self, error: BaseException, failures: int):
        self.error, self.failures, self.attempts = error, failures, 0

    def put(self, key: str, data: bytes) -> tuple[str, str]:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error
        return f"memory://{key}", "sha"


def _materialize(store: FlakyStore, base_seconds: float = 0.05) -> dg.ExecuteInProcessResult:
    @dg.asset
    @retry_transient_io(max_retries=3, base_seconds=base_seconds)
    def checkpoint(context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
        uri, _ = store.put("teacher/checkpoint.pt", b"weights")
        return dg.MaterializeResult(metadata={"uri": uri})

    return dg.materialize([checkpoint], resources={"artifacts": ArtifactStoreResource(uri="unused")},
                          raise_on_error=False)


def _events(result: dg.ExecuteInProcessResult, event_type: dg.DagsterEventType) -> list:
    return [e for e in result.all_events if e.event_type == event_type]


def test_transient_errors_retry_with_exponential_backoff_then_succeed():
    store = FlakyStore(TimeoutError("S3 PUT timed out"), failures=2)
    started = time.monotonic()
    result = _materialize(store, base_seconds=0.2)
    elapsed = time.monotonic() - started

    assert result.success
    assert store.attempts == 3
    assert len(_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 2
    assert len(_events(result, dg.DagsterEventType.STEP_RESTARTED)) == 2
    # Backoff 0.2 s then 0.4 s: the run waited at least their sum.
    assert elapsed >= 0.6
    (mat,) = result.asset_materializations_for_node("checkpoint")
    assert mat.metadata["uri"].value == "memory://teacher/checkpoint.pt"


def test_data_error_fails_once_without_retry():
    store = FlakyStore(ValueError("column income: 3 negative values"), failures=1)
    result = _materialize(store)

    assert not result.success
    assert store.attempts == 1
    assert _events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY) == []
    (failure,) = _events(result, dg.DagsterEventType.STEP_FAILURE)
    assert "column income: 3 negative values" in failure.event_specific_data.error.to_string()


def test_missing_input_is_not_retried():
    store = FlakyStore(FileNotFoundError("landing/2024-05/customers.parquet"), failures=1)
    result = _materialize(store)

    assert not result.success
    assert store.attempts == 1
    assert _events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY) == []


def test_retries_stop_after_max_retries():
    store = FlakyStore(ConnectionResetError("connection reset by peer"), failures=10)
    result = _materialize(store, base_seconds=0.01)

    assert not result.success
    assert store.attempts == 4  # first attempt + 3 retries
    assert len(_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 3
    # The failure names the I/O error that exhausted the retries, not just "retry requested".
    (failure,) = _events(result, dg.DagsterEventType.STEP_FAILURE)
    assert "ConnectionResetError: connection reset by peer" in failure.event_specific_data.error.to_string()


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize("err", [
    TimeoutError("timed out"),
    ConnectionRefusedError("refused"),
    OSError(5, "Input/output error"),
    EndpointConnectionError(endpoint_url="http://127.0.0.1:9000"),
    ConnectTimeoutError(endpoint_url="http://127.0.0.1:9000"),
    _client_error("InternalError", 500),
    _client_error("SlowDown", 503),
    _client_error("ThrottlingException", 400),
    duckdb.IOException('Could not set lock on file "warehouse.duckdb": Conflicting lock is held'),
], ids=repr)
def test_transient_errors_are_recognised(err):
    assert is_transient_io_error(err)


@pytest.mark.parametrize("err", [
    ValueError("bad value"),
    KeyError("task"),
    FileNotFoundError("missing"),
    PermissionError("denied"),
    IsADirectoryError("a directory"),
    _client_error("NoSuchKey", 404),
    _client_error("AccessDenied", 403),
    duckdb.IOException("No files found that match the pattern"),
    dg.Failure(description="validation failed"),
], ids=repr)
def test_deterministic_errors_are_not_transient(err):
    assert not is_transient_io_error(err)



class FlakyLanding(LandingZoneResource):
    """The real landing zone behind a mount that times out on its first two reads (e.g. NFS under load)."""

    def source(self):
        FLAKY_READS["n"] += 1
        if FLAKY_READS["n"] <= 2:
            raise TimeoutError(f"read of {self.path} timed out")
        return super().source()


FLAKY_READS = {"n": 0}


def test_raw_ingest_retries_a_landing_zone_timeout_and_succeeds(platform_env, resources, monkeypatch):
    """A real asset: raw_customers meets two landing-zone timeouts, backs off and ingests the month."""
    from ple_platform.defs import resources as resources_module
    from ple_platform.defs.raw.assets import raw_assets
    from ple_platform_tests.conftest import materialize

    # The retry waits are read when the step runs; shrink them so the test does not sleep 2 + 4 s.
    monkeypatch.setattr(resources_module, "RETRY_BASE_SECONDS", 0.05)
    monkeypatch.setitem(FLAKY_READS, "n", 0)
    landing = resources["landing"]
    flaky = {**resources, "landing": FlakyLanding(kind=landing.kind, path=landing.path,
                                                  transactions_path=landing.transactions_path)}
    result = materialize([a for a in raw_assets if a.key.path[-1] == "raw_customers"], "2015-01-01", flaky)

    assert result.success
    assert FLAKY_READS["n"] == 3
    assert len(_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 2
    (mat,) = result.asset_materializations_for_node("raw_customers")
    assert mat.metadata["dagster/row_count"].value > 0

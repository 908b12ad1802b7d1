"""Resources, chosen per environment in one place. Every resource has a working local default:
a DuckDB file, a local artifact folder and the synthetic landing zone under ``PLE_DATA_DIR``.
Production swaps in S3 (``PLE_ARTIFACTS=s3://...``), GPU pods for GPU work (``PLE_GPU_DISPATCH=k8s``, defs/gpu.py)
and the Kubernetes run launcher via the instance config (infra/dagster-k8s.yaml).

Assets that touch files or S3 are wrapped in :func:`retry_transient_io`, which retries transient I/O errors
with exponential backoff and lets every other error fail the step at once (docs/operations.md, retries).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from ple_platform.core.data.landing import LandingSource
from ple_platform.core.governance.audit.log import AuditLog, audit_key
from ple_platform.core.governance.promotion.registry import Registry
from ple_platform.core.governance.audit.store import GovernanceStore
from ple_platform.core.settings import Settings
from ple_platform.core.storage import ArtifactStore, artifact_store_from_uri
from ple_platform.defs.gpu import GpuDispatchResource


# OSErrors that a retry cannot fix: the input is missing or the path is wrong, the same on every attempt.
_DETERMINISTIC_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                            FileExistsError)
# S3 error codes that mean "slow down / try later" rather than "this request is wrong".
_THROTTLING_CODES = frozenset({"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout",
                               "RequestLimitExceeded", "TooManyRequestsException", "ServiceUnavailable",
                               "InternalError"})

# Waits of 2, 4 and 8 s: enough for an S3 throttle or a brief network drop, short next to a step's runtime.
RETRY_MAX_RETRIES = 3
RETRY_BASE_SECONDS = 2.0


def is_transient_io_error(err: BaseException) -> bool:
    """Whether ``err`` is an I/O failure that may succeed when retried: a timeout, a dropped connection, an S3
    5xx or throttling reply, another process holding the DuckDB file lock, or an OSError such as EIO. A missing
    file, a permission or path error, a validation failure or any other bug is not transient."""
    if isinstance(err, _DETERMINISTIC_OS_ERRORS):
        return False
    if isinstance(err, duckdb.IOException):
        return "Could not set lock" in str(err)
    if type(err).__module__.startswith("botocore"):
        return _is_transient_botocore_error(err)
    # TimeoutError and ConnectionError are OSError subclasses; so are requests/urllib3 timeouts.
    return isinstance(err, OSError)


def _is_transient_botocore_error(err: BaseException) -> bool:
    # Imported only when a botocore error is seen: the local profile never loads boto.
    from botocore.exceptions import ClientError, ConnectionClosedError, ConnectionError, ReadTimeoutError

    if isinstance(err, (ConnectionError, ConnectionClosedError, ReadTimeoutError)):
        return True  # EndpointConnectionError and ConnectTimeoutError are botocore ConnectionErrors
    if isinstance(err, ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status == 429 or err.response.get("Error", {}).get("Code") in _THROTTLING_CODES
    return False


def retry_transient_io(fn=None, *, max_retries: int | None = None, base_seconds: float | None = None):
    """Decorator for an asset or op body (placed under ``@dg.asset``): a transient I/O error (see
    :func:`is_transient_io_error`) becomes ``dg.RetryRequested`` with ``base_seconds * 2**retry_number`` of
    backoff, up to ``max_retries`` retries (defaults: ``RETRY_BASE_SECONDS`` and ``RETRY_MAX_RETRIES``, read
    when the step runs); any other exception propagates unchanged, so a data error fails
    once instead of repeating its failure. Dagster's ``RetryPolicy`` cannot make that distinction: it retries
    every exception.

    The body must take the execution context as its first parameter; ``functools.wraps`` keeps the signature
    Dagster reads to inject config and resources."""
    if fn is None:
        return functools.partial(retry_transient_io, max_retries=max_retries, base_seconds=base_seconds)

    @functools.wraps(fn)
    def wrapper(context, *args, **kwargs):
        try:
            return fn(context, *args, **kwargs)
        except Exception as err:
            if not is_transient_io_error(err):
                raise
            retries = RETRY_MAX_RETRIES if max_retries is None else max_retries
            wait = (RETRY_BASE_SECONDS if base_seconds is None else base_seconds) * 2 ** context.retry_number
            if context.retry_number < retries:
                context.log.warning(f"transient I/O error on attempt {context.retry_number + 1} of {retries + 1}, "
                                    f"retrying in {wait:g} s: {type(err).__name__}: {err}")
            raise dg.RetryRequested(max_retries=retries, seconds_to_wait=wait) from err

    return wrapper


class WarehouseResource(DuckDBResource):
    """The DuckDB warehouse. Unlike the base resource, the connection is closed even when the asset body
    raises, so a failed step never keeps the single-writer file lock held in a long-lived process."""

    @contextmanager
    def get_connection(self):
        if self.database != ":memory:":
            Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        with super().get_connection() as conn:
            try:
                yield conn
            finally:
                conn.close()


class ArtifactStoreResource(dg.ConfigurableResource):
    """Binary artifacts (fitted feature state, checkpoints, LightGBM text models, reports): local or S3."""

    uri: str
    s3_endpoint_url: str | None = None

    def store(self) -> ArtifactStore:
        return artifact_store_from_uri(self.uri, self.s3_endpoint_url)


class LandingZoneResource(dg.ConfigurableResource):
    """Where monthly source files land: the synthetic/canonical parquet layout or a Santander CSV."""

    kind: str = "synthetic"
    path: str
    transactions_path: str | None = None

    def source(self) -> LandingSource:
        return LandingSource(
            kind=self.kind,  # type: ignore[arg-type]
            path=Path(self.path),
            transactions_path=Path(self.transactions_path) if self.transactions_path else None,
        )


class GovernanceResource(dg.ConfigurableResource):
    """Model registry and tamper-evident audit log (one small DuckDB file, locked per operation, so runs, the
    sensor daemon and the CLI can all write). The audit key comes from ``PLE_AUDIT_KEY`` (required in prod)."""

    path: str

    def store(self) -> GovernanceStore:
        return GovernanceStore(self.path)

    def registry(self) -> Registry:
        return Registry(self.store())

    def audit_log(self) -> AuditLog:
        return AuditLog(self.store(), audit_key())


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "warehouse": WarehouseResource(
            database=settings.warehouse_path, connection_config={"memory_limit": settings.duckdb_memory_limit}
        ),
        "artifacts": ArtifactStoreResource(uri=settings.artifacts_uri, s3_endpoint_url=settings.s3_endpoint_url),
        "governance": GovernanceResource(path=str(settings.governance_db)),
        "landing": LandingZoneResource(
            kind=settings.landing_kind,
            path=str(settings.landing_path),
            transactions_path=str(settings.landing_transactions_path) if settings.landing_transactions_path else None,
        ),
        "gpu": gpu_dispatch(settings),
    }


def gpu_dispatch(settings: Settings) -> GpuDispatchResource:
    """Local Pipes subprocess by default; in production (``PLE_GPU_DISPATCH=k8s``) a GPU pod per fit, run from
    inside the cluster, its Pipes messages read from S3."""
    if settings.gpu_dispatch == "k8s":
        return GpuDispatchResource(mode="k8s", image=settings.gpu_image, namespace=settings.k8s_namespace,
                                   load_incluster_config=True, messages_bucket=settings.pipes_bucket,
                                   s3_endpoint_url=settings.s3_endpoint_url, env_from_secrets=["ple-secrets"])
    return GpuDispatchResource(mode="subprocess")

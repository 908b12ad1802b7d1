"""Resources, chosen per environment in one place. Every resource has a working local default:
a DuckDB file, a local artifact folder and the synthetic landing zone under ``PLE_DATA_DIR``.
Production swaps in S3 (``PLE_ARTIFACTS=s3://...``), GPU pods for GPU work (``PLE_GPU_DISPATCH=k8s``, defs/gpu.py)
and the Kubernetes run launcher via the instance config (infra/dagster-k8s.yaml).

Assets that touch files or S3 are wrapped in :func:`retry_transient_io`, which retries transient I/O errors
with exponential backoff and lets every other error fail the step at once (docs/operations.md, retries).
"""

from __future__ import annotations

import functools
import json
import inspect
import os
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from ple_platform.core.data.landing import LandingSource
from ple_platform.core.governance.audit.log import AuditLog
from ple_platform.core.governance.promotion.registry import Registry
from ple_platform.core.governance.audit.store import GovernanceStore
from ple_platform.core.reasons_llm.config import LLMConfig
from ple_platform.core.secrets import AUDIT_KEY_ENV_VAR, PSEUDONYMISATION_KEY_ENV_VAR, audit_key_from, pseudonymisation_key_from
from ple_platform.core.settings import ENV_VARS, Settings
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


# One default per knob: the resource's field defaults are those of the core constructor.
_SETTINGS_DEFAULTS = {name: p.default for name, p in inspect.signature(Settings.from_values).parameters.items()
                      if p.kind is inspect.Parameter.KEYWORD_ONLY}


class PlatformSettings(dg.ConfigurableResource):
    """The platform's settings as a resource: the fields of ``Settings.from_values`` (each set by the environment
    variable ``ENV_VARS`` names, see docs/operations.md) with the same local defaults. Assets and sensors read
    settings only through it; the two HMAC keys arrive through ``dg.EnvVar`` (see :func:`build_resources`), so
    they are resolved when a run starts and are never written into run config or the UI."""

    env: str = _SETTINGS_DEFAULTS["env"]
    data_dir: str = _SETTINGS_DEFAULTS["data_dir"]
    warehouse: str | None = _SETTINGS_DEFAULTS["warehouse"]
    landing_kind: str = _SETTINGS_DEFAULTS["landing_kind"]
    landing: str | None = _SETTINGS_DEFAULTS["landing"]
    landing_transactions: str | None = _SETTINGS_DEFAULTS["landing_transactions"]
    artifacts: str | None = _SETTINGS_DEFAULTS["artifacts"]
    s3_endpoint_url: str | None = _SETTINGS_DEFAULTS["s3_endpoint_url"]
    start_month: str = _SETTINGS_DEFAULTS["start_month"]
    end_month: str = _SETTINGS_DEFAULTS["end_month"]
    fit_end_month: str = _SETTINGS_DEFAULTS["fit_end_month"]
    duckdb_memory_limit: str = _SETTINGS_DEFAULTS["duckdb_memory_limit"]
    governance_db: str | None = _SETTINGS_DEFAULTS["governance_db"]
    require_approval: str = _SETTINGS_DEFAULTS["require_approval"]
    promotion_policy: str = _SETTINGS_DEFAULTS["promotion_policy"]
    pseudonymisation_key: str | None = _SETTINGS_DEFAULTS["pseudonymisation_key"]
    audit_key: str | None = _SETTINGS_DEFAULTS["audit_key"]
    gpu_dispatch: str = _SETTINGS_DEFAULTS["gpu_dispatch"]
    gpu_image: str | None = _SETTINGS_DEFAULTS["gpu_image"]
    k8s_namespace: str = _SETTINGS_DEFAULTS["k8s_namespace"]
    pipes_bucket: str | None = _SETTINGS_DEFAULTS["pipes_bucket"]

    @classmethod
    def from_settings(cls, settings: Settings, keys: dict | None = None) -> "PlatformSettings":
        """The resource for ``settings`` (already validated); ``keys`` maps the key fields to ``dg.EnvVar``s."""
        return cls(
            env=settings.env, data_dir=str(settings.data_dir), warehouse=settings.warehouse_path,
            landing_kind=settings.landing_kind, landing=str(settings.landing_path),
            landing_transactions=str(settings.landing_transactions_path) if settings.landing_transactions_path else None,
            artifacts=settings.artifacts_uri, s3_endpoint_url=settings.s3_endpoint_url,
            start_month=settings.start_month.isoformat(), end_month=settings.end_month.isoformat(),
            fit_end_month=settings.fit_end_month.isoformat(), duckdb_memory_limit=settings.duckdb_memory_limit,
            governance_db=str(settings.governance_db), require_approval="1" if settings.require_approval else "0",
            promotion_policy=json.dumps(settings.promotion_policy, sort_keys=True), gpu_dispatch=settings.gpu_dispatch,
            gpu_image=settings.gpu_image, k8s_namespace=settings.k8s_namespace, pipes_bucket=settings.pipes_bucket,
            **(keys or {}))

    def settings(self) -> Settings:
        """The validated core settings (raises ``SettingsError`` / ``MissingSecretError`` naming the variable)."""
        return Settings.from_values(**{name: getattr(self, name) for name in ENV_VARS})

    def pseudonymisation_key_bytes(self) -> bytes:
        return pseudonymisation_key_from(self.pseudonymisation_key, self.env).value

    def audit_key_bytes(self) -> bytes:
        return audit_key_from(self.audit_key, self.env).value


class LLMResource(dg.ConfigurableResource):
    """The LLM used by the monthly reviews' consensus judge (core/reasons_llm/config.py); no key = rules only.
    Defaults are ``LLMConfig``'s; the API key arrives through ``dg.EnvVar``."""

    api_key: str | None = None
    base_url: str | None = None
    model: str = LLMConfig.model
    timeout_s: float = LLMConfig.timeout_s
    max_retries: int = LLMConfig.max_retries
    prompt_version: str = LLMConfig.prompt_version
    stream: bool = LLMConfig.stream
    judge_votes: int = LLMConfig.judge_votes
    cache_path: str | None = None

    @classmethod
    def from_config(cls, config: LLMConfig, api_key=None) -> "LLMResource":
        return cls(api_key=api_key, base_url=config.base_url, model=config.model, timeout_s=config.timeout_s,
                   max_retries=config.max_retries, prompt_version=config.prompt_version, stream=config.stream,
                   judge_votes=config.judge_votes, cache_path=str(config.cache_path) if config.cache_path else None)

    def config(self) -> LLMConfig:
        return LLMConfig(api_key=self.api_key or None, base_url=self.base_url, model=self.model,
                         timeout_s=self.timeout_s, max_retries=self.max_retries, prompt_version=self.prompt_version,
                         stream=self.stream, judge_votes=self.judge_votes,
                         cache_path=Path(self.cache_path) if self.cache_path else None)


class GovernanceResource(dg.ConfigurableResource):
    """Model registry and tamper-evident audit log (one small DuckDB file, locked per operation, so runs, the
    sensor daemon and the CLI can all write). ``audit_key`` is the same ``dg.EnvVar("PLE_AUDIT_KEY")`` the
    settings resource gets (required in prod); not a nested resource, whose config resolution in Dagster 1.13
    calls a deprecated API on every run."""

    path: str
    env: str = _SETTINGS_DEFAULTS["env"]
    audit_key: str | None = _SETTINGS_DEFAULTS["audit_key"]
    gpu_dispatch: str = _SETTINGS_DEFAULTS["gpu_dispatch"]
    gpu_image: str | None = _SETTINGS_DEFAULTS["gpu_image"]
    k8s_namespace: str = _SETTINGS_DEFAULTS["k8s_namespace"]
    pipes_bucket: str | None = _SETTINGS_DEFAULTS["pipes_bucket"]

    def store(self) -> GovernanceStore:
        return GovernanceStore(self.path)

    def registry(self) -> Registry:
        return Registry(self.store())

    def audit_log(self) -> AuditLog:
        return AuditLog(self.store(), audit_key_from(self.audit_key, self.env).value)


def _env_var_if_needed(var: str, env: str, environ) -> dg.EnvVar | None:
    # Outside production an unset key means the documented dev default; dg.EnvVar of an unset variable would
    # fail the run instead, so it is used only where the variable is set or required.
    return dg.EnvVar(var) if (environ.get(var) or env == "prod") else None


def _llm_key_var(environ) -> str | None:
    return next((v for v in ("ANTHROPIC_API_KEY", "PLE_LLM_API_KEY") if environ.get(v)), None)


def build_resources(settings: Settings, environ=None) -> dict[str, dg.ConfigurableResource]:
    """Every resource, chosen for ``settings`` (validated, so a production deployment with a missing or published
    key never loads). The only place the secrets are named: as ``dg.EnvVar``, resolved when a run starts."""
    e = os.environ if environ is None else environ
    audit_key = _env_var_if_needed(AUDIT_KEY_ENV_VAR, settings.env, e)
    platform = PlatformSettings.from_settings(settings, {
        "pseudonymisation_key": _env_var_if_needed(PSEUDONYMISATION_KEY_ENV_VAR, settings.env, e),
        "audit_key": audit_key})
    llm_key = _llm_key_var(e)
    return {
        "settings": platform,
        "llm": LLMResource.from_config(LLMConfig.from_env(e), dg.EnvVar(llm_key) if llm_key else None),
        "warehouse": WarehouseResource(
            database=settings.warehouse_path, connection_config={"memory_limit": settings.duckdb_memory_limit}
        ),
        "artifacts": ArtifactStoreResource(uri=settings.artifacts_uri, s3_endpoint_url=settings.s3_endpoint_url),
        "governance": GovernanceResource(path=str(settings.governance_db), env=settings.env, audit_key=audit_key),
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

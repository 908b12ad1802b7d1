"""Resources, chosen per environment in one place. Every resource has a working local default:
a DuckDB file, a local artifact folder and the synthetic landing zone under ``PLE_DATA_DIR``.
Production swaps in S3 (``PLE_ARTIFACTS=s3://...``) and the Kubernetes run launcher via dagster.yaml.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from ple_platform.core.data.landing import LandingSource
from ple_platform.core.governance.audit.log import AuditLog, audit_key
from ple_platform.core.governance.promotion.registry import Registry
from ple_platform.core.governance.audit.store import GovernanceStore
from ple_platform.core.settings import Settings
from ple_platform.core.storage import ArtifactStore, artifact_store_from_uri


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
    }

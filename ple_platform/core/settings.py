"""Runtime settings from the environment, in one place, each with a working local default.

Switching from the embedded default (DuckDB file + local artifact folder) to production (S3 artifacts,
Postgres run storage, Kubernetes GPU steps) is configuration: environment variables and instance config,
never code edits. See docs/operations.md for the full table.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Mapping

from ple_platform.core.data.schema import parse_month
from ple_platform.core.secrets import audit_key_material, pseudonymisation_key_material

DEFAULT_START_MONTH = date(2015, 1, 1)
DEFAULT_END_MONTH = date(2016, 5, 1)  # inclusive: 17 monthly snapshots
# Fitted feature state is anchored here. Months from the anchor on share one fit (consistent feature
# coordinates) and are the months models train on; earlier months are warm-up months whose features use
# expanding fits (no look-ahead) and serve monitoring only. The fit reads months <= the anchor, i.e. only
# the first training month and history before it.
DEFAULT_FIT_END_MONTH = date(2015, 6, 1)


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable and what is expected."""


@dataclass(frozen=True)
class Settings:
    env: str  # "dev" (demo, tests) or "prod"
    data_dir: Path
    warehouse_path: str
    landing_kind: str  # "synthetic" (canonical parquet layout) or "santander" (Kaggle CSV)
    landing_path: Path
    landing_transactions_path: Path | None
    artifacts_uri: str  # local folder or s3://bucket/prefix
    s3_endpoint_url: str | None
    start_month: date
    end_month: date
    fit_end_month: date
    duckdb_memory_limit: str  # bounds DuckDB's working memory (it spills to disk beyond it)
    governance_db: Path  # registry + audit log: a small DuckDB file of its own (see core/governance/audit/store.py)
    require_approval: bool  # promotion waits for a human approval record
    promotion_policy: dict  # overrides of PromotionPolicy's rules (JSON in PLE_PROMOTION_POLICY)
    # Where each HMAC key comes from ("env:<VARIABLE>" or "dev_default"), for the compliance report. Reading
    # the settings in production checks both keys, so a deployment with a published or short key never starts.
    pseudonymisation_key_source: str = "dev_default"
    audit_key_source: str = "dev_default"
    # GPU dispatch (defs/gpu.py): "subprocess" runs the Pipes worker locally; "k8s" on a GPU pod of gpu_image in
    # k8s_namespace, Pipes messages through the S3 bucket pipes_bucket.
    gpu_dispatch: str = "subprocess"
    gpu_image: str | None = None
    k8s_namespace: str = "default"
    pipes_bucket: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        e = os.environ if environ is None else environ
        env = e.get("PLE_ENV", "dev")
        if env not in ("dev", "prod"):
            raise SettingsError(f"PLE_ENV={env!r}: expected 'dev' or 'prod'")
        data_dir = Path(e.get("PLE_DATA_DIR", "data")).resolve()
        kind = e.get("PLE_LANDING_KIND", "synthetic")
        if kind not in ("synthetic", "santander"):
            raise SettingsError(f"PLE_LANDING_KIND={kind!r}: expected 'synthetic' or 'santander'")
        try:
            start = parse_month(e.get("PLE_START_MONTH", DEFAULT_START_MONTH.isoformat()))
            end = parse_month(e.get("PLE_END_MONTH", DEFAULT_END_MONTH.isoformat()))
            fit_end = parse_month(e.get("PLE_FIT_END_MONTH", DEFAULT_FIT_END_MONTH.isoformat()))
        except ValueError as err:
            raise SettingsError(f"PLE_START_MONTH/PLE_END_MONTH: {err}") from None
        if end < start:
            raise SettingsError(f"PLE_END_MONTH {end} is before PLE_START_MONTH {start}")
        txn = e.get("PLE_LANDING_TRANSACTIONS")
        try:
            policy = json.loads(e.get("PLE_PROMOTION_POLICY") or "{}")
        except json.JSONDecodeError as err:
            raise SettingsError(f"PLE_PROMOTION_POLICY is not valid JSON: {err}") from None
        if not isinstance(policy, dict):
            raise SettingsError("PLE_PROMOTION_POLICY must be a JSON object of PromotionPolicy fields")
        approval = e.get("PLE_REQUIRE_APPROVAL", "0").strip().lower()
        if approval not in ("0", "1", "true", "false", "yes", "no", ""):
            raise SettingsError(f"PLE_REQUIRE_APPROVAL={approval!r}: expected 1/0, true/false or yes/no")
        pseudonymisation = pseudonymisation_key_material(e)  # raises MissingSecretError in prod
        audit = audit_key_material(e)
        dispatch = e.get("PLE_GPU_DISPATCH", "subprocess")
        if dispatch not in ("subprocess", "k8s"):
            raise SettingsError(f"PLE_GPU_DISPATCH={dispatch!r}: expected 'subprocess' or 'k8s'")
        if dispatch == "k8s" and not (e.get("PLE_GPU_IMAGE") and e.get("PLE_PIPES_BUCKET")):
            raise SettingsError("PLE_GPU_DISPATCH=k8s needs PLE_GPU_IMAGE (the GPU image) and PLE_PIPES_BUCKET "
                                "(S3 bucket for Pipes messages)")
        return cls(
            env=env,
            data_dir=data_dir,
            warehouse_path=e.get("PLE_WAREHOUSE", str(data_dir / "warehouse.duckdb")),
            landing_kind=kind,
            landing_path=Path(e.get("PLE_LANDING", str(data_dir / "landing"))),
            landing_transactions_path=Path(txn) if txn else None,
            artifacts_uri=e.get("PLE_ARTIFACTS", str(data_dir / "artifacts")),
            s3_endpoint_url=e.get("PLE_S3_ENDPOINT_URL") or None,
            start_month=start,
            end_month=end,
            fit_end_month=max(start, min(fit_end, end)),
            duckdb_memory_limit=e.get("PLE_DUCKDB_MEMORY_LIMIT", "4GB"),
            governance_db=Path(e.get("PLE_GOVERNANCE_DB", str(data_dir / "governance.duckdb"))),
            require_approval=approval in ("1", "true", "yes"),
            promotion_policy=policy,
            pseudonymisation_key_source=pseudonymisation.source,
            audit_key_source=audit.source,
            gpu_dispatch=dispatch,
            gpu_image=e.get("PLE_GPU_IMAGE") or None,
            k8s_namespace=e.get("PLE_K8S_NAMESPACE", "default"),
            pipes_bucket=e.get("PLE_PIPES_BUCKET") or None,
        )

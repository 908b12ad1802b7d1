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
from ple_platform.core.secrets import (AUDIT_KEY_ENV_VAR, PSEUDONYMISATION_KEY_ENV_VAR, audit_key_from,
                                       pseudonymisation_key_from)

DEFAULT_START_MONTH = date(2015, 1, 1)
DEFAULT_END_MONTH = date(2016, 5, 1)  # inclusive: 17 monthly snapshots
# Fitted feature state is anchored here. Months from the anchor on share one fit (consistent feature
# coordinates) and are the months models train on; earlier months are warm-up months whose features use
# expanding fits (no look-ahead) and serve monitoring only. The fit reads months <= the anchor, i.e. only
# the first training month and history before it.
DEFAULT_FIT_END_MONTH = date(2015, 6, 1)


# ``Settings.from_values`` argument -> the environment variable that sets it (docs/operations.md).
ENV_VARS = {
    "env": "PLE_ENV",
    "data_dir": "PLE_DATA_DIR",
    "warehouse": "PLE_WAREHOUSE",
    "landing_kind": "PLE_LANDING_KIND",
    "landing": "PLE_LANDING",
    "landing_transactions": "PLE_LANDING_TRANSACTIONS",
    "artifacts": "PLE_ARTIFACTS",
    "s3_endpoint_url": "PLE_S3_ENDPOINT_URL",
    "start_month": "PLE_START_MONTH",
    "end_month": "PLE_END_MONTH",
    "fit_end_month": "PLE_FIT_END_MONTH",
    "duckdb_memory_limit": "PLE_DUCKDB_MEMORY_LIMIT",
    "governance_db": "PLE_GOVERNANCE_DB",
    "require_approval": "PLE_REQUIRE_APPROVAL",
    "promotion_policy": "PLE_PROMOTION_POLICY",
    "pseudonymisation_key": PSEUDONYMISATION_KEY_ENV_VAR,
    "audit_key": AUDIT_KEY_ENV_VAR,
    "gpu_dispatch": "PLE_GPU_DISPATCH",
    "gpu_image": "PLE_GPU_IMAGE",
    "k8s_namespace": "PLE_K8S_NAMESPACE",
    "pipes_bucket": "PLE_PIPES_BUCKET",
}


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
        """Settings from environment variables (``ENV_VARS``): for the CLI and for choosing resources."""
        e = os.environ if environ is None else environ
        return cls.from_values(**{name: e[var] for name, var in ENV_VARS.items() if var in e})

    @classmethod
    def from_values(cls, *, env: str = "dev", data_dir: str = "data", warehouse: str | None = None,
                    landing_kind: str = "synthetic", landing: str | None = None,
                    landing_transactions: str | None = None, artifacts: str | None = None,
                    s3_endpoint_url: str | None = None, start_month: str = DEFAULT_START_MONTH.isoformat(),
                    end_month: str = DEFAULT_END_MONTH.isoformat(),
                    fit_end_month: str = DEFAULT_FIT_END_MONTH.isoformat(), duckdb_memory_limit: str = "4GB",
                    governance_db: str | None = None, require_approval: str | bool = "0",
                    promotion_policy: str = "{}", pseudonymisation_key: str | None = None,
                    audit_key: str | None = None, gpu_dispatch: str = "subprocess", gpu_image: str | None = None,
                    k8s_namespace: str = "default", pipes_bucket: str | None = None) -> "Settings":
        """Validated settings from raw values, each named after its ``ENV_VARS`` variable in errors. The keys are
        arguments (their rules: core/secrets.py); only where each came from is kept, never the key itself."""
        if env not in ("dev", "prod"):
            raise SettingsError(f"PLE_ENV={env!r}: expected 'dev' or 'prod'")
        root = Path(data_dir or "data").resolve()
        if landing_kind not in ("synthetic", "santander"):
            raise SettingsError(f"PLE_LANDING_KIND={landing_kind!r}: expected 'synthetic' or 'santander'")
        try:
            start, end, fit_end = (parse_month(m) for m in (start_month, end_month, fit_end_month))
        except ValueError as err:
            raise SettingsError(f"PLE_START_MONTH/PLE_END_MONTH/PLE_FIT_END_MONTH: {err}") from None
        if end < start:
            raise SettingsError(f"PLE_END_MONTH {end} is before PLE_START_MONTH {start}")
        try:
            policy = json.loads(promotion_policy or "{}")
        except json.JSONDecodeError as err:
            raise SettingsError(f"PLE_PROMOTION_POLICY is not valid JSON: {err}") from None
        if not isinstance(policy, dict):
            raise SettingsError("PLE_PROMOTION_POLICY must be a JSON object of PromotionPolicy fields")
        approval = str(require_approval).strip().lower()
        if approval not in ("0", "1", "true", "false", "yes", "no", ""):
            raise SettingsError(f"PLE_REQUIRE_APPROVAL={approval!r}: expected 1/0, true/false or yes/no")
        pseudonymisation = pseudonymisation_key_from(pseudonymisation_key, env)  # raises MissingSecretError in prod
        audit = audit_key_from(audit_key, env)
        if gpu_dispatch not in ("subprocess", "k8s"):
            raise SettingsError(f"PLE_GPU_DISPATCH={gpu_dispatch!r}: expected 'subprocess' or 'k8s'")
        if gpu_dispatch == "k8s" and not (gpu_image and pipes_bucket):
            raise SettingsError("PLE_GPU_DISPATCH=k8s needs PLE_GPU_IMAGE (the GPU image) and PLE_PIPES_BUCKET "
                                "(S3 bucket for Pipes messages)")
        return cls(
            env=env,
            data_dir=root,
            warehouse_path=warehouse or str(root / "warehouse.duckdb"),
            landing_kind=landing_kind,
            landing_path=Path(landing or root / "landing"),
            landing_transactions_path=Path(landing_transactions) if landing_transactions else None,
            artifacts_uri=artifacts or str(root / "artifacts"),
            s3_endpoint_url=s3_endpoint_url or None,
            start_month=start,
            end_month=end,
            fit_end_month=max(start, min(fit_end, end)),
            duckdb_memory_limit=duckdb_memory_limit or "4GB",
            governance_db=Path(governance_db or root / "governance.duckdb"),
            require_approval=approval in ("1", "true", "yes"),
            promotion_policy=policy,
            pseudonymisation_key_source=pseudonymisation.source,
            audit_key_source=audit.source,
            gpu_dispatch=gpu_dispatch,
            gpu_image=gpu_image or None,
            k8s_namespace=k8s_namespace or "default",
            pipes_bucket=pipes_bucket or None,
        )

"""Shared fixtures: a small synthetic landing zone and isolated warehouse/artifact folders per test."""

from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from ple_platform.core.data.synthetic import SyntheticConfig, generate
from ple_platform.core.runtime import torch_threads
from ple_platform.core.settings import Settings
from ple_platform.defs.resources import build_resources

TEST_START = date(2015, 1, 1)
TEST_MONTHS = 6


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The whole suite runs torch on one intra-op thread (see core/runtime.py: on a busy 2-core machine two
    threads make small ops many times slower) and restores the setting afterwards."""
    with torch_threads():
        yield


@pytest.fixture(scope="session")
def landing_dir(tmp_path_factory) -> Path:
    """600 customers x 6 months of synthetic landing files, generated once per session."""
    out = tmp_path_factory.mktemp("landing")
    generate(SyntheticConfig(n_customers=600, start_month=TEST_START, n_months=TEST_MONTHS, seed=11), out)
    return out


@pytest.fixture
def platform_env(tmp_path, landing_dir, monkeypatch) -> Settings:
    """Environment of an isolated platform: own warehouse and artifacts, shared read-only landing data."""
    env = {
        "PLE_DATA_DIR": str(tmp_path),
        "PLE_LANDING": str(landing_dir),
        "PLE_LANDING_KIND": "synthetic",
        "PLE_FIT_END_MONTH": "2015-04-01",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings.from_env(env)


@pytest.fixture
def resources(platform_env):
    return build_resources(platform_env)


def materialize(assets, month: str, resources, instance=None, raise_on_error=False):
    return dg.materialize(
        assets,
        partition_key=month,
        resources=resources,
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
    )

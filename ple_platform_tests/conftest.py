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


# ------------------------------------------------------------------------------------------ model pipeline

PIPELINE_FIT_END = "2015-01-01"  # one fit for all six months: cheap features, five labelled months to train on
TINY_TEACHER = {"max_customers_per_month": 300, "epochs": 1, "batch_size": 128, "expert_dim": 16, "n_layers": 2}


def pipeline_env_vars(root: Path, landing: Path) -> dict[str, str]:
    return {
        "PLE_DATA_DIR": str(root),
        "PLE_LANDING": str(landing),
        "PLE_LANDING_KIND": "synthetic",
        "PLE_FIT_END_MONTH": PIPELINE_FIT_END,
        "PLE_START_MONTH": "2015-01-01",
        "PLE_END_MONTH": "2015-06-01",
    }


@pytest.fixture(scope="session")
def pipeline_data(tmp_path_factory, landing_dir) -> Path:
    """raw + 17 feature groups + labels for the six test months, materialized once with the production assets
    (labels after every raw month exists: month t's labels read t+1). Tests copy it (``pipeline_env``)."""
    from ple_platform.defs.features.assets import feature_assets
    from ple_platform.defs.labels.assets import task_labels
    from ple_platform.defs.raw.assets import raw_assets

    root = tmp_path_factory.mktemp("pipeline")
    months = [date(2015, m, 1).isoformat() for m in range(1, TEST_MONTHS + 1)]
    with pytest.MonkeyPatch.context() as mp:
        env = pipeline_env_vars(root, landing_dir)
        for k, v in env.items():
            mp.setenv(k, v)
        res = build_resources(Settings.from_env(env))
        for m in months:
            assert materialize([*raw_assets, *feature_assets], m, res).success, m
        for m in months[:-1]:  # small panels may fail the learnability check (e.g. too few lending acquisitions)
            materialize([task_labels], m, res)
    return root


@pytest.fixture
def pipeline_env(tmp_path, pipeline_data, landing_dir, monkeypatch) -> Settings:
    """A private copy of the materialized pipeline data with the environment pointing at it."""
    import shutil

    root = tmp_path / "platform"
    shutil.copytree(pipeline_data, root)
    env = pipeline_env_vars(root, landing_dir)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings.from_env(env)

"""Shared fixtures: a small synthetic landing zone and isolated warehouse/artifact folders per test."""

import os
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from ple_platform.core.data.synthetic import SyntheticConfig, generate
from ple_platform.core.runtime import compute_threads
from ple_platform.core.settings import Settings
from ple_platform.defs.resources import build_resources

TEST_START = date(2015, 1, 1)
TEST_MONTHS = 6


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The whole suite runs torch on one intra-op thread (see core/runtime.py: on a busy 2-core machine two
    threads make small ops many times slower) and restores the setting afterwards."""
    with compute_threads():
        yield


@pytest.fixture(autouse=True, scope="session")
def no_llm_credentials():
    """No test may use a real API key or endpoint: a developer's ANTHROPIC_API_KEY would otherwise send the
    serving app's L2 rewrites to the internet. Tests that need the LLM path set a fake key and the local stand-in's
    URL themselves. Restored after the session."""
    names = ("ANTHROPIC_API_KEY", "PLE_LLM_API_KEY", "ANTHROPIC_BASE_URL", "PLE_LLM_BASE_URL")
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    yield
    os.environ.update(saved)


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


@pytest.fixture(scope="session")
def served_platform(tmp_path_factory, pipeline_data, landing_dir):
    """A platform with a champion and month 2015-06 served: tiny teacher and FAST students for 2015-05, bootstrap
    promotion through the sensor, then recommendations and a compliance report for 2015-06 — all materialized
    into a persistent Dagster home, so `dagster dev` on the same home and data (browser test) shows them.
    The environment is set only while building; tests that materialize set it again from ``env``."""
    import json
    import shutil

    import dagster as dg

    from ple_platform.defs.distillation.assets import distillation_dataset, model_bundle, student_assets
    from ple_platform.defs.governance.promotion import ChallengerEvaluationConfig, challenger_evaluation
    from ple_platform.defs.governance.reports import ComplianceReportConfig, compliance_report, recommendations
    from ple_platform.defs.training.assets import TeacherRunConfig, ple_teacher
    from ple_platform_tests.pipeline_helpers import FAST, POLICY, run_promotions, student_config, tick

    base = tmp_path_factory.mktemp("served")
    root, home = base / "platform", base / "dagster_home"
    shutil.copytree(pipeline_data, root)
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", home / "dagster.yaml")
    env = {**pipeline_env_vars(root, landing_dir), "PLE_PROMOTION_POLICY": json.dumps(POLICY)}
    m5, m6 = "2015-05-01", "2015-06-01"
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            mp.delenv("PLE_PSEUDONYMISATION_KEY", raising=False)
            settings = Settings.from_env()
            res = build_resources(settings)
            assert dg.materialize([ple_teacher, distillation_dataset], partition_key=m5, resources=res,
                                  instance=instance,
                                  run_config=dg.RunConfig({"ple_teacher": TeacherRunConfig(**TINY_TEACHER)})).success
            assert dg.materialize(
                [*student_assets, model_bundle, challenger_evaluation], partition_key=m5, resources=res,
                instance=instance, run_config=dg.RunConfig({**student_config(**FAST), "challenger_evaluation":
                                                            ChallengerEvaluationConfig(n_boot=20, min_group_size=1000)})
            ).success
            run_promotions(tick(res, instance), res, instance)
            assert res["governance"].registry().champion() is not None
            result = dg.materialize([recommendations, compliance_report], partition_key=m6, resources=res,
                                    instance=instance, run_config=dg.RunConfig(
                                        {"compliance_report": ComplianceReportConfig(n_boot=10, min_group_size=30)}))
            assert result.success
        yield {"root": root, "home": home, "env": env, "settings": settings, "res": res, "instance": instance,
               "result": result}
    finally:
        instance.dispose()


def pytest_addoption(parser):
    parser.addoption("--update-definitions-snapshot", action="store_true", default=False,
                     help="rewrite ple_platform_tests/data/definitions_snapshot.json from the current definitions")


# Fixtures that materialize the pipeline (raw + 17 feature groups + labels for six months, then a teacher,
# students, a promotion and a served month): a test that uses one, directly or through another fixture, is an
# end-to-end test and belongs to the `slow` tier. `make test` runs every tier; `make test-fast` deselects `slow`.
PIPELINE_FIXTURES = frozenset({"pipeline_data", "pipeline_env", "served_platform"})


def pytest_collection_modifyitems(config, items):
    """Keep `make test-fast` a unit-test tier: collection fails, naming the tests, if one that materializes the
    pipeline is not marked ``slow`` (one such test unmarked costs the fast tier minutes of fixture setup)."""
    unmarked = [item.nodeid for item in items
                if PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError("these tests materialize the pipeline (fixtures "
                                f"{', '.join(sorted(PIPELINE_FIXTURES))}) but are not marked slow: "
                                + ", ".join(unmarked))

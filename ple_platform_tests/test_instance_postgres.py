"""The production instance config against a real PostgreSQL server on loopback, and one instance config per
deployment: infra/dagster-k8s.yaml and the Helm values describe the same instance."""

import textwrap
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ple_platform.defs.gpu import GPU_POOL
from ple_platform.defs.raw.assets import WAREHOUSE_POOL
from ple_platform_tests.postgres_server import postgres_bin_dir, postgres_server

REPO = Path(__file__).resolve().parents[1]
INSTANCE = yaml.safe_load((REPO / "infra" / "dagster-k8s.yaml").read_text())
HELM = yaml.safe_load((REPO / "infra" / "helm" / "values.yaml").read_text())
# The run launcher needs a cluster (in-cluster config) to construct; everything else is used verbatim.
LOCAL_SECTIONS = ("storage", "run_coordinator", "run_monitoring", "concurrency", "telemetry")


@pytest.fixture(scope="module")
def postgres():
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL binaries (initdb/pg_ctl/postgres) are not installed: apt-get install postgresql")
    with postgres_server() as server:
        yield server


@pytest.fixture
def prod_instance_home(postgres, tmp_path, monkeypatch):
    for k, v in postgres.env().items():
        monkeypatch.setenv(k, v)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({k: INSTANCE[k] for k in LOCAL_SECTIONS}))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


SENSOR_DEFS = textwrap.dedent('''
    import dagster as dg

    @dg.asset
    def ticked():
        return 1

    @dg.sensor(target=[ticked], default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=1)
    def pg_sensor(context):
        return dg.SkipReason(f"nothing new (cursor {context.cursor})")

    defs = dg.Definitions(assets=[ticked], sensors=[pg_sensor])
''')


@pytest.mark.slow  # starts a PostgreSQL server
def test_materialization_checks_and_sensor_ticks_are_stored_in_postgres(prod_instance_home, tmp_path):
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import PythonFileTarget
    from dagster._daemon.sensor import execute_sensor_iteration
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    @dg.asset(pool=WAREHOUSE_POOL)
    def pg_asset():
        return dg.MaterializeResult(metadata={"rows": 42})

    @dg.asset_check(asset=pg_asset)
    def pg_asset_has_rows():
        return dg.AssetCheckResult(passed=True, metadata={"checked_rows": 42})

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        result = dg.materialize([pg_asset, pg_asset_has_rows], instance=instance)
        assert result.success
        run_id = result.run_id

        defs_file = tmp_path / "sensor_defs.py"
        defs_file.write_text(SENSOR_DEFS)
        target = PythonFileTarget(python_file=str(defs_file), attribute=None, working_directory=str(tmp_path),
                                  location_name="pg_test")
        with create_test_daemon_workspace_context(target, instance) as workspace:
            list(execute_sensor_iteration(workspace, dg.get_dagster_logger("SensorDaemon"), None, None))

    # A second instance (new connections, same database) reads everything back.
    with dg.DagsterInstance.get() as reader:
        assert reader.get_run_by_id(run_id).is_success
        event = reader.get_latest_materialization_event(dg.AssetKey("pg_asset"))
        assert event.run_id == run_id and event.asset_materialization.metadata["rows"].value == 42
        check = reader.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("pg_asset"), "pg_asset_has_rows")])
        record = check[dg.AssetCheckKey(dg.AssetKey("pg_asset"), "pg_asset_has_rows")]
        assert record.run_id == run_id and record.status.value == "SUCCEEDED"
        states = [s for s in reader.all_instigator_state() if s.name == "pg_sensor"]
        assert len(states) == 1
        ticks = reader.get_ticks(states[0].instigator_origin_id, states[0].selector_id)
        assert len(ticks) == 1 and ticks[0].status.value == "SKIPPED"
        assert "nothing new" in ticks[0].skip_reason
        # The pool limit of the config applies to the warehouse and GPU pools alike.
        assert reader.event_log_storage.get_pool_config().default_pool_limit == 1


def test_instance_config_names_every_pool_the_assets_use():
    from ple_platform.definitions import load_definitions

    pools = {a.op.pool for a in load_definitions().assets if getattr(a, "op", None) is not None} - {None}
    assert pools == {WAREHOUSE_POOL, GPU_POOL}
    # No per-pool limits exist in dagster.yaml: default_limit covers every pool; both configs set it to 1.
    assert INSTANCE["concurrency"]["pools"]["default_limit"] == 1
    embedded = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert embedded["concurrency"]["pools"]["default_limit"] == 1


def test_helm_values_and_instance_config_describe_the_same_instance():
    pg = INSTANCE["storage"]["postgres"]["postgres_db"]
    assert {k: pg[k] for k in ("username", "password", "hostname", "db_name", "port")} == {
        "username": {"env": "DAGSTER_PG_USERNAME"}, "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": {"env": "DAGSTER_PG_HOST"}, "db_name": {"env": "DAGSTER_PG_DB"},
        "port": {"env": "DAGSTER_PG_PORT"}}
    assert INSTANCE["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    # Helm: external Postgres (the chart's storage block is always postgres), same database.
    assert HELM["postgresql"]["enabled"] is False and HELM["postgresql"]["postgresqlDatabase"] == "dagster"
    # Pools and run limits.
    assert HELM["concurrency"]["enabled"] is True
    assert HELM["concurrency"]["pools"]["defaultLimit"] == INSTANCE["concurrency"]["pools"]["default_limit"]
    assert HELM["concurrency"]["runs"]["maxConcurrentRuns"] == INSTANCE["concurrency"]["runs"]["max_concurrent_runs"]
    assert HELM["dagsterDaemon"]["runCoordinator"]["type"] == INSTANCE["run_coordinator"]["class"]
    # Run monitoring (GPU pools scale from zero).
    mon = HELM["dagsterDaemon"]["runMonitoring"]
    assert mon["enabled"] is INSTANCE["run_monitoring"]["enabled"] is True
    assert mon["startTimeoutSeconds"] == INSTANCE["run_monitoring"]["start_timeout_seconds"]
    # Run launcher: K8s, the same env (incl. GPU dispatch), secrets and warehouse volume.
    launcher = INSTANCE["run_launcher"]
    helm_launcher = HELM["runLauncher"]["config"]["k8sRunLauncher"]
    assert HELM["runLauncher"]["type"] == launcher["class"] == "K8sRunLauncher"
    assert helm_launcher["envVars"] == launcher["config"]["env_vars"]
    assert "PLE_GPU_DISPATCH=k8s" in launcher["config"]["env_vars"]
    assert [s["name"] for s in helm_launcher["envSecrets"]] == launcher["config"]["env_secrets"]
    assert helm_launcher["volumes"] == launcher["config"]["volumes"]
    assert helm_launcher["volumeMounts"] == launcher["config"]["volume_mounts"]
    # The code server sees the same GPU dispatch settings as the run pods receive.
    deployment = HELM["dagster-user-deployments"]["deployments"][0]
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    assert env["PLE_GPU_DISPATCH"] == "k8s" and env["PLE_GPU_IMAGE"] and env["PLE_PIPES_BUCKET"]
    assert env["PLE_K8S_NAMESPACE"] == helm_launcher["jobNamespace"]

"""`dagster dev` on 127.0.0.1 as a user runs it: the asset graph loads and a month materializes via GraphQL."""

import time

import pytest
from dagster import AssetKey, DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

from ple_platform_tests.devserver import LOCATION, DevServer, dagster_dev as start_dagster_dev


@pytest.fixture
def dagster_dev(tmp_path, landing_dir):
    env = {"PLE_DATA_DIR": str(tmp_path / "data"), "PLE_LANDING": str(landing_dir)}
    with start_dagster_dev(tmp_path, env) as server:
        yield server


def _gql(server: DevServer, query: str, variables: dict | None = None) -> dict:
    return server.gql(query, variables)


@pytest.mark.slow
def test_ui_shows_the_groups_and_materializes_a_month(dagster_dev):
    server = dagster_dev
    nodes = _gql(server, "{ assetNodes { assetKey { path } groupName isPartitioned } }")["assetNodes"]
    groups = {}
    for n in nodes:
        groups.setdefault(n["groupName"], set()).add(n["assetKey"]["path"][-1])
    assert {"raw_customers", "raw_holdings", "raw_transactions"} <= groups["raw"]
    assert len(groups["features"]) == 17 and "tda_local" in groups["features"]
    assert all(n["isPartitioned"] for n in nodes if n["assetKey"]["path"] != ["champion_model"])

    client = DagsterGraphQLClient("127.0.0.1", port_number=server.port)
    run_id = client.submit_job_execution(
        "__ASSET_JOB",
        repository_location_name=LOCATION,
        tags={"dagster/partition": "2015-01-01"},
        asset_selection=[AssetKey("raw_customers"), AssetKey("raw_holdings"), AssetKey("raw_transactions")],
    )
    deadline = time.time() + 180
    while (status := client.get_run_status(run_id)) not in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE):
        assert time.time() < deadline, f"run {run_id} still {status}"
        time.sleep(2)
    assert status == DagsterRunStatus.SUCCESS
    data = _gql(server, """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset {
        assetMaterializations(partitions: ["2015-01-01"], limit: 1) { runId partition metadataEntries { label } } } } }""",
                {"key": {"path": ["raw_transactions"]}})
    (mat,) = data["assetOrError"]["assetMaterializations"]
    assert mat["runId"] == run_id and mat["partition"] == "2015-01-01"
    assert {"content_hash", "dagster/row_count", "null_rates"} <= {e["label"] for e in mat["metadataEntries"]}

"""`dagster dev` on 127.0.0.1 as a user runs it: the asset graph loads and a month materializes via GraphQL."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dagster import AssetKey, DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _restore_signals():
    # A non-interactive parent leaves SIGINT ignored, and dagster dev would then ignore our shutdown.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture
def dagster_dev(tmp_path, landing_dir):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "PLE_DATA_DIR": str(tmp_path / "data"), "PLE_LANDING": str(landing_dir)}
    log = open(tmp_path / "dagster_dev.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_restore_signals,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "dagster_dev.log").read_text()[-3000:]
            time.sleep(1)
        else:
            pytest.fail("dagster dev did not answer /server_info within 120 s")
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _gql(port: int, query: str, variables: dict | None = None) -> dict:
    r = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    r.raise_for_status()
    body = r.json()
    assert "errors" not in body, body
    return body["data"]


@pytest.mark.slow
def test_ui_shows_the_groups_and_materializes_a_month(dagster_dev):
    port = dagster_dev
    nodes = _gql(port, "{ assetNodes { assetKey { path } groupName isPartitioned } }")["assetNodes"]
    groups = {}
    for n in nodes:
        groups.setdefault(n["groupName"], set()).add(n["assetKey"]["path"][-1])
    assert {"raw_customers", "raw_holdings", "raw_transactions"} <= groups["raw"]
    assert len(groups["features"]) == 17 and "tda_local" in groups["features"]
    assert all(n["isPartitioned"] for n in nodes)

    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    run_id = client.submit_job_execution(
        "__ASSET_JOB",
        repository_location_name="ple_platform",
        tags={"dagster/partition": "2015-01-01"},
        asset_selection=[AssetKey("raw_customers"), AssetKey("raw_holdings"), AssetKey("raw_transactions")],
    )
    deadline = time.time() + 180
    while (status := client.get_run_status(run_id)) not in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE):
        assert time.time() < deadline, f"run {run_id} still {status}"
        time.sleep(2)
    assert status == DagsterRunStatus.SUCCESS
    data = _gql(port, """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset {
        assetMaterializations(partitions: ["2015-01-01"], limit: 1) { runId partition metadataEntries { label } } } } }""",
                {"key": {"path": ["raw_transactions"]}})
    (mat,) = data["assetOrError"]["assetMaterializations"]
    assert mat["runId"] == run_id and mat["partition"] == "2015-01-01"
    assert {"content_hash", "dagster/row_count", "null_rates"} <= {e["label"] for e in mat["metadataEntries"]}

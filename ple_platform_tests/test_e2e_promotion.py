"""End to end through a real ``dagster dev`` on 127.0.0.1 (webserver, daemon, code server; issue #5).

Two months are materialized through the GraphQL API (teacher -> distillation dataset -> 13 students -> bundle ->
challenger evaluation, tiny run config), and the *daemon-run* ``champion_challenger_sensor`` (interval 5 s via
``PLE_SENSOR_INTERVAL_SECONDS``) decides: month 5 becomes champion by the bootstrap rule through a sensor-launched
``promote_challenger`` run; month 6 gets a recorded decision with reasons (promote or reject are both legitimate on
a 300-customer panel) and, if promoted, the champion changes after the promotion run succeeds. The test process
reads the registry and the audit log directly (the governance file is locked per operation, so this is safe while
runs and the daemon write it).

The runs use the in-process executor (``execution: in_process`` in the run config): 16 steps as 16 fresh Python
processes would cost minutes of imports on a 2-core machine, and step isolation is not what this test is about.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from dagster import AssetKey
from dagster_graphql import DagsterGraphQLClient

from ple_platform.core.distillation.bundle import bundle_version_for
from ple_platform.core.governance.audit.log import AuditEvent
from ple_platform.core.settings import Settings
from ple_platform.defs.distillation.assets import student_assets
from ple_platform.defs.resources import build_resources
from ple_platform_tests.conftest import TINY_TEACHER, pipeline_env_vars
from ple_platform_tests.devserver import LOCATION, DevServer, dagster_dev
from ple_platform_tests.pipeline_helpers import FAST, POLICY

M5, M6 = "2015-05-01", "2015-06-01"
SENSOR = "champion_challenger_sensor"
# Seconds after the server answers (~30 s to start). Measured ~2 min per month on a loaded 2-core machine;
# PLE_E2E_BUDGET_S changes it.
BUDGET_S = float(os.environ.get("PLE_E2E_BUDGET_S", "480"))
STUDENTS = [a.key.path[-1] for a in student_assets]
TRAIN = ["ple_teacher", "distillation_dataset", *STUDENTS, "model_bundle"]
EVALUATE = ["challenger_evaluation"]
OP_CONFIG = {
    "ple_teacher": TINY_TEACHER,
    **{s: {**FAST, "num_boost_round": 15, "selection_rounds": 8, "n_boot": 10} for s in STUDENTS},
    "challenger_evaluation": {"n_boot": 50, "min_group_size": 1000},
}
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}

RUNS_QUERY = """query($filter: RunsFilter) { runsOrError(filter: $filter) {
  __typename ... on Runs { results { runId status jobName tags { key value } } }
  ... on PythonError { message } } }"""
RUN_QUERY = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { runId status jobName
  tags { key value } } } }"""


class Clock:
    """One deadline for the whole test; a timeout fails with what was awaited and the dagster dev log's tail."""

    def __init__(self, server: DevServer, budget_s: float) -> None:
        self.server, self.deadline = server, time.monotonic() + budget_s

    def wait(self, what: str, probe, every: float = 1.0):
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > self.deadline:
                pytest.fail(f"timed out waiting for {what}\n--- dagster dev log (tail) ---\n"
                            f"{self.server.log_tail(6000)}")
            time.sleep(every)


def _run(server: DevServer, run_id: str) -> dict:
    return server.gql(RUN_QUERY, {"id": run_id})["runOrError"]


def _runs(server: DevServer, job: str, tags: dict[str, str]) -> list[dict]:
    data = server.gql(RUNS_QUERY, {"filter": {"pipelineName": job,
                                              "tags": [{"key": k, "value": v} for k, v in tags.items()]}})
    assert data["runsOrError"]["__typename"] == "Runs", data
    return data["runsOrError"]["results"]


def _launch(server: DevServer, month: str, selection: list[str]) -> str:
    """Launch a materialization of ``selection`` for ``month`` through GraphQL (as the launchpad does)."""
    client = DagsterGraphQLClient("127.0.0.1", port_number=server.port)
    run_config = {"execution": {"config": {"in_process": {}}},
                  "ops": {op: {"config": OP_CONFIG[op]} for op in selection if op in OP_CONFIG}}
    return client.submit_job_execution("__ASSET_JOB", repository_location_name=LOCATION, run_config=run_config,
                                       tags={"dagster/partition": month},
                                       asset_selection=[AssetKey(k) for k in selection])


def _succeeded(server: DevServer, clock: Clock, run_id: str, what: str) -> None:
    run = clock.wait(f"run {run_id} ({what}) to finish",
                     lambda: (r := _run(server, run_id))["status"] in TERMINAL and r, every=2)
    assert run["status"] == "SUCCESS", f"{what} run {run_id}: {run['status']}\n{server.log_tail(6000)}"


def _promotion_run(server: DevServer, clock: Clock, version: str) -> dict:
    """The sensor-launched promote_challenger run for ``version``, once finished."""
    def probe():
        runs = _runs(server, "promote_challenger", {"ple/challenger": version})
        return runs[0] if runs and runs[0]["status"] in TERMINAL else None
    run = clock.wait(f"the sensor's promote_challenger run for {version}", probe)
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags.get("dagster/sensor_name") == SENSOR, tags  # launched by the daemon's sensor, not by us
    assert run["status"] == "SUCCESS", f"promotion run {run['runId']}: {run['status']}\n{server.log_tail(6000)}"
    return run


@pytest.mark.slow
def test_dagster_dev_daemon_sensor_promotes_the_bootstrap_champion_and_decides_the_next(
        tmp_path, pipeline_data, landing_dir, monkeypatch):
    root = tmp_path / "platform"
    shutil.copytree(pipeline_data, root)
    env = {**pipeline_env_vars(root, landing_dir), "PLE_SENSOR_INTERVAL_SECONDS": "5",
           "PLE_PROMOTION_POLICY": json.dumps(POLICY)}  # audit key: the one the copied ingest entries used
    for k, v in env.items():  # the test process reads the same registry / audit log as the server writes
        monkeypatch.setenv(k, v)
    resources = build_resources(Settings.from_env())
    store, gov = resources["artifacts"].store(), resources["governance"]

    def version_of(month: str) -> str:
        return bundle_version_for(store, month)

    with dagster_dev(tmp_path, env) as server:
        clock = Clock(server, BUDGET_S)
        # The sensor is on by default (DefaultSensorStatus.RUNNING) in the daemon.
        state = server.gql("""{ sensorsOrError(repositorySelector: {repositoryLocationName: "%s",
            repositoryName: "__repository__"}) { ... on Sensors { results { name minIntervalSeconds
            sensorState { status } } } } }""" % LOCATION)["sensorsOrError"]["results"]
        sensor = next(s for s in state if s["name"] == SENSOR)
        assert sensor["sensorState"]["status"] == "RUNNING" and sensor["minIntervalSeconds"] == 5, sensor

        # Month 5's whole chain, and month 6's training (teacher -> students -> bundle) alongside it: the two
        # runs share the DuckDB writer pool (limit 1), so only the pool-free student steps truly overlap.
        run5 = _launch(server, M5, TRAIN + EVALUATE)
        run6_train = _launch(server, M6, TRAIN)

        # 1. Month 5: no champion yet, so the sensor's decision is the explicit bootstrap rule.
        _succeeded(server, clock, run5, f"{M5} chain")
        v5 = version_of(M5)
        promotion5 = _promotion_run(server, clock, v5)
        registry = gov.registry()
        assert registry.champion().version == v5
        (d5,) = registry.decisions(v5)
        assert d5.outcome == "bootstrap" and d5.reasons and d5.champion_version is None
        assert {t["key"]: t["value"] for t in promotion5["tags"]}["ple/decision"] == str(d5.id)

        # 2. Month 6, evaluated once month 5 is champion; the sensor records a decision with reasons.
        _succeeded(server, clock, run6_train, f"{M6} training")
        _succeeded(server, clock, _launch(server, M6, EVALUATE), f"{M6} challenger evaluation")
        v6 = version_of(M6)
        assert v6 != v5
        d6 = clock.wait(f"the sensor's decision on {v6}", lambda: registry.decisions(v6))[-1]
        assert d6.outcome in ("promote", "reject"), d6
        assert d6.reasons and all(isinstance(r, str) and r for r in d6.reasons)
        assert d6.champion_version == v5
        if d6.outcome == "promote":
            _promotion_run(server, clock, v6)
            assert registry.champion().version == v6
            assert [c.version for c in registry.champion_history()] == [v5, v6]
        else:
            # A rejection launches nothing: give the sensor two more ticks to prove it, the champion stays.
            time.sleep(11)
            assert not _runs(server, "promote_challenger", {"ple/challenger": v6})
            assert registry.champion().version == v5

    audit = gov.audit_log()
    events = [e.event for e in audit.entries()]
    assert {AuditEvent.REGISTRATION, AuditEvent.EVALUATION, AuditEvent.PROMOTION} <= set(events)
    assert (AuditEvent.PROMOTION if d6.outcome == "promote" else AuditEvent.REJECTION) in events
    assert audit.verify().ok

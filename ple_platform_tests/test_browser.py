"""The Dagster UI in a real browser (issue #6): Playwright drives Debian's chromium headless against ``dagster dev``
on 127.0.0.1.

What is asserted:

* the global asset lineage (``/asset-groups``) shows the six pipeline groups raw, features, labels, training,
  distillation and governance, and the GraphQL asset graph has them in that dependency order (every group's
  assets depend only on its own or earlier groups);
* a materialized asset's page shows its metadata: ``raw_customers`` for 2015-01 is materialized through GraphQL
  (~10 s) and its page lists the ``content_hash`` and ``null_rates`` entries;
* the ``compliance_report`` asset (group governance, described in GraphQL) has a page that shows, for the 2015-06
  materialization made by the session's served platform (conftest ``served_platform``: tiny teacher, students,
  bootstrap promotion, recommendations, report), its metadata (``overall_status``, ``controls_live``,
  ``fairness_status``).

Screenshots are saved as test artifacts under ``<repo>/test-artifacts/browser/`` (``asset_graph.png``,
``raw_customers.png``, ``compliance_report.png``; the folder is not tracked by git).

Chromium comes from apt (``apt-get install chromium``; never ``playwright install``); when ``/usr/bin/chromium`` is
missing this test fails, it does not skip.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dagster import AssetKey
from dagster_graphql import DagsterGraphQLClient
from playwright.sync_api import Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from ple_platform_tests.devserver import LOCATION, REPO, DevServer, dagster_dev

pytestmark = pytest.mark.slow  # starts `dagster dev` and chromium on the session's served platform

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
GROUPS = ["raw", "features", "labels", "training", "distillation", "governance"]
ARTIFACTS = REPO / "test-artifacts" / "browser"
UI_TIMEOUT_MS = 60_000  # the first render compiles the asset graph; slow on a busy 2-core machine


@pytest.fixture(scope="module")
def server(served_platform):
    """``dagster dev`` on the served platform's Dagster home and data: its runs, materializations and compliance
    report are what the UI shows. The sensor is stopped (interval 1 day): this test only looks."""
    env = {**served_platform["env"], "PLE_SENSOR_INTERVAL_SECONDS": "86400"}
    with dagster_dev(served_platform["home"].parent, env) as s:
        yield s


@pytest.fixture(scope="module")
def page(server):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); "
                    "the browser test needs it and never downloads a browser itself")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            p = browser.new_page(viewport={"width": 1600, "height": 1000})
            p.set_default_timeout(UI_TIMEOUT_MS)
            # The "Join the Dagster community" pop-up appears ~8 s after load, on any page: close it whenever.
            p.add_locator_handler(p.get_by_text("Join the Dagster community"), lambda _: _dismiss_popup(p))
            p.goto(f"{server.url}/asset-groups")
            try:  # it opens once per browser profile; wait for it here so that screenshots show the UI itself
                p.get_by_text("Join the Dagster community").wait_for(timeout=20_000)
                _dismiss_popup(p)
                p.get_by_text("Join the Dagster community").wait_for(state="hidden", timeout=10_000)
            except PlaywrightTimeoutError:
                pass  # no pop-up on this build: nothing to dismiss
            yield p
        finally:
            browser.close()


def _dismiss_popup(p: Page) -> None:
    skip = p.get_by_role("button", name="Skip")  # the pop-up's own dismiss button
    if skip.count():
        skip.first.click()
    else:
        p.keyboard.press("Escape")


def _nodes(server: DevServer) -> list[dict]:
    return server.gql("""{ assetNodes { assetKey { path } groupName description
        dependencyKeys { path } } }""")["assetNodes"]


def test_asset_graph_shows_the_six_groups_in_pipeline_order(server, page):
    nodes = _nodes(server)
    group_of = {n["assetKey"]["path"][-1]: n["groupName"] for n in nodes}
    assert sorted(set(group_of.values()), key=GROUPS.index) == GROUPS, set(group_of.values())
    for n in nodes:  # raw -> features -> labels -> training -> distillation -> governance
        rank = GROUPS.index(n["groupName"])
        upstream = {group_of[d["path"][-1]] for d in n["dependencyKeys"]}
        assert all(GROUPS.index(g) <= rank for g in upstream), (n["assetKey"], upstream)

    page.goto(f"{server.url}/asset-groups")
    for group in GROUPS:  # once in the sidebar's group tree and once as a group node of the lineage graph
        expect(page.get_by_text(group, exact=True).filter(visible=True).nth(1)).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.screenshot(path=str(ARTIFACTS / "asset_graph.png"), full_page=True)


def test_a_materialized_asset_page_shows_its_metadata(server, page):
    client = DagsterGraphQLClient("127.0.0.1", port_number=server.port)
    run_id = client.submit_job_execution("__ASSET_JOB", repository_location_name=LOCATION,
                                         tags={"dagster/partition": "2015-01-01"},
                                         asset_selection=[AssetKey("raw_customers")])
    deadline = time.monotonic() + 120
    while (status := client.get_run_status(run_id).value) not in ("SUCCESS", "FAILURE", "CANCELED"):
        assert time.monotonic() < deadline, f"run {run_id} still {status}\n{server.log_tail()}"
        time.sleep(2)
    assert status == "SUCCESS", server.log_tail()

    page.goto(f"{server.url}/assets/raw_customers")
    for label in ("content_hash", "null_rates"):
        expect(page.get_by_text(label, exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.get_by_text("null_rates", exact=True).first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "raw_customers.png"), full_page=True)


def test_compliance_report_asset_page_shows_its_metadata(server, page):
    nodes = {n["assetKey"]["path"][-1]: n for n in _nodes(server)}
    assert "compliance_report" in nodes, (
        "compliance_report is not in the Definitions loaded by workspace.yaml (ple_platform/definitions.py)")
    report = nodes["compliance_report"]
    assert report["groupName"] == "governance"
    assert report["description"].startswith("Model card")
    materialized = server.gql("""{ assetOrError(assetKey: {path: ["compliance_report"]}) { ... on Asset {
        assetMaterializations(limit: 1) { partition } } } }""")["assetOrError"]["assetMaterializations"]
    assert materialized and materialized[0]["partition"] == "2015-06-01", materialized
    page.goto(f"{server.url}/assets/compliance_report")
    expect(page.get_by_text("compliance_report").first).to_be_visible(timeout=UI_TIMEOUT_MS)
    for label in ("overall_status", "controls_live", "fairness_status"):
        expect(page.get_by_text(label, exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.screenshot(path=str(ARTIFACTS / "compliance_report.png"), full_page=True)

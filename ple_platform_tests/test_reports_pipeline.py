"""recommendations -> compliance_report -> lineage on real materializations: a tiny teacher, FAST students, a
bootstrap promotion through the sensor, then month 2015-06 is scored, explained, reported and traced."""

import json
import re
from html.parser import HTMLParser

import dagster as dg
import duckdb
import pytest

from ple_platform.core.data.schema import INVESTMENT_PRODUCTS, PRODUCT_NAMES, SUITABILITY_PROFILES
from ple_platform.core.features.spec import FEATURE_GROUPS
from ple_platform.core.governance.audit import lineage
from ple_platform.core.governance.audit.log import AuditEvent
from ple_platform.core.recommend.glossary import concept_for, format_percent
from ple_platform.core.recommend.monthly import PROTECTED_COLUMNS, PROTECTED_CONCEPTS, TABLE
from ple_platform.defs.governance.reports import ComplianceReportConfig, compliance_report

pytestmark = pytest.mark.slow  # reads the session's served platform (the pipeline, a champion, a served month)

M5, M6 = "2015-05-01", "2015-06-01"
REPORT_CFG = dg.RunConfig({"compliance_report": ComplianceReportConfig(n_boot=10, min_group_size=30)})


@pytest.fixture
def served(served_platform, monkeypatch):
    """The session's served platform (conftest) with its environment set for this test."""
    for k, v in served_platform["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PLE_PSEUDONYMISATION_KEY", raising=False)
    return served_platform


def _query(served, sql, params=()):
    with served["res"]["warehouse"].get_connection() as con:
        return con.execute(sql, list(params)).fetchall()


def _report_json(served) -> dict:
    return json.loads((served["settings"].data_dir / "reports" / "compliance_report_2015-06-01.json").read_text())


def test_recommendations_respect_top7_holdings_and_suitability(served):
    rows = _query(served, f"SELECT customer_id, rank, product, bundle_version FROM {TABLE} WHERE month = ?", [M6])
    assert rows
    champion = served["res"]["governance"].registry().champion()
    assert {r[3] for r in rows} == {champion.version}
    per_customer: dict[str, list] = {}
    for cid, rank, product, _ in rows:
        per_customer.setdefault(cid, []).append((rank, product))
    for recs in per_customer.values():
        assert len(recs) <= 7
        assert sorted(r for r, _ in recs) == list(range(1, len(recs) + 1))
        assert len({p for _, p in recs}) == len(recs)
    # None already held at month t (raw holdings of the month).
    held = _query(served, f"SELECT count(*) FROM {TABLE} r JOIN raw.holdings h ON h.customer_id = r.customer_id "
                          "AND h.month = r.month WHERE r.month = ? AND (" +
                  " OR ".join(f"(r.product = '{p}' AND h.\"{p}\" = 1)" for p in PRODUCT_NAMES) + ")", [M6])
    assert held[0][0] == 0
    # No investment product for a customer without a (known) suitability profile.
    profiles = ", ".join(f"'{p}'" for p in SUITABILITY_PROFILES)
    invest = ", ".join(f"'{p}'" for p in INVESTMENT_PRODUCTS)
    no_profile = _query(served, f"SELECT count(DISTINCT c.customer_id) FROM raw.customers c WHERE c.month = ? AND "
                                f"(c.suitability_profile IS NULL OR c.suitability_profile NOT IN ({profiles}))", [M6])
    assert no_profile[0][0] > 0  # the rule is exercised
    bad = _query(served, f"SELECT count(*) FROM {TABLE} r JOIN raw.customers c ON c.customer_id = r.customer_id AND "
                         f"c.month = r.month WHERE r.month = ? AND r.product IN ({invest}) AND "
                         f"(c.suitability_profile IS NULL OR c.suitability_profile NOT IN ({profiles}))", [M6])
    assert bad[0][0] == 0
    meta = served["result"].asset_materializations_for_node("recommendations")[0].metadata
    assert meta["blocked_investment_pairs"].value > 0
    assert meta["rows"].value == len(rows)
    # Ids are sha256(version|month|customer|rank)[:20].
    import hashlib
    rid, cid, rank = _query(served, f"SELECT recommendation_id, customer_id, rank FROM {TABLE} LIMIT 1")[0]
    assert rid == hashlib.sha256(f"{champion.version}|{M6}|{cid}|{rank}".encode()).hexdigest()[:20]
    # One audit entry for the batch, not one per row.
    entries = served["res"]["governance"].audit_log().entries(event=AuditEvent.RECOMMENDATION)
    assert len(entries) == 1 and entries[0].payload["n"] == len(rows)


def test_reasons_are_grounded_personal_and_never_protected(served):
    rows = _query(served, f"SELECT customer_id, product, reason_en, reason_ko, reason_features FROM {TABLE} "
                          "WHERE month = ? ORDER BY customer_id, rank", [M6])
    meta = served["result"].asset_materializations_for_node("recommendations")[0].metadata
    assert meta["n_reasons"].value > 0 and meta["share_grounded"].value == 1.0
    by_product: dict[str, list] = {}
    for cid, product, en, ko, feats in rows:
        assert en and ko and re.search("[가-힣]", ko)
        reasons = json.loads(feats)
        assert reasons
        for r in reasons:
            assert not set(r["concept_keys"]) & PROTECTED_CONCEPTS, r
            assert not set(r["columns"]) & PROTECTED_COLUMNS, r
            assert not re.search(r"\b(gender|age|province)\b", r["text"], re.IGNORECASE), r["text"]
        key = tuple(_shown(r) for r in reasons)
        by_product.setdefault(product, []).append((cid, key, en))
    # Two customers of the same product whose explanations differ (other concepts, or other quoted values) get
    # different text.
    pairs = [(a, b) for recs in by_product.values() for a, b in zip(recs, recs[1:]) if a[1] != b[1]]
    assert pairs
    assert all(a[2] != b[2] for a, b in pairs)
    # Quoted values are the customer's own warehouse values (grounding checked independently of the generator).
    cid, product, _, _, feats = rows[0]
    group_of = {c: g for g in FEATURE_GROUPS for c in g.columns}
    checked = 0
    for r in json.loads(feats):
        for col, val in zip(r["columns"], r["values"]):
            g = group_of[col]
            if g.name == "txn_lag_tensor":
                continue
            stored = _query(served, f'SELECT "{col}" FROM {g.table} WHERE customer_id = ? AND month = ?', [cid, M6])
            assert stored[0][0] == pytest.approx(val, rel=1e-5, abs=1e-5)
            checked += 1
    assert checked > 0


def test_reasons_cite_gate_weights_only_where_the_bundle_proved_them(served):
    """A reason may name a teacher expert only when the task's served student was distilled from that teacher and
    its gates passed the no-information control; this platform never ran ``teacher_evaluation``, so the bundle
    records that evidence as missing for every DISTILLed task and no reason names an expert."""
    champion = served["res"]["governance"].registry().champion()
    routes = {t: s.route.value for t, s in champion.students.items()}
    citation = {t: r["gate_citation"] for t, r in champion.routing.items()}
    assert set(citation) == set(routes)
    for task, c in citation.items():
        assert c["cited"] is False
        expected = "teacher_evaluation not materialized" if routes[task] == "DISTILL" else "DIRECT student"
        assert expected in c["reason"], c
    rows = _query(served, f"SELECT task, reason_features FROM {TABLE} WHERE month = ?", [M6])
    seen = {route: 0 for route in ("DISTILL", "DIRECT")}
    cited = 0
    for task, feats in rows:
        seen[routes[task]] += 1
        cited += any(r["kind"] == "gate" for r in json.loads(feats))
    assert seen["DIRECT"] > 0 and seen["DISTILL"] > 0, seen  # both routes exercised
    assert cited == 0, f"{cited} reasons name a teacher expert without proven gates"
    # The compliance report states which tasks' reasons cite gate weights (none here).
    explainability = {c["id"]: c for c in _report_json(served)["checklist"]}["FSS-EXP-01"]
    assert explainability["facts"]["tasks_citing_gate_weights"] == []


def _shown(r: dict) -> tuple:
    """What a reason's text depends on: concepts and kind, the formatted value of quantities, the 0/1 of flags,
    the gate expert and its percentage."""
    if r["kind"] == "gate":
        return ("gate", r["gate_expert"], format_percent(r["gate_weight"]))
    col, val = r["columns"][0], r["values"][0]
    shown = concept_for(col).format_value(val, "en") if r["kind"] == "quantity" else bool(val) if r["kind"] == "flag" \
        else None
    return (r["kind"], tuple(r["concept_keys"]), shown)


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.pngs = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img" and dict(attrs).get("src", "").startswith("data:image/png;base64,"):
            self.pngs += 1


def test_compliance_report_files_checklist_and_missing_evidence(served):
    data_dir = served["settings"].data_dir
    html_path = data_dir / "reports" / "compliance_report_2015-06-01.html"
    assert html_path.exists()
    parser = _Imgs()
    parser.feed(html_path.read_text(encoding="utf-8"))
    assert parser.pngs >= 1
    report = _report_json(served)
    controls = {c["id"]: c for c in report["checklist"]}
    assert len(controls) == 15
    # No rewrite and no review ran for the month: the gate and review controls say so, never "live".
    assert controls["FSS-LLM-01"]["status"] == "missing evidence"
    assert any("month_verdicts" in d for d in controls["FSS-LLM-01"]["detail"])
    assert controls["FSS-LLM-01"]["facts"]["dev"]["recall"] >= 0.98  # scored on the running rules
    assert controls["FSS-AGT-01"]["detail"] == ["missing evidence: reviews"]
    # Bootstrap mode without approval mode: human oversight is not live (approval mode off fails, and the
    # absent approval record is listed as missing evidence).
    assert controls["FSS-HUM-01"]["status"] == "fail"
    assert "missing evidence: approvals" in controls["FSS-HUM-01"]["detail"]
    # Nothing evidences a kill switch: the control says "missing evidence", never a pass.
    assert controls["FSS-HUM-02"]["status"] == "missing evidence"
    assert controls["FSS-HUM-02"]["detail"] == ["missing evidence: serving_controls.kill_switch_available"]
    assert controls["FSS-REC-01"]["status"] == "live"
    assert controls["FSS-SUIT-01"]["status"] in ("live", "missing evidence")
    assert controls["FSS-SUIT-01"]["facts"]["blocked_investment_recs"] > 0
    assert controls["FSS-DATA-01"]["status"] == "fail"  # dev pseudonymisation key in tests: honestly a failure
    ev = report["evidence"]
    assert ev["fairness"] and set(ev["fairness"]) == {t for t in ev["students"] if t.startswith("will_acquire_")}
    assert len(ev["drift_features"]) == len(FEATURE_GROUPS) and ev["drift_predictions"]
    assert ev["calibration"] and ev["gate_profile"]
    assert ev["explanations"]["n_reasons"] == ev["explanations"]["n_grounded"] > 0
    store = served["res"]["artifacts"].store()
    assert store.exists("reports/2015-06-01/compliance_report_2015-06-01.html")
    meta = served["result"].asset_materializations_for_node("compliance_report")[0].metadata
    assert meta["report"].value == str(html_path)
    assert meta["controls_total"].value == 15
    assert served["res"]["governance"].audit_log().entries(event=AuditEvent.REPORT)


def test_lineage_reaches_raw_partitions_and_run_ids(served):
    res = served["res"]
    (rid,) = _query(served, f"SELECT recommendation_id FROM {TABLE} ORDER BY recommendation_id LIMIT 1")[0]
    registry, audit = res["governance"].registry(), res["governance"].audit_log()
    with res["warehouse"].get_connection() as con:
        chain = lineage.walk(registry, audit, con, res["artifacts"].store(), rid)
        with pytest.raises(lineage.LineageError, match="no-such-id"):
            lineage.walk(registry, audit, con, res["artifacts"].store(), "no-such-id")
    bundle = registry.champion()
    assert chain["kind"] == "recommendation" and chain["bundle"]["version"] == bundle.version
    assert chain["recommendation"]["bundle_sha256_matches_registry"] is True
    assert len(chain["students"]) == 13 and all(s["stored_sha256_matches"] for s in chain["students"])
    assert chain["teacher"]["stored_sha256_matches"] is True
    months = {p["month"] for p in chain["raw_partitions"]}
    expected = {m.isoformat() for m in bundle.train_months} | {bundle.validation_month.isoformat(),
                                                                bundle.test_month.isoformat(), M6}
    assert expected <= months
    assert all(re.fullmatch("[0-9a-f]{64}", p["content_hash"]) for p in chain["raw_partitions"]
               if p["table"] != "raw.transactions" or p["rows"])
    # Raw ingest recorded each partition's hash in the audit log; today's partitions still match it.
    assert all(p["matches_ingest"] is True for p in chain["raw_partitions"]), chain["raw_partitions"][:3]
    run_ids = {r["run_id"] for r in chain["run_ids"]}
    assert bundle.run_id in run_ids
    assert served["result"].run_id in run_ids  # the recommendation batch's run
    text = lineage.render_text(chain)
    assert rid in text and bundle.run_id in text and bundle.test_month.isoformat() in text


def test_tampered_audit_row_fails_verify_and_the_report(served):
    """The platform is shared by the session (the serving tests copy it later), so the tampered row is put back:
    a chain left broken here made every later `audit verify` on a copy fail."""
    res, settings = served["res"], served["settings"]
    audit = res["governance"].audit_log()
    assert audit.verify().ok
    with duckdb.connect(str(settings.governance_db)) as con:
        (original,) = con.execute("SELECT payload FROM audit_log WHERE seq = 2").fetchone()
        con.execute("UPDATE audit_log SET payload = '{\"tampered\":true}' WHERE seq = 2")
    try:
        verdict = audit.verify()
        assert not verdict.ok and verdict.first_broken_seq == 2
        assert dg.materialize([compliance_report], partition_key=M6, resources=res, instance=served["instance"],
                              run_config=REPORT_CFG).success
        controls = {c["id"]: c for c in _report_json(served)["checklist"]}
        assert controls["FSS-REC-01"]["status"] == "fail"
        assert any("entry 2" in d for d in controls["FSS-REC-01"]["detail"])
    finally:
        # The platform is shared by the whole session (test_serving copies it): leave its chain intact, or every
        # later writer refuses to extend it.
        with duckdb.connect(str(settings.governance_db)) as con:
            con.execute("UPDATE audit_log SET payload = ? WHERE seq = 2", [original])
    assert audit.verify().ok

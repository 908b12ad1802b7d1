"""Monthly compliance report: controls are live only on evidence, Annex IV / model card structure, HTML + JSON."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from ple_platform.core.features.spec import EXPERTS, FEATURE_GROUPS
from ple_platform.core.governance.compliance.report import (
    ANNEX_IV_TITLES,
    CONTROLS,
    MODEL_CARD_SECTIONS,
    ReportEvidence,
    ReportEvidenceError,
    build_report,
    calibration_ece,
    render_html,
    summary_metadata,
    write_report,
)
from ple_platform.core.tasks.spec import TASKS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "wbr", "source"}
BINARY = [t.name for t in TASKS if t.kind == "binary"]


def _groups(names, airs, n=400):
    return [{"group": g, "n": n, "selection_rate": 0.3 * a, "air": a, "air_ci": [a - 0.05, min(a + 0.05, 1.2)],
             "spd": 0.3 * a - 0.3, "spd_ci": [-0.1, 0.05], "tpr": 0.5, "eo_gap": 0.0, "status": "pass"}
            for g, a in zip(names, airs, strict=True)]


def _fairness_dict(province_groups=None):
    attrs = {
        "age_band": {"status": "pass", "min_air": 0.9, "reference_group": "30-44",
                     "groups": _groups(["18-29", "30-44", "45-59", "60+"], [0.9, 1.0, 0.95, 0.92])},
        "gender": {"status": "pass", "min_air": 0.97, "reference_group": "F",
                   "groups": _groups(["F", "M"], [1.0, 0.97])},
        "province": {"status": "pass", "min_air": 0.85, "reference_group": "MADRID",
                     "groups": province_groups or _groups(["MADRID", "BARCELONA", "SEVILLA"], [1.0, 0.85, 0.9])},
    }
    return {"status": "pass", **attrs}


def _drift_rows(names, psi=0.02):
    return [{"name": n, "mean_psi": psi / 2, "max_psi": psi, "share_psi_over_0_2": 0.0, "max_ks": 0.03,
             "worst_column": f"{n}_c0", "status": "ok"} for n in names]


def full_evidence() -> ReportEvidence:
    gate = {t.name: dict(zip(EXPERTS, np.full(len(EXPERTS), 1 / len(EXPERTS)), strict=True)) for t in TASKS}
    return ReportEvidence(
        month="2016-01-01", model_version="v2", bundle_sha256="b" * 64, provider="Example Bank",
        teacher={"code_version": "abc123", "checkpoint_sha256": "c" * 64, "n_params": 1_234_567,
                 "train_months": [f"2015-{m:02d}-01" for m in range(1, 11)], "validation_month": "2015-11-01",
                 "test_month": "2015-12-01", "config": {"layers": 2, "experts": list(EXPERTS)}},
        students={t.name: {"route": "DISTILL" if i % 3 else "DIRECT", "sha256": f"{i:064d}", "n_features": 100 + i,
                           "fidelity": {"spearman": 0.93, "passed": True, "failures": []}}
                  for i, t in enumerate(TASKS)},
        task_metrics={t.name: {"metric": t.primary_metric, "value": 0.7, "lo": 0.68, "hi": 0.72} for t in TASKS},
        fairness={"will_acquire_investments": _fairness_dict(), "top7": _fairness_dict()},
        drift_features=_drift_rows([g.name for g in FEATURE_GROUPS]),
        drift_predictions=_drift_rows([t.name for t in TASKS], psi=0.05),
        calibration={t: [{"mean_predicted": p, "observed_rate": min(p * 1.1, 1.0), "count": 100}
                         for p in (0.05, 0.2, 0.5, 0.8)] for t in BINARY},
        gate_profile=gate,
        data={"source": "synthetic", "row_counts": {"customers": 5000, "holdings": 5000, "transactions": 120_000},
              "raw_hashes": {"customers/2016-01-01": "d" * 64}, "feature_hashes": {"demographics": "e" * 64},
              "pseudonymisation": {"enabled": True, "key_source": "env"}},
        audit={"verify": {"ok": True, "n_entries": 42, "first_broken_seq": None, "reason": "chain intact"},
               "n_entries": 42},
        approvals=[{"version": "v2", "approver": "kim.validator", "approved_at": "2016-01-03T10:00:00",
                    "evidence_sha256": "f" * 64, "note": "reviewed"}],
        decision={"outcome": "promote", "reasons": ["mean AUC +0.01"], "evidence_sha256": "f" * 64,
                  "version": "v2", "champion_version": "v1"},
        champion_history=[{"version": "v1", "kind": "bootstrap"}, {"version": "v2", "kind": "promotion"}],
        lineage={"run_ids": {"ple_teacher": "run-1", "compliance_report": "run-2"}},
        serving_controls={"suitability_rule_active": True, "blocked_investment_recs": 17, "opt_out_supported": True,
                          "kill_switch_available": True, "kill_switch_engaged": False, "ai_disclosure": True},
        explanations={"n_reasons": 500, "n_grounded": 500, "languages": ["en", "ko"]},
        human_oversight={"approval_required": True},
        # Synthetic figures that meet the goals (the real ones are scored in the tests below).
        reason_gate={"evaluation": {"rules": 20, "cases_sha256": "a" * 64, "goals": {"recall": 0.98, "fpr": 0.05},
                                    "splits": {s: {"n_violation": 30, "n_clean": 20, "recall": 0.99, "recall_any": 0.99,
                                                   "fpr": 0.0} for s in ("dev", "holdout")}},
                     "month_verdicts": {"verdicts": 10, "passed": 8, "cache_hits": 2, "rules_only": 8, "failed": 2,
                                        "failed_by_rule": {"pii_phone": 2}, "fallbacks": {"gate": 2}}},
        reviews={k: {"kind": k, "verdict": "PASS", "mode": "rules only", "votes": [], "findings": []}
                 for k in ("ops", "audit")},
        generated_at="2016-02-01T00:00:00+00:00",
    )


def _controls(report):
    return {c["id"]: c for c in report["checklist"]}


class _Parser(HTMLParser):
    """Counts tags, checks nesting of non-void elements, collects <img> sources and <meta> attributes."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.counts: dict[str, int] = {}
        self.imgs: list[str] = []
        self.meta: list[dict[str, str]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "meta":
            self.meta.append(a)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def _parse(page: str) -> _Parser:
    p = _Parser()
    p.feed(page)
    p.close()
    return p


@pytest.fixture(scope="module")
def full():
    ev = full_evidence()
    report = build_report(ev)
    return ev, report, render_html(report, ev)


def test_full_evidence_every_control_live_and_summary_ok(full):
    _, report, _ = full
    statuses = {c["id"]: (c["status"], c["detail"]) for c in report["checklist"]}
    assert all(s == "live" for s, _ in statuses.values()), statuses
    s = report["summary"]
    assert s["overall_status"] == "ok" and s["attention"] == []
    assert (s["controls_live"], s["controls_fail"], s["controls_missing"]) == (len(CONTROLS), 0, 0)
    assert s["fairness_status"] == "pass" and s["drift_max_status"] == "ok"
    assert s["max_psi"] == pytest.approx(0.05)


def test_html_parses_and_embeds_decodable_plots(full):
    _, _, page = full
    p = _parse(page)
    assert p.errors == [] and p.stack == []
    assert {"charset": "utf-8"} in p.meta
    assert p.counts["html"] == p.counts["head"] == p.counts["body"] == 1
    pngs = [s for s in p.imgs if s.startswith("data:image/png;base64,")]
    # 2 fairness selections + drift heatmap + calibration + gate profile
    assert len(pngs) == len(p.imgs) == 5
    for src in pngs:
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_MAGIC)
    assert "missing evidence: drift" not in page
    assert "설명가능성" in page  # Korean control titles are in the page, UTF-8


def test_json_round_trips_and_files_written(full, tmp_path):
    _, report, page = full
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    json_path, html_path = write_report(report, page, tmp_path / "reports")
    assert json_path.name == "compliance_report_2016-01-01.json" and html_path.suffix == ".html"
    assert json.loads(json_path.read_text(encoding="utf-8")) == report
    assert html_path.read_text(encoding="utf-8") == page
    meta = summary_metadata(report, json_path, html_path)
    assert meta["overall_status"] == "ok" and meta["controls_live"] == len(CONTROLS)
    assert meta["html_path"] == str(html_path) and meta["max_psi"] == pytest.approx(0.05)
    assert all(isinstance(v, (str, int, float)) for v in meta.values())


def test_missing_audit_evidence_is_missing_not_pass():
    ev = dataclasses.replace(full_evidence(), audit=None)
    report = build_report(ev)
    c = _controls(report)
    assert c["FSS-REC-01"]["status"] == "missing evidence"
    assert c["FSS-REC-01"]["detail"] == ["missing evidence: audit"]
    assert report["summary"]["overall_status"] == "attention"
    assert report["summary"]["controls_missing"] == 1
    assert any(a.startswith("FSS-REC-01") for a in report["summary"]["attention"])
    # the same evidence otherwise: every other control stays live
    assert all(x["status"] == "live" for k, x in c.items() if k != "FSS-REC-01")


def test_failing_audit_chain_is_fail():
    ev = full_evidence()
    ev.audit = {"verify": {"ok": False, "n_entries": 42, "first_broken_seq": 17,
                           "reason": "entry 17: hash mismatch (row edited)"}, "n_entries": 42}
    c = _controls(build_report(ev))["FSS-REC-01"]
    assert c["status"] == "fail"
    assert "entry 17: hash mismatch" in c["detail"][0] and "17" in c["detail"][0]
    # a verify result without its verdict is not a pass either
    ev.audit = {"verify": {"n_entries": 42}, "n_entries": 42}
    assert _controls(build_report(ev))["FSS-REC-01"]["status"] == "missing evidence"


def test_empty_evidence_no_control_live_and_plots_become_paragraphs():
    ev = ReportEvidence()
    report = build_report(ev)
    assert {c["status"] for c in report["checklist"]} == {"missing evidence"}
    assert report["summary"]["overall_status"] == "attention"
    assert report["summary"]["fairness_status"] == "missing evidence"
    assert report["summary"]["drift_max_status"] == "missing evidence"
    assert {p["status"] for p in report["annex_iv"]["parts"]} == {"missing evidence"}
    card = {s["section"]: s["status"] for s in report["model_card"]}
    # only the design declarations are filled; everything measured is missing
    assert card.pop("Intended use") == "filled" and card.pop("Metrics") == "filled"
    assert set(card.values()) == {"missing evidence"}
    page = render_html(report)  # evidence read back from the report itself
    p = _parse(page)
    assert p.errors == [] and p.imgs == []
    for what in ("missing evidence: fairness results", "missing evidence: drift of feature groups",
                 "missing evidence: calibration bins", "missing evidence: gate weights per task"):
        assert f'<p class="missing">{what}' in page


def test_annex_iv_has_exactly_nine_parts_and_declaration_needs_signature(full):
    _, report, _ = full
    parts = report["annex_iv"]["parts"]
    assert [p["part"] for p in parts] == list(range(1, 10))
    assert [p["title"] for p in parts] == list(ANNEX_IV_TITLES)
    status = {p["part"]: p["status"] for p in parts}
    assert status[8] == "missing evidence"
    assert "requires provider signature — missing evidence" in parts[7]["text"]
    # provider-only items cap the risk-management process and the standards list at partial
    assert status[5] == status[7] == "partial"
    assert all(status[i] == "live" for i in (1, 2, 3, 4, 6, 9))
    # without a provider name part 1 is only partial
    report2 = build_report(dataclasses.replace(full_evidence(), provider=None))
    assert report2["annex_iv"]["parts"][0]["status"] == "partial"
    assert "missing evidence: provider" in report2["annex_iv"]["parts"][0]["evidence_missing"]


def test_model_card_has_the_nine_mitchell_sections(full):
    _, report, page = full
    assert [s["section"] for s in report["model_card"]] == list(MODEL_CARD_SECTIONS)
    assert len(MODEL_CARD_SECTIONS) == 9
    assert all(s["status"] == "filled" for s in report["model_card"]), report["model_card"]
    caveats = report["model_card"][-1]
    assert caveats["facts"]["direct_routed_tasks"] == sorted(t.name for i, t in enumerate(TASKS) if i % 3 == 0)
    for title in MODEL_CARD_SECTIONS:
        assert f"<h3>{title} " in page
    # a missing item is named in its section
    card = build_report(dataclasses.replace(full_evidence(), calibration=None))["model_card"]
    quant = next(s for s in card if s["section"] == "Quantitative analyses")
    assert quant["status"] == "partial" and "missing evidence: calibration bins" in quant["missing"]


def test_evidence_strings_are_escaped():
    ev = full_evidence()
    evil = "<script>alert('x')</script>"
    ev.model_version = evil
    ev.fairness = {"top7": _fairness_dict(_groups(["MADRID", evil], [1.0, 0.9]))}
    ev.decision = {**ev.decision, "reasons": [evil]}
    page = render_html(build_report(ev), ev)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page
    assert _parse(page).errors == []


def test_customer_supplied_strings_are_escaped_in_text_and_attributes():
    """A province name comes from the bank's landing files; one carrying markup must reach the page as text, both
    in table cells and in attribute values (a selection name is the plot's ``alt``). The template engine's
    autoescape does this; a control page rendered with the same strings unescaped would hold the tag."""
    ev = full_evidence()
    province = '"><script>alert(document.cookie)</script>'
    ev.fairness = {**ev.fairness, f"top7{province}": _fairness_dict(_groups(["MADRID", province], [1.0, 0.9]))}
    page = render_html(build_report(ev), ev)
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;alert(document.cookie)&lt;/script&gt;") >= 3  # h3, alt, group cell
    assert 'alt="fairness top7&#34;&gt;&lt;script&gt;' in page
    p = _parse(page)
    assert p.errors == [] and len(p.imgs) == 6  # one plot more; the quote did not close the attribute early
    control = page.replace("&lt;script&gt;", "<script>")
    assert "<script" in control.lower()  # the assertion above can fail


def test_fairness_fail_insufficient_and_missing_attribute():
    ev = full_evidence()
    d = _fairness_dict()
    d["gender"] = {"status": "fail", "min_air": 0.62, "reference_group": "M",
                   "groups": _groups(["F", "M"], [0.62, 1.0])}
    d["gender"]["groups"][0]["status"] = "fail"
    ev.fairness = {"top7": d}
    report = build_report(ev)
    c = _controls(report)["FSS-FAIR-01"]
    assert c["status"] == "fail" and "gender fails the four-fifths rule" in c["detail"][0]
    assert "'F'" in c["detail"][0] and "0.62" in c["detail"][0]
    assert report["summary"]["fairness_status"] == "fail"

    d = _fairness_dict()
    d["province"] = {"status": "insufficient evidence", "min_air": None, "reference_group": None,
                     "groups": [{**g, "status": "insufficient evidence"} for g in _groups(["CEUTA"], [1.0], n=12)]}
    ev.fairness = {"top7": d}
    report = build_report(ev)
    assert _controls(report)["FSS-FAIR-01"]["status"] == "missing evidence"
    assert report["summary"]["fairness_status"] == "insufficient evidence"

    d = _fairness_dict()
    del d["province"]
    ev.fairness = d  # a bare FairnessResult.to_dict() is read as one selection
    c = _controls(build_report(ev))["FSS-FAIR-01"]
    assert c["status"] == "missing evidence" and "all: province was not evaluated" in c["detail"][0]

    d = _fairness_dict()
    for g in d["age_band"]["groups"]:
        g["air_ci"] = None  # a "pass" without bootstrap intervals is not evidence of monitoring with CIs
    ev.fairness = {"top7": d}
    c = _controls(build_report(ev))["FSS-FAIR-01"]
    assert c["status"] == "missing evidence" and "no bootstrap AIR interval" in c["detail"][0]


def test_data_oversight_and_change_criteria():
    ev = full_evidence()
    ev.data = copy.deepcopy(ev.data)
    ev.data["pseudonymisation"]["key_source"] = "dev_default"
    assert _controls(build_report(ev))["FSS-DATA-01"]["status"] == "fail"
    ev.data["pseudonymisation"] = {"enabled": False}
    c = _controls(build_report(ev))["FSS-DATA-01"]
    assert c["status"] == "fail" and "not pseudonymised" in c["detail"][0]

    ev = full_evidence()
    ev.human_oversight = {"approval_required": False}
    c = _controls(build_report(ev))["FSS-HUM-01"]
    assert c["status"] == "fail" and "approval mode is off" in c["detail"][0]

    ev = full_evidence()
    ev.approvals = [{**ev.approvals[0], "evidence_sha256": "0" * 64}]
    c = _controls(build_report(ev))["FSS-HUM-01"]
    assert c["status"] == "fail" and "different evidence" in c["detail"][0]

    ev = full_evidence()
    ev.approvals = [{**ev.approvals[0], "version": "v1"}]  # approvals exist, but not for this version
    c = _controls(build_report(ev))["FSS-HUM-01"]
    assert c["status"] == "missing evidence" and "'v2'" in c["detail"][0]

    ev = full_evidence()
    ev.serving_controls = {**ev.serving_controls, "suitability_rule_active": False}
    ev.serving_controls.pop("ai_disclosure")
    c = _controls(build_report(ev))
    assert c["FSS-SUIT-01"]["status"] == "fail"
    assert c["FSS-TRN-01"]["status"] == "missing evidence"
    assert c["FSS-TRN-01"]["detail"] == ["missing evidence: serving_controls.ai_disclosure"]

    ev = full_evidence()
    ev.explanations = {"n_reasons": 500, "n_grounded": 480, "languages": ["en"]}
    c = _controls(build_report(ev))["FSS-EXP-01"]
    assert c["status"] == "fail" and c["detail"][0].startswith("20 of 500 reasons")

    ev = full_evidence()
    ev.champion_history = []  # empty is absent, never a pass
    assert _controls(build_report(ev))["FSS-CHG-01"]["status"] == "missing evidence"


def test_validation_split_and_fidelity():
    ev = full_evidence()
    ev.teacher = {**ev.teacher, "test_month": "2015-06-01"}  # inside the training months: not out-of-time
    c = _controls(build_report(ev))["FSS-VAL-01"]
    assert c["status"] == "fail" and "not out-of-time" in c["detail"][0]

    ev = full_evidence()
    ev.task_metrics = {k: v for k, v in ev.task_metrics.items() if k != "spend_change"}
    ev.task_metrics["churn_signal"] = {"auc": {"value": 0.8, "lo": None, "hi": None}}  # evaluate.py shape
    c = _controls(build_report(ev))["FSS-VAL-01"]
    assert c["status"] == "missing evidence"
    assert c["detail"] == ["missing evidence: out-of-time primary metric for ['spend_change']",
                           "missing evidence: confidence interval for ['churn_signal']"]

    ev = full_evidence()
    ev.students = copy.deepcopy(ev.students)
    ev.students["next_mcc"]["fidelity"] = {"passed": False, "failures": ["top-1 agreement 0.41 < 0.7"]}
    c = _controls(build_report(ev))["FSS-VAL-02"]
    assert c["status"] == "fail" and c["detail"] == ["next_mcc: student fidelity checks failed "
                                                     "(top-1 agreement 0.41 < 0.7)"]


def test_drift_alerts_and_coverage():
    ev = full_evidence()
    ev.drift_features = copy.deepcopy(ev.drift_features)
    ev.drift_features[2] = {**ev.drift_features[2], "max_psi": 0.31, "status": "alert"}
    report = build_report(ev)
    c = _controls(report)["FSS-ROB-01"]
    assert c["status"] == "fail" and FEATURE_GROUPS[2].name in c["detail"][0] and "0.31" in c["detail"][0]
    assert report["summary"]["drift_max_status"] == "alert" and report["summary"]["max_psi"] == pytest.approx(0.31)

    # rows without a status fall back to the PSI thresholds 0.1 / 0.25
    ev = full_evidence()
    ev.drift_predictions = [{k: v for k, v in r.items() if k != "status"} for r in ev.drift_predictions]
    ev.drift_predictions[0]["max_psi"] = 0.12
    report = build_report(ev)
    assert report["drift"]["predictions"]["status"] == "warn"
    assert report["drift"]["predictions"]["warnings"] == [TASKS[0].name]
    assert _controls(report)["FSS-ROB-01"]["status"] == "live"

    ev = full_evidence()
    ev.drift_predictions = ev.drift_predictions[:-1]
    c = _controls(build_report(ev))["FSS-ROB-01"]
    assert c["status"] == "missing evidence" and TASKS[-1].name in c["detail"][0]


def test_calibration_ece_by_hand():
    # (100·|0.3 − 0.1| + 300·|0.5 − 0.6|) / 400 = (20 + 30) / 400
    assert calibration_ece([(0.1, 0.3, 100), (0.6, 0.5, 300)]) == pytest.approx(0.125)
    ev = full_evidence()
    ev.calibration = {"churn_signal": [{"mean_predicted": 0.1, "observed_rate": 0.3, "count": 100},
                                       {"mean_predicted": 0.6, "observed_rate": 0.5, "count": 300}]}
    report = build_report(ev)
    assert report["calibration"]["churn_signal"] == {"ece": pytest.approx(0.125), "n_bins": 2, "n": 400}


def test_bad_evidence_raises_naming_field():
    ev = full_evidence()
    ev.calibration = {"churn_signal": [(0.1, 1.5, 10)]}
    with pytest.raises(ReportEvidenceError, match=r"calibration\.churn_signal\[0\]\.observed_rate.*outside"):
        build_report(ev)
    with pytest.raises(ReportEvidenceError, match=r"task_metrics: unknown tasks \['not_a_task'\]"):
        build_report(dataclasses.replace(full_evidence(), task_metrics={"not_a_task": {"value": 1.0}}))
    with pytest.raises(ReportEvidenceError, match=r"month: '2016/01' is not a month"):
        build_report(dataclasses.replace(full_evidence(), month="2016/01"))
    rows = [{**r, "status": "purple"} for r in full_evidence().drift_features]
    with pytest.raises(ReportEvidenceError, match=r"drift_features\[0\]\.status: unknown drift status 'purple'"):
        build_report(dataclasses.replace(full_evidence(), drift_features=rows))
    with pytest.raises(ReportEvidenceError, match=r"students\.churn_signal\.route"):
        build_report(dataclasses.replace(full_evidence(), students={"churn_signal": {"route": "MAYBE"}}))
    with pytest.raises(ReportEvidenceError, match="unknown fields"):
        ReportEvidence.from_dict({"montth": "2016-01"})
    assert issubclass(ReportEvidenceError, ValueError)


def test_numpy_values_are_serialised_and_evidence_hash_is_stable():
    ev = full_evidence()
    ev.audit = {"verify": {"ok": np.bool_(True), "n_entries": np.int64(42)}, "n_entries": np.int64(42)}
    ev.task_metrics = {**ev.task_metrics, "churn_signal": {"value": np.float32(0.75), "lo": np.nan, "hi": 0.8}}
    report = build_report(ev)
    text = json.dumps(report, allow_nan=False)  # NaN became null
    assert json.loads(text)["evidence"]["task_metrics"]["churn_signal"]["lo"] is None
    assert _controls(report)["FSS-REC-01"]["status"] == "live"
    later = dataclasses.replace(ev, generated_at="2030-01-01T00:00:00+00:00")
    assert build_report(later)["evidence_sha256"] == report["evidence_sha256"]
    assert build_report(dataclasses.replace(ev, model_version="v3"))["evidence_sha256"] != report["evidence_sha256"]


def test_contract_with_fairness_and_drift_outputs():
    """The dicts of fairness.FairnessResult.to_dict() and drift.drift_table are read as they are produced."""
    from ple_platform.core.governance.compliance.drift import drift_table
    from ple_platform.core.governance.compliance.fairness import age_band, fairness_report

    rng = np.random.default_rng(3)
    n = 3000
    groups = {"age_band": age_band(rng.integers(18, 90, n).astype(float)),
              "gender": rng.choice(np.array(["F", "M"]), n),
              "province": rng.choice(np.array(["MADRID", "BARCELONA", "SEVILLA", "VALENCIA"]), n)}
    unbiased = fairness_report(rng.random(n) < 0.3, groups, n_boot=50).to_dict()
    biased_sel = (rng.random(n) < 0.3) & ~((groups["gender"] == "F") & (rng.random(n) < 0.6))
    biased = fairness_report(biased_sel, groups, n_boot=50).to_dict()

    names = [g.name for g in FEATURE_GROUPS]
    ref = {g: rng.normal(size=(400, 2)) for g in names}
    cur = {g: rng.normal(size=(400, 2)) for g in names}
    cur[names[0]] = cur[names[0]] + 1.0  # a shifted group
    feature_rows = drift_table(ref, cur, {g: ("a", "b") for g in names})
    task_names = [t.name for t in TASKS]
    pred_rows = drift_table({t: rng.random((400, 1)) for t in task_names},
                            {t: rng.random((400, 1)) for t in task_names}, {t: (t,) for t in task_names})

    ev = dataclasses.replace(full_evidence(), fairness={"unbiased": unbiased}, drift_features=feature_rows,
                             drift_predictions=pred_rows)
    report = build_report(ev)
    c = _controls(report)
    assert unbiased["status"] == "pass" and c["FSS-FAIR-01"]["status"] == "live", c["FSS-FAIR-01"]["detail"]
    assert report["drift"]["features"]["alerts"] == [names[0]]
    assert c["FSS-ROB-01"]["status"] == "fail" and names[0] in c["FSS-ROB-01"]["detail"][0]

    ev.fairness = {"biased": biased}
    c = _controls(build_report(ev))["FSS-FAIR-01"]
    assert biased["status"] == "fail" and c["status"] == "fail" and "biased: gender" in c["detail"][0]
    page = render_html(build_report(ev), ev)
    p = _parse(page)
    assert p.errors == [] and len(p.imgs) == 4  # one fairness selection, drift, calibration, gate profile

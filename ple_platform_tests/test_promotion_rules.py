"""Promotion rules (SPEC §7): promote / reject / bootstrap / await_approval from per-task primary metrics, blocking
checks, fairness verdicts and approval records. Pure functions on small hand-built evidence; well under a second."""

import hashlib
import json
import math

import numpy as np
import pytest

from ple_platform.core.governance.compliance import fairness as fa
from ple_platform.core.governance.promotion.rules import (
    Approval,
    PromotionInputError,
    PromotionPolicy,
    TaskComparison,
    comparisons_from_evaluation,
    decide,
    evidence_sha256,
)
from ple_platform.core.tasks.spec import TASKS, TASKS_BY_NAME

CHAMPION = {"auc": 0.75, "macro_f1": 0.40, "mae": 0.20}
GREEN = {"fidelity_auc_gap": True, "rank_correlation": True, "calibration": True}
FAIR = {a: {"status": "pass", "min_air": 0.92} for a in fa.PROTECTED_ATTRIBUTES}


def comparisons(improve: float = 0.01, overrides: dict[str, float] | None = None,
                ci: tuple[float, float] | None = None, champion: bool = True) -> list[TaskComparison]:
    """Every task improves by ``improve`` in its primary metric (MAE goes *down*); ``overrides`` set a task's
    signed improvement; ``ci`` is the signed CI of every task (converted to raw challenger - champion)."""
    out = []
    for spec in TASKS:
        m = spec.primary_metric
        hib = m != "mae"
        delta = (overrides or {}).get(spec.name, improve)
        raw = delta if hib else -delta
        raw_ci = None if ci is None else (ci if hib else (-ci[1], -ci[0]))
        out.append(TaskComparison(spec.name, m, hib, CHAMPION[m] + raw, CHAMPION[m] if champion else None, raw_ci))
    return out


POLICY = PromotionPolicy()


# ------------------------------------------------------------------------------------------------ promote / reject


def test_better_challenger_promotes_with_hand_computed_mean_improvement():
    d = decide(POLICY, "v2", "v1", comparisons(0.01), GREEN, FAIR)
    assert d.outcome == "promote"
    n_auc = sum(t.primary_metric == "auc" for t in TASKS)
    n_f1 = sum(t.primary_metric == "macro_f1" for t in TASKS)
    n_mae = sum(t.primary_metric == "mae" for t in TASKS)
    assert (n_auc, n_f1, n_mae) == (7, 2, 4)
    expected = (7 * 0.01 / 0.75 + 2 * 0.01 / 0.40 + 4 * 0.01 / 0.20) / 13
    assert d.evidence["summary"]["mean_relative_improvement"] == pytest.approx(expected)
    assert any(f"{expected:+.2%}" in r for r in d.reasons)
    assert any("all 3 blocking checks are green" in r for r in d.reasons)
    assert d.evidence_sha256 == evidence_sha256(d.evidence)
    assert json.loads(json.dumps(d.to_dict(), allow_nan=False)) == d.to_dict()


def test_lower_mae_counts_as_improvement_and_higher_mae_as_degradation():
    only_mae_better = {t.name: 0.0 for t in TASKS if t.primary_metric != "mae"}
    d = decide(POLICY, "v2", "v1", comparisons(0.01, only_mae_better), GREEN, FAIR)
    assert d.outcome == "promote"  # MAE 0.20 -> 0.19 on 4 tasks: +5% each
    assert d.evidence["summary"]["mean_relative_improvement"] == pytest.approx(4 * 0.05 / 13)
    worse = decide(POLICY, "v2", "v1", comparisons(0.02, {"spend_change": -0.01}), GREEN, FAIR)
    assert worse.outcome == "reject"
    (reason,) = worse.reasons
    assert "'spend_change'" in reason and "mae rose from 0.2000 to 0.2100" in reason and "0.0050" in reason


def test_one_task_worse_beyond_tolerance_rejects_naming_the_task():
    d = decide(POLICY, "v2", "v1", comparisons(0.02, {"churn_signal": -0.01}), GREEN, FAIR)
    assert d.outcome == "reject"
    assert d.reasons == ["task 'churn_signal': auc fell from 0.7500 to 0.7400 (-0.0100), worse than the tolerance "
                         "of 0.0050"]
    within = decide(POLICY, "v2", "v1", comparisons(0.02, {"churn_signal": -0.004}), GREEN, FAIR)
    assert within.outcome == "promote"
    assert any("least favourable: 'churn_signal'" in r for r in within.reasons)
    # a per-task tolerance override tightens that task only
    strict = PromotionPolicy(task_tolerances={"churn_signal": 0.001})
    assert decide(strict, "v2", "v1", comparisons(0.02, {"churn_signal": -0.004}), GREEN, FAIR).outcome == "reject"


def test_no_mean_improvement_rejects():
    d = decide(POLICY, "v2", "v1", comparisons(0.0), GREEN, FAIR)
    assert d.outcome == "reject"
    assert d.reasons == ["mean relative improvement of the primary metrics over 13 tasks is +0.00% "
                         "(required: above +0.00%)"]
    bar = PromotionPolicy(min_mean_improvement=0.05)  # 5%: the 0.01 improvements average ~2.3%
    assert decide(bar, "v2", "v1", comparisons(0.01), GREEN, FAIR).outcome == "reject"


def test_failed_or_unevaluated_blocking_check_rejects():
    d = decide(POLICY, "v2", "v1", comparisons(), {**GREEN, "calibration": False}, FAIR)
    assert d.outcome == "reject" and d.reasons == ["blocking check 'calibration' failed"]
    d = decide(POLICY, "v2", "v1", comparisons(), {**GREEN, "calibration": None}, FAIR)
    assert d.outcome == "reject" and d.reasons == ["blocking check 'calibration' was not evaluated (missing evidence)"]
    d = decide(POLICY, "v2", "v1", comparisons(), {}, FAIR)
    assert d.outcome == "reject" and "missing evidence" in d.reasons[0]
    lax = PromotionPolicy(require_checks_green=False)
    assert decide(lax, "v2", "v1", comparisons(), {"calibration": False}, FAIR).outcome == "promote"


def test_missing_metric_rejects_as_missing_evidence():
    tasks = [t for t in comparisons() if t.task != "next_mcc"]
    d = decide(POLICY, "v2", "v1", tasks, GREEN, FAIR)
    assert d.outcome == "reject"
    assert "task 'next_mcc': no macro_f1 comparison was supplied (missing evidence)" in d.reasons
    tasks = [TaskComparison("top_mcc_shift", "auc", True, float("nan"), 0.75) if t.task == "top_mcc_shift" else t
             for t in comparisons()]
    d = decide(POLICY, "v2", "v1", tasks, GREEN, FAIR)
    assert d.outcome == "reject" and any("'top_mcc_shift'" in r and "missing evidence" in r for r in d.reasons)
    tasks = [TaskComparison("churn_signal", "auc", True, 0.8, None) if t.task == "churn_signal" else t
             for t in comparisons()]
    d = decide(POLICY, "v2", "v1", tasks, GREEN, FAIR)
    assert d.reasons == ["task 'churn_signal': the champion's auc is missing (missing evidence)"]


def test_fairness_fail_floor_and_insufficient_evidence_reject():
    d = decide(POLICY, "v2", "v1", comparisons(), GREEN, {**FAIR, "gender": {"status": "fail", "min_air": 0.667}})
    assert d.outcome == "reject"
    assert d.reasons == ["fairness over 'gender' failed the four-fifths rule (lowest adverse-impact ratio 0.667)"]
    strict = PromotionPolicy(fairness_air_floor=0.95)  # the report passed at 0.8, the policy asks more
    d = decide(strict, "v2", "v1", comparisons(), GREEN, FAIR)
    assert d.outcome == "reject" and len(d.reasons) == 3 and "0.920 is below the policy floor 0.95" in d.reasons[0]
    thin = {**FAIR, "province": {"status": "insufficient evidence", "min_air": None}}
    d = decide(POLICY, "v2", "v1", comparisons(), GREEN, thin)
    assert d.outcome == "reject" and "'province' has insufficient evidence" in d.reasons[0]
    allow = PromotionPolicy(allow_insufficient_fairness=True)
    d = decide(allow, "v2", "v1", comparisons(), GREEN, thin)
    assert d.outcome == "promote" and any("accepted because the policy" in r for r in d.reasons)
    d = decide(POLICY, "v2", "v1", comparisons(), GREEN, {"gender": FAIR["gender"]})
    assert d.outcome == "reject"
    assert "fairness over 'age_band' was not evaluated (missing evidence)" in d.reasons


def test_fairness_report_summary_feeds_decide():
    r = np.random.default_rng(0)
    gender = r.choice(["F", "M"], 4000)
    sel = fa.selection_from_scores(r.random(4000) + 0.4 * (gender == "M"), 0.2)
    report = fa.fairness_report(sel, {"gender": gender, "age_band": None, "province": None}, n_boot=0)
    d = decide(POLICY, "v2", "v1", comparisons(), GREEN, report.summary())
    assert d.outcome == "reject"
    assert any("'gender' failed the four-fifths rule" in x for x in d.reasons)
    assert any("'province' has missing evidence" in x for x in d.reasons)


def test_significance_rule():
    sig = PromotionPolicy(require_significance=True)
    assert decide(sig, "v2", "v1", comparisons(0.01, ci=(0.002, 0.02)), GREEN, FAIR).outcome == "promote"
    d = decide(sig, "v2", "v1", comparisons(0.01, ci=(-0.01, 0.03)), GREEN, FAIR)
    assert d.outcome == "reject" and "not significant" in d.reasons[0]
    d = decide(sig, "v2", "v1", comparisons(0.01), GREEN, FAIR)  # no CIs at all
    assert d.outcome == "reject" and len(d.reasons) == 13 and all("missing evidence" in x for x in d.reasons)
    tasks = [TaskComparison("spend_change", "mae", False, 0.201, 0.2, (0.0005, 0.0015)) if t.task == "spend_change"
             else t for t in comparisons(0.01, ci=(0.002, 0.02))]  # MAE significantly higher: worse
    d = decide(sig, "v2", "v1", tasks, GREEN, FAIR)
    assert d.outcome == "reject"
    assert d.reasons == ["task 'spend_change': significantly worse, CI of the signed mae difference "
                         "[-0.0015, -0.0005] lies below 0"]


# ------------------------------------------------------------------------------------------------ bootstrap


def test_first_bundle_bootstraps_only_with_green_checks_fair_and_measured():
    first = comparisons(champion=False)
    d = decide(POLICY, "v1", None, first, GREEN, FAIR)
    assert d.outcome == "bootstrap" and "no champion exists: bootstrap rule" in d.reasons[0]
    assert d.evidence["champion_version"] is None
    assert decide(POLICY, "v1", None, first, {**GREEN, "rank_correlation": False}, FAIR).outcome == "reject"
    unfair = {**FAIR, "age_band": {"status": "fail", "min_air": 0.5}}
    assert decide(POLICY, "v1", None, first, GREEN, unfair).outcome == "reject"
    d = decide(POLICY, "v1", None, first[1:], GREEN, FAIR)
    assert d.outcome == "reject" and "'churn_signal'" in d.reasons[0] and "missing evidence" in d.reasons[0]


# ------------------------------------------------------------------------------------------------ approval


def test_approval_flow():
    policy = PromotionPolicy(require_approval=True)
    waiting = decide(policy, "v2", "v1", comparisons(), GREEN, FAIR)
    assert waiting.outcome == "await_approval"
    assert waiting.evidence_sha256[:12] in waiting.reasons[-1]
    ok = Approval("risk.officer@bank", "2016-06-02T10:00:00+00:00", "v2", waiting.evidence_sha256)
    done = decide(policy, "v2", "v1", comparisons(), GREEN, FAIR, ok)
    assert done.outcome == "promote" and done.evidence_sha256 == waiting.evidence_sha256
    assert "approved by 'risk.officer@bank'" in done.reasons[-1] and done.to_dict()["approval"]["approver"]
    # the evidence changed after approval (one metric moved): the old approval no longer applies
    changed = decide(policy, "v2", "v1", comparisons(0.011), GREEN, FAIR, ok)
    assert changed.outcome == "await_approval" and changed.evidence_sha256 != ok.evidence_sha256
    assert "approval is for different evidence" in changed.reasons[-1]
    wrong = Approval("risk.officer@bank", "2016-06-02T10:00:00+00:00", "v2", "0" * 64)
    assert decide(policy, "v2", "v1", comparisons(), GREEN, FAIR, wrong).outcome == "await_approval"
    other = Approval("risk.officer@bank", "2016-06-02T10:00:00+00:00", "v3", waiting.evidence_sha256)
    d = decide(policy, "v2", "v1", comparisons(), GREEN, FAIR, other)
    assert d.outcome == "await_approval" and "is for challenger 'v3', not 'v2'" in d.reasons[-1]
    # an approval cannot override a failed rule
    failing = decide(policy, "v2", "v1", comparisons(), {**GREEN, "calibration": False}, FAIR)
    forced = Approval("cto", "2016-06-02T10:00:00+00:00", "v2", failing.evidence_sha256)
    assert decide(policy, "v2", "v1", comparisons(), {**GREEN, "calibration": False}, FAIR, forced).outcome == "reject"
    # bootstrap waits for approval too
    first = decide(policy, "v1", None, comparisons(champion=False), GREEN, FAIR)
    assert first.outcome == "await_approval"
    boot_ok = Approval("mrm", "2016-06-02T10:00:00+00:00", "v1", first.evidence_sha256)
    assert decide(policy, "v1", None, comparisons(champion=False), GREEN, FAIR, boot_ok).outcome == "bootstrap"


def test_evidence_hash_is_canonical():
    assert evidence_sha256({"a": 1, "b": [1.5, None]}) == evidence_sha256({"b": [1.5, None], "a": 1})
    assert evidence_sha256({"a": 1}) != evidence_sha256({"a": 2})
    assert evidence_sha256({"x": "é", "a": [1, 2.5]}) == hashlib.sha256('{"a":[1,2.5],"x":"é"}'.encode()).hexdigest()
    with pytest.raises(PromotionInputError, match="canonical JSON"):
        evidence_sha256({"a": float("nan")})
    # the policy is part of the evidence: a laxer policy is a different thing to approve
    a = decide(PromotionPolicy(require_approval=True), "v2", "v1", comparisons(), GREEN, FAIR)
    b = decide(PromotionPolicy(require_approval=True, max_task_degradation=0.05), "v2", "v1", comparisons(), GREEN,
               FAIR)
    assert a.evidence_sha256 != b.evidence_sha256


# ------------------------------------------------------------------------------------------------ inputs


def test_policy_round_trip_and_validation():
    p = PromotionPolicy(min_mean_improvement=0.01, require_approval=True, task_tolerances={"spend_change": 0.02})
    assert PromotionPolicy.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert PromotionPolicy.from_dict({"max_task_degradation": 0}).max_task_degradation == 0.0
    with pytest.raises(PromotionInputError, match="unknown keys \\['max_task_degredation'\\]"):
        PromotionPolicy.from_dict({"max_task_degredation": 0.01})
    with pytest.raises(PromotionInputError, match="require_approval must be true/false"):
        PromotionPolicy.from_dict({"require_approval": "yes"})
    with pytest.raises(PromotionInputError, match="unknown task 'churn'"):
        PromotionPolicy(task_tolerances={"churn": 0.01})
    with pytest.raises(PromotionInputError, match="fairness_air_floor"):
        PromotionPolicy(fairness_air_floor=1.5)


def test_malformed_evidence_is_an_error():
    bad_metric = [TaskComparison("churn_signal", "pr_auc", True, 0.5, 0.4)] + comparisons()[1:]
    with pytest.raises(PromotionInputError, match="'churn_signal'.*primary metric is 'auc'"):
        decide(POLICY, "v2", "v1", bad_metric, GREEN, FAIR)
    with pytest.raises(PromotionInputError, match="higher_is_better"):
        decide(POLICY, "v2", "v1", [TaskComparison("spend_change", "mae", True, 0.1, 0.2)], GREEN, FAIR)
    with pytest.raises(PromotionInputError, match="compared twice"):
        decide(POLICY, "v2", "v1", comparisons() + comparisons()[:1], GREEN, FAIR)
    with pytest.raises(PromotionInputError, match="unknown task 'ctr'"):
        decide(POLICY, "v2", "v1", [TaskComparison("ctr", "auc", True, 0.5, 0.4)], GREEN, FAIR)
    with pytest.raises(PromotionInputError, match="check 'calibration'"):
        decide(POLICY, "v2", "v1", comparisons(), {"calibration": "green"}, FAIR)
    with pytest.raises(PromotionInputError, match="fairness\\['gender'\\]"):
        decide(POLICY, "v2", "v1", comparisons(), GREEN, {"gender": {"status": "ok"}})
    with pytest.raises(PromotionInputError, match="already the champion"):
        decide(POLICY, "v1", "v1", comparisons(), GREEN, FAIR)
    with pytest.raises(PromotionInputError, match="challenger must be a number"):
        TaskComparison("churn_signal", "auc", True, "0.8", 0.7)  # type: ignore[arg-type]
    assert decide(POLICY, "v2", "v1", comparisons(), {k: np.bool_(True) for k in GREEN}, FAIR).outcome == "promote"


def test_comparisons_from_evaluation_results():
    def res(v):
        return {t.name: {t.primary_metric: {"value": v[t.primary_metric], "lo": math.nan, "hi": math.nan}}
                for t in TASKS}

    chall = res({"auc": 0.78, "macro_f1": 0.42, "mae": 0.18})
    champ = res(CHAMPION)
    diff = {t.name: {t.primary_metric: {"value": 0.0, "lo": -0.01, "hi": 0.03}} for t in TASKS}
    del chall["next_mcc"]
    tasks = comparisons_from_evaluation(chall, champ, diff)
    by = {t.task: t for t in tasks}
    assert len(tasks) == 13 and by["next_mcc"].challenger is None
    assert by["spend_change"].higher_is_better is False and by["spend_change"].signed_diff == pytest.approx(0.02)
    assert by["churn_signal"].diff_ci == (-0.01, 0.03) and by["spend_change"].signed_ci == (-0.03, 0.01)
    assert by["churn_signal"].metric == TASKS_BY_NAME["churn_signal"].primary_metric
    d = decide(POLICY, "v2", "v1", tasks, GREEN, FAIR)
    assert d.outcome == "reject" and "task 'next_mcc': the challenger's macro_f1 is missing" in d.reasons[0]


def test_no_regression_mode_gates_on_the_champion_not_the_floor():
    """Where groups differ in propensity, a floor on who is targeted cannot hold; no_regression rejects only a
    challenger whose lowest AIR falls below the champion's by more than the tolerance."""
    from ple_platform.core.governance.promotion.rules import PromotionPolicy, TaskComparison, decide
    from ple_platform.core.tasks.spec import TASKS

    tasks = [TaskComparison(t.name, t.primary_metric, t.primary_metric != "mae",
                            0.7 if t.primary_metric != "mae" else 0.3, 0.6 if t.primary_metric != "mae" else 0.4,
                            None) for t in TASKS]
    checks = {"student_churn_signal/fidelity_to_teacher": True}
    policy = PromotionPolicy(fairness_mode="no_regression", required_fairness_attributes=("gender",))
    held = {"gender": {"status": "fail", "min_air": 0.50, "champion_min_air": 0.51}}
    assert decide(policy, "v2", "v1", tasks, checks, held).outcome == "promote"
    worse = {"gender": {"status": "fail", "min_air": 0.40, "champion_min_air": 0.51}}
    d = decide(policy, "v2", "v1", tasks, checks, worse)
    assert d.outcome == "reject" and any("regressed" in r and "0.400" in r for r in d.reasons)
    # The default floor mode rejects the same evidence that no_regression accepts.
    assert decide(PromotionPolicy(required_fairness_attributes=("gender",)), "v2", "v1", tasks, checks,
                  held).outcome == "reject"
    # Bootstrap under no_regression records the failed floor instead of blocking.
    boot = decide(policy, "v1", None, tasks, checks, {"gender": {"status": "fail", "min_air": 0.5}})
    assert boot.outcome == "bootstrap" and any("no champion to compare" in r for r in boot.reasons)

"""Proven or not cited: a task's reasons name a teacher expert only when its student is DISTILLed and the teacher's
gates beat the no-information control. Fed with the control's real output on models of known ground truth
(``test_gate_faithfulness_control``): informative gates are cited, uninformative ones never."""

import pytest

from ple_platform.core.distillation.gate_citation import gate_citation
from ple_platform.core.governance.promotion.registry import ModelBundle
from ple_platform.core.recommend.monthly import gate_cited_tasks
from ple_platform_tests.test_gate_faithfulness_control import TASK, _check, _model, batch  # noqa: F401 (fixture)


def test_informative_gates_of_a_distilled_student_are_cited(batch):
    c = gate_citation(TASK, "DISTILL", _check(_model(shift=0), batch))
    assert c["cited"] is True and c["lo"] > 0 and c["margin"] >= c["goal"], c


@pytest.mark.parametrize("shift", [1, None], ids=["wrong-expert", "untrained"])
def test_uninformative_gates_are_never_cited(batch, shift):
    c = gate_citation(TASK, "DISTILL", _check(_model(shift=shift), batch))
    assert c["cited"] is False and "not cited" in c["reason"], c


def test_a_direct_student_never_cites_even_faithful_gates(batch):
    c = gate_citation(TASK, "DIRECT", _check(_model(shift=0), batch))
    assert c["cited"] is False and "DIRECT" in c["reason"]


def test_missing_or_incomplete_evidence_is_a_refusal_that_says_why():
    assert "not materialized" in gate_citation(TASK, "DISTILL", None)["reason"]
    assert not gate_citation(TASK, "DISTILL", None)["cited"]
    nan_margin = {"margin": {"value": 0.3, "lo": None, "hi": None}, "goal": 0.15}
    c = gate_citation(TASK, "DISTILL", nan_margin)
    assert not c["cited"] and "could not be computed" in c["reason"]
    ci_reaches_zero = {"margin": {"value": 0.3, "lo": -0.01, "hi": 0.6}, "goal": 0.15}
    assert not gate_citation(TASK, "DISTILL", ci_reaches_zero)["cited"]
    below_goal = {"margin": {"value": 0.1, "lo": 0.05, "hi": 0.15}, "goal": 0.15}
    assert "less than the goal" in gate_citation(TASK, "DISTILL", below_goal)["reason"]


def test_recommendations_read_the_decision_from_the_bundle():
    import datetime as dt

    routing = {"churn_signal": {"route": "DISTILL", "gate_citation": {"cited": True}},
               "next_mcc": {"route": "DISTILL", "gate_citation": {"cited": False}},
               "will_acquire_deposits": {"route": "DISTILL"}}  # registered before the decision existed: not cited
    bundle = ModelBundle(version="v1", model_month=dt.date(2015, 5, 1), teacher_uri="x", teacher_sha256="0" * 64,
                         code_version="c", train_months=(dt.date(2015, 1, 1),), validation_month=dt.date(2015, 3, 1),
                         test_month=dt.date(2015, 4, 1), students={}, routing=routing)
    assert gate_cited_tasks(bundle) == {"churn_signal"}

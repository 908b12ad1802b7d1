"""ple_teacher -> teacher_evaluation on real materialized features and labels (tiny model, CPU)."""

import io
import json
from datetime import date

import dagster as dg
import duckdb
import pytest
import torch

from ple_platform.core.model.assessment import MODELS
from ple_platform.core.model.data import month_customer_ids
from ple_platform.core.storage import artifact_store_from_uri
from ple_platform.core.tasks.spec import TASKS
from ple_platform.defs.resources import build_resources
from ple_platform.defs.training.assets import EvaluationRunConfig, TeacherRunConfig, ple_teacher, teacher_evaluation
from ple_platform_tests.conftest import TINY_TEACHER, materialize

pytestmark = pytest.mark.slow  # trains and evaluates the teacher on the materialized pipeline

MONTH = "2015-06-01"


def _run_config(**eval_cfg):
    return dg.RunConfig({"ple_teacher": TeacherRunConfig(**TINY_TEACHER),
                         "teacher_evaluation": EvaluationRunConfig(n_boot=50, lgb_num_boost_round=40, **eval_cfg)})


def test_teacher_then_out_of_time_evaluation(pipeline_env):
    resources = build_resources(pipeline_env)
    result = dg.materialize([ple_teacher, teacher_evaluation], partition_key=MONTH, resources=resources,
                            run_config=_run_config())
    assert result.success
    teacher_md = result.asset_materializations_for_node("ple_teacher")[0].metadata
    assert teacher_md["test_month"].value == "2015-05-01" and teacher_md["validation_month"].value == "2015-04-01"
    # The checkpoint is a weights-only dict (no pickled module) with config, scaler, split and code version.
    store = artifact_store_from_uri(pipeline_env.artifacts_uri)
    payload = torch.load(io.BytesIO(store.get("teacher/2015-06-01/checkpoint.pt")), weights_only=True)
    assert {"model_state", "config", "scaler", "split", "code_version"} <= set(payload)

    md = result.asset_materializations_for_node("teacher_evaluation")[0].metadata
    table = md["results"].value
    for spec in TASKS:
        assert f"| {spec.name} | {spec.primary_metric} |" in table
    assert md["test_month"].value == "2015-05-01"
    evaluation = json.loads(store.get("teacher/2015-06-01/evaluation.json"))
    assert set(evaluation["metrics"]) == set(MODELS)
    # Every model is scored on the same customers of the test month, with CIs around the point value.
    for model in MODELS:
        auc = evaluation["metrics"][model]["churn_signal"]["auc"]
        assert auc["lo"] <= auc["value"] <= auc["hi"]
        assert 0.0 <= evaluation["map_at_7"][model]["value"] <= 1.0
    diff = evaluation["differences"]["teacher_minus_lightgbm"]["churn_signal"]["auc"]["value"]
    assert abs(diff - (evaluation["metrics"]["teacher"]["churn_signal"]["auc"]["value"]
                       - evaluation["metrics"]["lightgbm"]["churn_signal"]["auc"]["value"])) < 1e-4
    for task in (t.name for t in TASKS):
        assert 0.0 <= evaluation["gate_entropy"][task] <= 1.0
        assert 0.0 <= evaluation["gate_faithfulness"][task]["share"] <= 1.0
    assert evaluation["split"]["test"] == "2015-05-01" and "2015-05-01" not in evaluation["split"]["train"]
    # The teacher trains on a subsample per month, but the evaluation scores every customer of the test month.
    with duckdb.connect(str(pipeline_env.warehouse_path), read_only=True) as con:
        test_customers = len(month_customer_ids(con, date(2015, 5, 1)))
    assert evaluation["n_test_customers"] == test_customers > TINY_TEACHER["max_customers_per_month"]
    assert md["quality_goal_met"].value == evaluation["goal"]["met"]


def test_evaluation_without_checkpoint_fails_clearly(pipeline_env):
    result = materialize([teacher_evaluation], "2015-05-01", build_resources(pipeline_env))
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "no teacher checkpoint" in failure.step_failure_data.error.message or \
        "no teacher checkpoint" in str(failure.step_failure_data.user_failure_data)

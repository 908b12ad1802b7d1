"""Distillation (group ``distillation``): the teacher's split as a dataset, 13 students from one factory, and
the bundle that registers them as a model version.

Each ``student_<task>`` trains both forms (distilled on teacher soft targets, and direct on hard labels), routes
by validation evidence, measures fidelity to the teacher on the out-of-time test month and reports it as a
*blocking* check: a student that does not reproduce its teacher stops the run before ``model_bundle``.
A DIRECT-routed student is not a copy of the teacher, so its fidelity check passes as "not applicable" (the
numbers are still reported).
"""


import json
import math
from datetime import date

import dagster as dg

from ple_platform.core.distillation.bundle import (
    distillation_dataset_key,
    student_latest_key,
    student_meta_key,
    student_model_key,
    write_bundle_pointer,
)
from ple_platform.core.distillation.dataset import DistillationData, build_distillation_data
from ple_platform.core.distillation.gate_citation import gate_citation
from ple_platform.core.distillation.fidelity import FidelityThresholds, fidelity
from ple_platform.core.distillation.students import StudentConfig, fit_task_students
from ple_platform.core.features.spec import FEATURE_GROUPS
from ple_platform.core.governance.audit.log import AuditEvent
from ple_platform.core.governance.promotion.registry import ModelBundle, Route, StudentArtifact
from ple_platform.core.model.baselines import DEFAULT_PARAMS, MANY_CLASS_OVERRIDES
from ple_platform.core.model.evaluate import evaluate_predictions
from ple_platform.core.model.teacher import load_teacher, teacher_evaluation_key
from ple_platform.core.progress import milestone
from ple_platform.core.reporting import json_ready, md_table  # NaN/inf -> None: the registry and audit log refuse NaN
from ple_platform.core.storage import sha256_bytes
from ple_platform.core.tasks.spec import TASKS, TaskSpec
from ple_platform.core.warehouse import partition_content_hash
from ple_platform.core.versioning import source_version
from ple_platform.defs.automation import MODEL_CHAIN
from ple_platform.defs.core_defaults import core_default
from ple_platform.defs.partitions import MONTHLY
from ple_platform.defs.raw.assets import WAREHOUSE_POOL
from ple_platform.defs.resources import (
    ArtifactStoreResource,
    GovernanceResource,
    WarehouseResource,
    retry_transient_io,
)
from ple_platform.defs.training.assets import teacher_checkpoint_key

# Changes with the source that computes these assets (docs/architecture.md, code versions).
CODE_VERSION = source_version("ple_platform.core.distillation", "ple_platform.core.model", __name__)

FIDELITY_CHECK = "fidelity_to_teacher"


@dg.asset(
    group_name="distillation",
    partitions_def=MONTHLY,
    deps=["ple_teacher"],
    pool=WAREHOUSE_POOL,
    kinds={"pytorch", "numpy"},
    owners=["team:ml-modeling"],
    code_version=CODE_VERSION,
    automation_condition=MODEL_CHAIN,
)
@retry_transient_io
def distillation_dataset(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                         artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
    """The teacher's own train/validation/test rows as raw 1,211-column matrices, hard labels and the teacher's
    predictions (soft targets), built once per model month for all 13 students."""
    month = date.fromisoformat(context.partition_key)
    store = artifacts.store()
    if not store.exists(teacher_checkpoint_key(month)):
        raise dg.Failure(description=f"no teacher checkpoint for {month:%Y-%m}; materialize ple_teacher first")
    checkpoint = store.get(teacher_checkpoint_key(month))
    with warehouse.get_connection() as con:
        data = build_distillation_data(con, checkpoint)
    uri, sha = store.put(distillation_dataset_key(month), data.to_bytes())
    return dg.MaterializeResult(
        metadata={"rows": dg.MetadataValue.json({p: d.n_rows for p, d in data.parts.items()}),
                  "features": len(data.feature_names), "dataset_uri": uri, "dataset_sha256": sha,
                  "teacher_checkpoint_sha256": sha256_bytes(checkpoint)},
        data_version=dg.DataVersion(sha),
    )


class StudentRunConfig(dg.Config):
    """Distillation recipe and fidelity thresholds (docs/models.md explains each)."""

    temperature: float = core_default(StudentConfig, "temperature")
    alpha: float = core_default(StudentConfig, "alpha")
    keep_share: float = core_default(fit_task_students, "keep_share")
    num_boost_round: int = core_default(StudentConfig, "num_boost_round")
    early_stopping_rounds: int = core_default(StudentConfig, "early_stopping_rounds")
    selection_rounds: int = core_default(StudentConfig, "selection_rounds")
    max_bin: int = DEFAULT_PARAMS["max_bin"]  # LightGBM binning (63 cuts split finding ~4x on small months)
    num_leaves: int = DEFAULT_PARAMS["num_leaves"]
    n_boot: int = core_default(fit_task_students, "n_boot")
    max_auc_gap: float = core_default(FidelityThresholds, "max_auc_gap")
    min_spearman: float = core_default(FidelityThresholds, "min_spearman")
    min_topk_agreement: float = core_default(FidelityThresholds, "min_topk_agreement")
    max_ece: float = core_default(FidelityThresholds, "max_ece")
    # a near-constant teacher is nothing to be faithful to
    min_teacher_std: float = core_default(FidelityThresholds, "min_teacher_std")
    min_teacher_auc: float = core_default(FidelityThresholds, "min_teacher_auc")
    route: str = "auto"  # "auto" (by validation evidence), or force "distill" / "direct" for ablations


def _student_md(task: str, decision: dict, fid: dict, test: dict) -> str:
    rows = [(name, f"{value:.4f}" if isinstance(value, float) else value,
             "" if fid["checks"].get(name) is None else fid["checks"][name]) for name, value in fid["metrics"].items()]
    lines = [f"**route: {decision['route']}** — {decision['reason']}", "",
             md_table(["fidelity metric", "value", "passed"], rows)]
    metric = next(t.primary_metric for t in TASKS if t.name == task)
    m = test.get(metric, {})
    lines += ["", f"test-month {metric}: {m.get('value', float('nan')):.4f} "
                  f"[{m.get('lo', float('nan')):.4f}, {m.get('hi', float('nan')):.4f}]"]
    return "\n".join(lines)


def build_student_asset(spec: TaskSpec) -> dg.AssetsDefinition:
    name = f"student_{spec.name}"

    @dg.asset(
        name=name,
        group_name="distillation",
        partitions_def=MONTHLY,
        deps=["distillation_dataset"],
        check_specs=[dg.AssetCheckSpec(FIDELITY_CHECK, asset=name, blocking=True, partitions_def=MONTHLY,
                                       description="The served student reproduces its teacher on the test month")],
        kinds={"lightgbm"},
        owners=["team:ml-modeling"],
        code_version=CODE_VERSION,
        automation_condition=MODEL_CHAIN,
        description=f"LightGBM student for {spec.name} ({spec.kind}): {spec.description}. Distilled from the "
                    "teacher or trained directly, whichever the validation evidence supports.",
    )
    @retry_transient_io
    def _student(context: dg.AssetExecutionContext, config: StudentRunConfig, artifacts: ArtifactStoreResource,
                 governance: GovernanceResource) -> dg.MaterializeResult:
        month = date.fromisoformat(context.partition_key)
        store = artifacts.store()
        data = DistillationData.from_bytes(store.get(distillation_dataset_key(month)))
        tr, va, te = (data.parts[p] for p in ("train", "validation", "test"))
        student_cfg = StudentConfig(
            temperature=config.temperature, alpha=config.alpha, num_boost_round=config.num_boost_round,
            early_stopping_rounds=config.early_stopping_rounds, selection_rounds=config.selection_rounds,
            params={"max_bin": config.max_bin, "num_leaves": config.num_leaves,
                    **(MANY_CLASS_OVERRIDES if spec.name == "next_mcc" else {})},
        )
        thresholds = FidelityThresholds(max_auc_gap=config.max_auc_gap, min_spearman=config.min_spearman,
                                        min_topk_agreement=config.min_topk_agreement, max_ece=config.max_ece,
                                        min_teacher_std=config.min_teacher_std,
                                        min_teacher_auc=config.min_teacher_auc)
        fitted = fit_task_students(spec.name, tr.X, tr.labels[spec.name], tr.teacher[spec.name], va.X,
                                   va.labels[spec.name], va.teacher[spec.name], data.feature_names, student_cfg,
                                   keep_share=config.keep_share, n_boot=config.n_boot,
                                   force_route=None if config.route == "auto" else config.route.upper(),
                                   validation_fidelity=thresholds)
        student = fitted.student
        pred = student.predict(te.X, data.feature_names)
        fid = fidelity(spec.name, te.labels[spec.name], te.teacher[spec.name], pred, thresholds).to_dict()
        applicable = student.route == Route.DISTILL
        passed = bool(fid["passed"]) if applicable else True
        test_metrics = evaluate_predictions({spec.name: te.labels[spec.name]}, {spec.name: pred},
                                            n_boot=config.n_boot, seed=0)[spec.name]
        decision = fitted.decision.to_dict()
        meta = json_ready({"student": student.to_dict(), "routing": decision, "validation": fitted.validation,
                          "fidelity": {**fid, "applicable": applicable, "check_passed": passed},
                          "test": test_metrics, "model_month": month.isoformat()})
        sha = student.model_sha256
        model_uri, stored_sha = store.put(student_model_key(month, spec.name, sha), student.model_bytes)
        assert stored_sha == sha
        meta_bytes = json.dumps(meta, sort_keys=True).encode()
        store.put(student_meta_key(month, spec.name, sha), meta_bytes)
        store.put(student_latest_key(month, spec.name), meta_bytes)
        governance.audit_log().append(AuditEvent.STUDENT, f"{name}/{month.isoformat()}", {
            "model_sha256": sha, "route": decision["route"],
            "fidelity_passed": passed, "run_id": context.run.run_id})
        milestone(f"students {month:%Y-%m}", spec.name, len(TASKS), route=decision["route"],
                  fidelity="n/a" if not applicable else "ok" if passed else "FAILED")
        description = ("fidelity not applicable: DIRECT route (hard-label LightGBM)" if not applicable
                       else "fidelity holds" if passed else "; ".join(fid["failures"]))
        return dg.MaterializeResult(
            metadata={"route": decision["route"], "model_uri": model_uri, "model_sha256": sha,
                      "n_features": len(student.features), "best_iteration": student.best_iteration,
                      "summary": dg.MetadataValue.md(_student_md(spec.name, decision, fid, test_metrics))},
            check_results=[dg.AssetCheckResult(
                check_name=FIDELITY_CHECK, passed=passed, description=description,
                metadata={k: float(v) for k, v in fid["metrics"].items() if isinstance(v, (int, float))
                          and math.isfinite(float(v))},
            )],
            data_version=dg.DataVersion(sha),
        )

    return _student


student_assets = [build_student_asset(t) for t in TASKS]


def bundle_version(month: date, teacher_sha: str, student_shas: dict[str, str]) -> str:
    digest = sha256_bytes(json.dumps({"teacher": teacher_sha, "students": student_shas}, sort_keys=True).encode())
    return f"v{month:%Y.%m}-{digest[:10]}"


def _faithfulness_controls(store, month: date, teacher_sha: str) -> tuple[dict, str]:
    """The month's per-task gate-faithfulness control results and, when there are none (so no gate is cited),
    why: the evaluation is missing or was made on another checkpoint than the one being registered."""
    key = teacher_evaluation_key(month)
    if not store.exists(key):
        return {}, f"teacher_evaluation not materialized for {month:%Y-%m}"
    result = json.loads(store.get(key))
    if result.get("teacher_checkpoint_sha256") != teacher_sha:
        return {}, f"teacher_evaluation of {month:%Y-%m} was made on another teacher checkpoint"
    return result.get("gate_faithfulness_control") or {}, "the evaluation has no control for this task"


@dg.asset(
    group_name="distillation",
    partitions_def=MONTHLY,
    deps=[a.key for a in student_assets] + ["ple_teacher", "teacher_evaluation"],
    pool=WAREHOUSE_POOL,
    kinds={"duckdb"},
    owners=["team:ml-platform"],
    code_version=CODE_VERSION,
    automation_condition=MODEL_CHAIN,
)
@retry_transient_io
def model_bundle(context: dg.AssetExecutionContext, warehouse: WarehouseResource, artifacts: ArtifactStoreResource,
                 governance: GovernanceResource) -> dg.MaterializeResult:
    """Registers the 13 students + routing + teacher reference + months + content hashes as one model version
    (a challenger until the promotion sensor decides). Each task's routing records whether its reasons may cite
    the teacher's gate weights: only when DISTILLed and the gates beat the no-information control in
    ``teacher_evaluation`` (proven or not cited)."""
    month = date.fromisoformat(context.partition_key)
    store = artifacts.store()
    checkpoint = store.get(teacher_checkpoint_key(month))
    metas = {t.name: json.loads(store.get(student_latest_key(month, t.name))) for t in TASKS}
    students = {
        task: StudentArtifact(uri=store.uri(student_model_key(month, task, m["student"]["model_sha256"])),
                              sha256=m["student"]["model_sha256"],
                              route=Route(m["routing"]["route"]),
                              metrics={"test": m["test"], "fidelity_passed": m["fidelity"]["check_passed"],
                                       "n_features": m["student"]["n_features"]})
        for task, m in metas.items()
    }
    _, payload = load_teacher(checkpoint)
    split = json.loads(payload["split"])
    months = sorted({*split["train"], split["validation"], split["test"], split["model_month"]})
    with warehouse.get_connection() as con:
        feature_hashes = {
            g.name: sha256_bytes("|".join(partition_content_hash(con, g.table, date.fromisoformat(m))
                                          for m in months).encode())
            for g in FEATURE_GROUPS
        }
    teacher_sha = sha256_bytes(checkpoint)
    controls, missing = _faithfulness_controls(store, month, teacher_sha)
    routing = {t: {**json_ready(m["routing"]),
                   "gate_citation": json_ready(gate_citation(t, m["routing"]["route"], controls.get(t), missing))}
               for t, m in metas.items()}
    version = bundle_version(month, teacher_sha, {t: s.sha256 for t, s in students.items()})
    bundle = ModelBundle(
        version=version, model_month=month, teacher_uri=store.uri(teacher_checkpoint_key(month, teacher_sha)),
        teacher_sha256=teacher_sha, code_version=payload["code_version"],
        train_months=tuple(date.fromisoformat(m) for m in split["train"]),
        validation_month=date.fromisoformat(split["validation"]), test_month=date.fromisoformat(split["test"]),
        students=students, routing=routing,
        feature_hashes=feature_hashes, run_id=context.run.run_id,
    )
    registry = governance.registry()
    bundle_sha = registry.register(bundle)
    governance.audit_log().append(AuditEvent.REGISTRATION, version, {
        "bundle_sha256": bundle_sha, "model_month": month.isoformat(), "run_id": context.run.run_id,
        "teacher_sha256": teacher_sha, "routes": {t: s.route.value for t, s in students.items()}})
    write_bundle_pointer(store, month, version)
    routes = md_table(["task", "route", "fidelity check", "reasons cite gate weights"],
                      [(t, s.route.value, s.metrics["fidelity_passed"], routing[t]["gate_citation"]["cited"])
                       for t, s in students.items()])
    return dg.MaterializeResult(
        metadata={"version": version, "bundle_sha256": bundle_sha, "teacher_sha256": teacher_sha,
                  "code_version": payload["code_version"],
                  "routing": dg.MetadataValue.md(routes),
                  "feature_hashes": dg.MetadataValue.json(feature_hashes)},
        data_version=dg.DataVersion(bundle_sha),
    )

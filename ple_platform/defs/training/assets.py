"""Training (group ``training``): the PLE teacher of model month t.

Trains on label months from the fit anchor to t-3, early-stops on t-2 and leaves t-1 for out-of-time
evaluation. The fit runs in the GPU worker (``ple_platform.gpu_worker``) through Dagster Pipes; the checkpoint
(state dict + config + scaler + split, no pickled module) goes to the artifact store, its hash is checked here;
metrics, loss terms and the split go to the asset metadata.
"""

import json
import tempfile
from datetime import date
from pathlib import Path

import dagster as dg

from ple_platform.core.features.spec import FEATURE_GROUPS
from ple_platform.core.model.assessment_settings import AssessmentSettings
from ple_platform.core.model.baselines import DEFAULT_PARAMS
from ple_platform.core.model.ple_config import PLEConfig
from ple_platform.core.model.teacher import (TeacherSettings, code_version, fit_teacher, load_teacher_data,
                                             teacher_checkpoint_key, teacher_evaluation_key)
from ple_platform.core.reporting import json_ready, md_table
from ple_platform.core.storage import sha256_bytes
from ple_platform.core.tasks.split import SplitError
from ple_platform.defs.gpu import GPU_POOL, GpuDispatchResource
from ple_platform.defs.automation import MODEL_CHAIN
from ple_platform.defs.core_defaults import core_default
from ple_platform.defs.partitions import MONTHLY
from ple_platform.defs.raw.assets import WAREHOUSE_POOL
from ple_platform.defs.resources import ArtifactStoreResource, PlatformSettings, WarehouseResource, retry_transient_io

HISTORY = dg.TimeWindowPartitionMapping(start_offset=-16, end_offset=0, allow_nonexistent_upstream_partitions=True)


class TeacherRunConfig(dg.Config):
    """Launchpad knobs. By default every eligible customer of every month trains the teacher (and, through its
    checkpoint, the students); ``max_customers_per_month`` > 0 trains on a recorded per-month sample instead."""

    max_customers_per_month: int | None = core_default(TeacherSettings, "max_customers_per_month")
    epochs: int = core_default(TeacherSettings, "epochs")
    batch_size: int = core_default(TeacherSettings, "batch_size")
    seed: int = core_default(TeacherSettings, "seed")
    expert_kind: str = core_default(TeacherSettings, "expert_kind")
    expert_dim: int = core_default(PLEConfig, "expert_dim")
    n_layers: int = core_default(PLEConfig, "n_layers")
    resume: bool = core_default(fit_teacher, "resume")


def _md_metrics(metrics: dict[str, float]) -> str:
    return md_table(["validation metric", "value"], [(k, f"{v:.4f}") for k, v in sorted(metrics.items())
                                                      if "/" in k or k in ("composite", "mean_binary_auc")])


def teacher_inputs_key(month: date) -> str:
    return f"teacher/{month.isoformat()}/inputs.npz"


def teacher_resume_key(month: date) -> str:
    """Resume state of the month's fit (``last.pt``): in the artifact store, so it survives the GPU pod."""
    return f"teacher/{month.isoformat()}/resume/last.pt"


@dg.asset(
    group_name="training",
    partitions_def=MONTHLY,
    deps=[dg.AssetDep(g.name, partition_mapping=HISTORY) for g in FEATURE_GROUPS]
    + [dg.AssetDep("task_labels", partition_mapping=HISTORY)],
    # The GPU pool, not the warehouse pool: the step reads the warehouse for seconds (DuckDB's own file lock
    # serialises that read with writers) and then trains for minutes to hours without touching it.
    pool=GPU_POOL,
    kinds={"pytorch"},
    owners=["team:ml-modeling"],
    code_version=code_version(),
    automation_condition=MODEL_CHAIN,
)
@retry_transient_io
def ple_teacher(context: dg.AssetExecutionContext, config: TeacherRunConfig, warehouse: WarehouseResource,
                artifacts: ArtifactStoreResource, gpu: GpuDispatchResource,
                settings: PlatformSettings) -> dg.MaterializeResult:
    """PLE teacher with 7 heterogeneous experts (DeepFM, temporal ensemble, HGCN, PersLay, LightGCN, causal,
    optimal transport) learning the 13 tasks. Loads its inputs, closes the warehouse, exports them to the
    artifact store and trains through Dagster Pipes: a local subprocess by default, a GPU pod in production."""
    from ple_platform.core.model.handoff import pack_teacher_inputs

    month = date.fromisoformat(context.partition_key)
    fit_end = settings.settings().fit_end_month
    run = TeacherSettings(
        max_customers_per_month=config.max_customers_per_month or None,
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        expert_kind=config.expert_kind,
        model={"expert_dim": config.expert_dim, "n_layers": config.n_layers},
    )
    with warehouse.get_connection() as con:
        try:
            data = load_teacher_data(con, month, fit_end, run)
        except SplitError as err:
            raise dg.Failure(description=str(err)) from None
    # The warehouse connection is closed here: the file lock is free for writers during the whole fit.
    store = artifacts.store()
    inputs = pack_teacher_inputs(data, month, run)
    del data
    inputs_uri, inputs_sha = store.put(teacher_inputs_key(month), inputs)
    context.log.info(f"teacher inputs exported: {len(inputs) / 2**20:.1f} MiB to {inputs_uri}")
    del inputs
    fit_key = f"teacher/{month.isoformat()}/fit/{context.run.run_id}"
    invocation = gpu.run_worker(context, "train-teacher", {
        "artifacts_uri": artifacts.uri, "s3_endpoint_url": artifacts.s3_endpoint_url,
        "inputs_key": teacher_inputs_key(month), "inputs_sha256": inputs_sha,
        "checkpoint_key": f"{fit_key}/checkpoint.pt", "result_key": f"{fit_key}/result.json",
        "resume_key": teacher_resume_key(month), "resume": config.resume,
    })
    reports = [m for m in invocation.get_custom_messages() if isinstance(m, dict) and "checkpoint_sha256" in m]
    if len(reports) != 1:
        raise dg.Failure(description=f"the GPU worker reported {len(reports)} checkpoints (expected 1) for "
                                     f"{month:%Y-%m}; see its log in this step")
    report = reports[0]
    checkpoint = store.get(f"{fit_key}/checkpoint.pt")
    if sha256_bytes(checkpoint) != report["checkpoint_sha256"]:
        raise dg.Failure(description=f"teacher checkpoint at {store.uri(f'{fit_key}/checkpoint.pt')} has SHA-256 "
                                     f"{sha256_bytes(checkpoint)[:16]}…, the GPU worker reported "
                                     f"{report['checkpoint_sha256'][:16]}…: not registering a corrupted checkpoint")
    fit = json.loads(store.get(report["result_key"]))
    sha = sha256_bytes(checkpoint)
    store.put(teacher_checkpoint_key(month, sha), checkpoint)
    uri, _ = store.put(teacher_checkpoint_key(month), checkpoint)
    split = fit["data_summary"]["split"]
    history = fit["history"]
    return dg.MaterializeResult(
        metadata={
            "checkpoint_uri": uri,
            "checkpoint_sha256": sha,
            "inputs_uri": inputs_uri,
            "inputs_sha256": inputs_sha,
            "gpu_dispatch": gpu.mode,
            "device": report["device"],
            "train_months": f"{split['train'][0]} .. {split['train'][-1]} ({len(split['train'])})",
            "validation_month": split["validation"],
            "test_month": split["test"],
            "rows": dg.MetadataValue.json(fit["data_summary"]["rows"]),
            "scaler_hash": str(fit["data_summary"]["scaler_hash"]),
            "epochs_run": len(history["epochs"]),
            "best_epoch": history["best_epoch"],
            "selection_metric": history["selection_metric"],
            "best_validation_score": history["best_score"],
            "train_seconds": round(fit["seconds"], 1),
            "samples_per_second": round(fit["samples_per_second"], 1),
            "validation": dg.MetadataValue.md(_md_metrics(fit["metrics"])),
            "loss_terms_last_epoch": dg.MetadataValue.json(
                {k: round(float(v), 5) for k, v in history["epochs"][-1].items() if isinstance(v, (int, float))}
            ),
            "customer_sample": ("all customers" if run.max_customers_per_month is None
                                else f"sample of {run.max_customers_per_month} per month (seed {run.seed})"),
            "settings": dg.MetadataValue.json(run.__dict__),
        },
        data_version=dg.DataVersion(sha),
    )


class EvaluationRunConfig(dg.Config):
    """Bootstrap replicates and the LightGBM baseline's budget; the vanilla PLE can be skipped when iterating."""

    n_boot: int = core_default(AssessmentSettings, "n_boot")
    lgb_num_boost_round: int = core_default(AssessmentSettings, "lgb_num_boost_round")
    lgb_early_stopping: int = core_default(AssessmentSettings, "lgb_early_stopping")
    # binning of the shared LightGBM matrix: 63 bins cut split finding ~4x on small months
    lgb_max_bin: int = DEFAULT_PARAMS["max_bin"]
    lgb_num_leaves: int = DEFAULT_PARAMS["num_leaves"]
    train_vanilla_ple: bool = core_default(AssessmentSettings, "train_vanilla")


@dg.asset(
    group_name="training",
    partitions_def=MONTHLY,
    deps=["ple_teacher"],
    pool=WAREHOUSE_POOL,
    kinds={"pytorch", "lightgbm"},
    owners=["team:ml-modeling"],
    code_version=code_version(),
    automation_condition=MODEL_CHAIN,
)
def teacher_evaluation(context: dg.AssetExecutionContext, config: EvaluationRunConfig, warehouse: WarehouseResource,
                       artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
    """Out-of-time test month (t-1): the teacher vs per-task LightGBM on the same 1,211 features vs a vanilla
    PLE with MLP experts, with bootstrap CIs, MAP@7 of the product ranking, gate entropy and gate faithfulness."""
    # torch, LightGBM and scikit-learn load here, not when the definitions load
    from ple_platform.core.model.assessment import assess_teacher, gates_markdown, results_markdown

    month = date.fromisoformat(context.partition_key)
    store = artifacts.store()
    key = teacher_checkpoint_key(month)
    if not store.exists(key):
        raise dg.Failure(description=f"no teacher checkpoint at {store.uri(key)}; materialize ple_teacher {month}")
    checkpoint = store.get(key)
    settings = AssessmentSettings(n_boot=config.n_boot, lgb_num_boost_round=config.lgb_num_boost_round,
                                  lgb_early_stopping=config.lgb_early_stopping,
                                  lgb_params={"max_bin": config.lgb_max_bin, "num_leaves": config.lgb_num_leaves},
                                  train_vanilla=config.train_vanilla_ple)
    workdir = Path(tempfile.gettempdir()) / "ple_teacher_evaluation" / month.isoformat()
    with warehouse.get_connection() as con:
        result = assess_teacher(con, checkpoint, workdir, settings)
    # The checkpoint's sha travels with the result: a bundle cites gates only on evidence about its own teacher.
    result = {**result, "teacher_checkpoint_sha256": sha256_bytes(checkpoint)}
    payload = json.dumps(json_ready(result, "teacher_evaluation", digits=5), sort_keys=True).encode()
    uri, sha = store.put(teacher_evaluation_key(month), payload)
    goal = result["goal"]
    return dg.MaterializeResult(
        metadata={
            "test_month": result["split"]["test"],
            "test_customers": result["n_test_customers"],
            "teacher_checkpoint_sha256": sha256_bytes(checkpoint),
            "results": dg.MetadataValue.md(results_markdown(result)),
            "gates": dg.MetadataValue.md(gates_markdown(result)),
            "mean_binary_auc_teacher": result["mean_binary_auc"]["teacher"],
            "mean_binary_auc_lightgbm": result["mean_binary_auc"]["lightgbm"],
            "mean_auc_diff_vs_lightgbm": goal["mean_auc_diff"],
            "quality_goal_met": goal["met"],
            "evaluation_uri": uri,
        },
        data_version=dg.DataVersion(sha),
    )

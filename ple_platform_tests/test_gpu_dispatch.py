"""GPU dispatch through Dagster Pipes: ple_teacher exports its inputs, closes the warehouse, and the worker entry
point trains in another process (the local default every CI run exercises), reporting back through Pipes."""

import io
from datetime import date

import dagster as dg
import duckdb
import numpy as np
import pytest
import torch

from ple_platform.core.model.handoff import HandoffError, pack_teacher_inputs, unpack_teacher_inputs
from ple_platform.core.model.teacher import TeacherSettings, fit_teacher, load_teacher_data
from ple_platform.core.settings import Settings, SettingsError
from ple_platform.core.storage import artifact_store_from_uri, sha256_bytes
from ple_platform.defs.gpu import GPU_POOL, POD_COMMAND, GpuDispatchResource, gpu_pod_spec
from ple_platform.defs.raw.assets import WAREHOUSE_POOL
from ple_platform.defs.resources import build_resources
from ple_platform.defs.training.assets import TeacherRunConfig, ple_teacher, teacher_resume_key
from ple_platform_tests.conftest import PIPELINE_FIT_END, TINY_TEACHER

MONTH = "2015-06-01"
TINY = TeacherSettings(max_customers_per_month=TINY_TEACHER["max_customers_per_month"], epochs=1, batch_size=128,
                       model={"expert_dim": 16, "n_layers": 2})


def _teacher_data(settings: Settings):
    with duckdb.connect(settings.warehouse_path, read_only=True) as con:
        return load_teacher_data(con, date.fromisoformat(MONTH), date.fromisoformat(PIPELINE_FIT_END), TINY)


@pytest.mark.slow  # the archive of real teacher inputs: reads the materialized pipeline
def test_inputs_archive_round_trips_every_array_and_rejects_foreign_bytes(pipeline_env):
    data = _teacher_data(pipeline_env)
    back, month, settings = unpack_teacher_inputs(pack_teacher_inputs(data, date.fromisoformat(MONTH), TINY))
    assert month == date.fromisoformat(MONTH) and settings == TINY
    assert back.split == data.split and back.scaler.content_hash == data.scaler.content_hash
    assert set(back.parts) == set(data.parts) == {"train", "validation"}
    for part, md in data.parts.items():
        got = back.parts[part]
        assert list(got.customer_ids) == list(md.customer_ids)
        assert np.array_equal(got.months, md.months)
        for name in ("txn_seq", "diagrams", "diagram_mask", "holdings"):
            assert np.array_equal(getattr(got, name), getattr(md, name)), (part, name)
        assert set(got.groups) == set(md.groups)
        assert all(np.array_equal(got.groups[g], md.groups[g]) for g in md.groups)
        assert all(np.array_equal(got.labels[t], md.labels[t], equal_nan=True) for t in md.labels)
    with pytest.raises(HandoffError, match="unreadable"):
        unpack_teacher_inputs(b"not an archive")


@pytest.mark.slow  # trains the teacher in a worker process on the materialized pipeline
def test_teacher_trains_through_pipes_subprocess_like_the_in_process_fit(pipeline_env, tmp_path):
    resources = build_resources(pipeline_env)
    assert resources["gpu"].mode == "subprocess"  # the embedded default
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([ple_teacher], partition_key=MONTH, resources=resources, instance=instance,
                            run_config=dg.RunConfig({"ple_teacher": TeacherRunConfig(**TINY_TEACHER)}))
    assert result.success
    md = result.asset_materializations_for_node("ple_teacher")[0].metadata
    assert md["gpu_dispatch"].value == "subprocess" and md["device"].value == "cpu"
    store = artifact_store_from_uri(pipeline_env.artifacts_uri)
    checkpoint = store.get("teacher/2015-06-01/checkpoint.pt")
    assert sha256_bytes(checkpoint) == md["checkpoint_sha256"].value
    assert sha256_bytes(store.get("teacher/2015-06-01/inputs.npz")) == md["inputs_sha256"].value
    # Resume state lives in the artifact store, not in the worker's temporary directory.
    resume = torch.load(io.BytesIO(store.get(teacher_resume_key(date.fromisoformat(MONTH)))), weights_only=True)
    assert resume["epoch"] == 0
    # The worker's log lines come back through Pipes into the step's event log.
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("training on cpu" in m for m in logs) and any("checkpoint" in m and "1 epochs" in m for m in logs)

    # A resumed fit starts from the stored state: with its one epoch already done it reproduces the checkpoint.
    again = dg.materialize([ple_teacher], partition_key=MONTH, resources=resources, instance=instance,
                           run_config=dg.RunConfig({"ple_teacher": TeacherRunConfig(**TINY_TEACHER, resume=True)}))
    assert again.success
    assert any("resuming from" in e.user_message for e in instance.all_logs(again.run_id))
    assert again.asset_materializations_for_node("ple_teacher")[0].metadata["checkpoint_sha256"].value == sha256_bytes(
        checkpoint)

    # Control: the same fit in this process, reading DuckDB directly, gives the same weights bit for bit.
    with duckdb.connect(pipeline_env.warehouse_path, read_only=True) as con:
        local = fit_teacher(con, date.fromisoformat(MONTH), date.fromisoformat(PIPELINE_FIT_END), TINY, tmp_path)
    remote_state = torch.load(io.BytesIO(checkpoint), weights_only=True)["model_state"]
    local_state = torch.load(io.BytesIO(local.checkpoint), weights_only=True)["model_state"]
    assert remote_state.keys() == local_state.keys()
    assert all(torch.equal(remote_state[k], local_state[k]) for k in local_state)


@pytest.mark.slow  # starts the Pipes worker process twice
def test_worker_failure_surfaces_its_error_in_the_step(platform_env):
    """A wrong inputs hash (or any worker error) fails the asset with the worker's own message."""
    store = artifact_store_from_uri(platform_env.artifacts_uri)
    store.put("teacher/x/inputs.npz", b"bytes")

    @dg.asset
    def launches(context: dg.AssetExecutionContext, gpu: GpuDispatchResource):
        gpu.run_worker(context, "train-teacher", {
            "artifacts_uri": platform_env.artifacts_uri, "inputs_key": "teacher/x/inputs.npz",
            "inputs_sha256": "0" * 64, "checkpoint_key": "c", "result_key": "r", "resume_key": "k", "resume": False})

    result = dg.materialize([launches], resources={"gpu": GpuDispatchResource()}, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("launches").error
    text = failure.to_string()
    assert "inputs at" in text and "have SHA-256" in text and "ple_teacher exported 0000000000000000" in text

    @dg.asset
    def no_extras(context: dg.AssetExecutionContext, gpu: GpuDispatchResource):
        gpu.run_worker(context, "train-teacher", {"artifacts_uri": platform_env.artifacts_uri})

    result = dg.materialize([no_extras], resources={"gpu": GpuDispatchResource()}, raise_on_error=False)
    assert "Pipes extras lack" in result.failure_data_for_node("no_extras").error.to_string()


def test_gpu_step_holds_the_gpu_pool_not_the_warehouse_pool():
    from ple_platform.definitions import load_definitions

    defs = load_definitions()

    pools = {a.key.to_user_string(): a.op.pool for a in defs.assets}
    assert pools["ple_teacher"] == GPU_POOL
    assert pools["raw_customers"] == WAREHOUSE_POOL and pools["teacher_evaluation"] == WAREHOUSE_POOL


def test_production_dispatch_is_a_gpu_pod_with_messages_through_s3(platform_env, monkeypatch):
    from dagster_k8s.pipes import build_pod_body

    env = {"PLE_DATA_DIR": str(platform_env.data_dir), "PLE_GPU_DISPATCH": "k8s",
           "PLE_GPU_IMAGE": "registry.example/ple-platform-gpu:1", "PLE_PIPES_BUCKET": "ple-pipes",
           "PLE_K8S_NAMESPACE": "ple"}
    gpu = build_resources(Settings.from_env(env))["gpu"]
    assert (gpu.mode, gpu.image, gpu.namespace, gpu.messages_bucket) == (
        "k8s", "registry.example/ple-platform-gpu:1", "ple", "ple-pipes")
    pod = build_pod_body(pod_name="ple-teacher", image=gpu.image, command=list(POD_COMMAND),
                         env_vars={"DAGSTER_PIPES_CONTEXT": "x"}, base_pod_meta=None,
                         base_pod_spec=gpu.pod_spec()).to_dict()
    spec = pod["spec"]
    container = spec["containers"][0]
    assert container["image"] == "registry.example/ple-platform-gpu:1"
    assert container["command"] == ["ple-platform", "gpu-train-teacher"]
    res = container["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "1"
    assert res["requests"]["cpu"] == "4" and res["requests"]["memory"] == "32Gi"
    assert spec["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["active_deadline_seconds"] == 6 * 3600 and spec["restart_policy"] == "Never"
    # Misconfiguration fails when the settings are read, naming the variables.
    with pytest.raises(SettingsError, match="PLE_GPU_IMAGE"):
        Settings.from_env({**env, "PLE_GPU_IMAGE": ""})
    with pytest.raises(SettingsError, match="PLE_GPU_DISPATCH='gpu'"):
        Settings.from_env({**env, "PLE_GPU_DISPATCH": "gpu"})


def test_pod_spec_keeps_extended_resource_request_equal_to_limit():
    spec = gpu_pod_spec(gpus=2, cpu="8", memory="64Gi", active_deadline_seconds=600)
    res = spec["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "2"
    assert spec["activeDeadlineSeconds"] == 600 and spec["automountServiceAccountToken"] is False

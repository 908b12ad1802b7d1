"""GPU dispatch against a real Kubernetes API server (kube-apiserver v1.20.2 + etcd on 127.0.0.1, built by
infra/build-kube-apiserver.sh), with a node agent playing the GPU node's kubelet and moto's S3 server carrying the
artifacts and the Pipes messages. The production client (PipesK8sClient + PipesS3MessageReader) is used as is."""

import boto3
import dagster as dg
import pytest

from ple_platform.core.storage import artifact_store_from_uri, sha256_bytes
from ple_platform.defs.gpu import GpuDispatchResource
from ple_platform.defs.resources import ArtifactStoreResource, build_resources
from ple_platform.defs.training.assets import TeacherRunConfig, ple_teacher
from ple_platform_tests.conftest import TINY_TEACHER
from ple_platform_tests.kube_cluster import KubeUnavailable, NodeAgent, kube_binaries, kube_cluster
from ple_platform_tests.test_s3_artifacts import s3_endpoint  # noqa: F401 - the moto server fixture

pytestmark = pytest.mark.slow
IMAGE = "registry.example/ple-platform-gpu:test"
AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def cluster():
    try:
        kube_binaries()
    except KubeUnavailable as err:
        pytest.skip(f"kube-apiserver cannot be built here: {err}")
    with kube_cluster() as c:
        # The worker's S3 credentials reach the pod from a Secret, as in production (ple-secrets).
        c.core_api().create_namespaced_secret(c.namespace, {"metadata": {"name": "ple-secrets"}, "stringData": AWS})
        yield c


@pytest.fixture
def s3(s3_endpoint, monkeypatch):  # noqa: F811
    for k, v in AWS.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for bucket in ("ple-artifacts", "ple-pipes"):
        client.create_bucket(Bucket=bucket)
    return s3_endpoint


@pytest.fixture
def node(cluster):
    with NodeAgent(cluster) as agent:
        yield agent


def k8s_gpu(cluster, s3_url, **overrides) -> GpuDispatchResource:
    kw = dict(mode="k8s", image=IMAGE, namespace=cluster.namespace, kubeconfig_file=str(cluster.kubeconfig),
              messages_bucket="ple-pipes", s3_endpoint_url=s3_url, poll_interval_seconds=0.5,
              schedule_timeout_seconds=60, env_from_secrets=["ple-secrets"])
    return GpuDispatchResource(**{**kw, **overrides})


def _worker_asset(artifacts_uri: str, inputs_key: str = "teacher/x/inputs.npz"):
    @dg.asset
    def gpu_probe(context: dg.AssetExecutionContext, gpu: GpuDispatchResource):
        gpu.run_worker(context, "train-teacher", {
            "artifacts_uri": artifacts_uri, "s3_endpoint_url": None, "inputs_key": inputs_key,
            "inputs_sha256": "0" * 64, "checkpoint_key": "c", "result_key": "r", "resume_key": "k", "resume": False})

    return gpu_probe


def _error(result, node_name: str) -> str:
    assert not result.success
    return result.failure_data_for_node(node_name).error.to_string()


def test_teacher_trains_on_a_gpu_pod_through_pipes(pipeline_env, cluster, s3, node):
    resources = build_resources(pipeline_env)
    resources["artifacts"] = ArtifactStoreResource(uri="s3://ple-artifacts/prod", s3_endpoint_url=s3)
    resources["gpu"] = k8s_gpu(cluster, s3)

    @dg.asset
    def cpu_step() -> None:
        """A CPU asset in the same run: it runs in the run's process and starts no pod."""

    result = dg.materialize([ple_teacher, cpu_step], partition_key="2015-06-01", resources=resources,
                            run_config=dg.RunConfig({"ple_teacher": TeacherRunConfig(**TINY_TEACHER)}))
    assert result.success
    md = result.asset_materializations_for_node("ple_teacher")[0].metadata
    assert md["gpu_dispatch"].value == "k8s"
    store = artifact_store_from_uri("s3://ple-artifacts/prod", s3)
    assert md["checkpoint_uri"].value == "s3://ple-artifacts/prod/teacher/2015-06-01/checkpoint.pt"
    assert sha256_bytes(store.get("teacher/2015-06-01/checkpoint.pt")) == md["checkpoint_sha256"].value
    assert store.exists("teacher/2015-06-01/resume/last.pt")

    # Exactly one pod: the GPU fit (the CPU asset requested none). This is the object the API server stored.
    assert len(node.seen) == 1 and node.ran[0]["exit_code"] == 0, node.ran
    pod = node.seen[0]
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert container["image"] == IMAGE and container["command"] == ["ple-platform", "gpu-train-teacher"]
    res = container["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "1"
    assert res["requests"]["cpu"] == "4" and res["requests"]["memory"] == "32Gi"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["activeDeadlineSeconds"] == 6 * 3600 and spec["restartPolicy"] == "Never"
    assert container["envFrom"] == [{"secretRef": {"name": "ple-secrets"}}]
    assert not any(e["name"].startswith("AWS_SECRET") for e in container.get("env", []))
    # The pod is deleted once it has finished.
    assert cluster.core_api().list_namespaced_pod(cluster.namespace).items == []


def test_the_api_server_rejects_a_malformed_pod_and_the_asset_says_why(cluster, s3, node):
    gpu = k8s_gpu(cluster, s3, memory="32 gigabytes")
    result = dg.materialize([_worker_asset("s3://ple-artifacts/x")], resources={"gpu": gpu}, raise_on_error=False)
    text = _error(result, "gpu_probe")
    assert "the Kubernetes API rejected GPU pod" in text and "namespace ple" in text
    assert "quantities must match the regular expression" in text
    assert node.seen == []


def test_a_pod_no_node_can_take_times_out_clearly(cluster, s3, node):
    gpu = k8s_gpu(cluster, s3, node_selector={"nvidia.com/gpu.product": "NVIDIA-H100"}, schedule_timeout_seconds=4)
    result = dg.materialize([_worker_asset("s3://ple-artifacts/x")], resources={"gpu": gpu}, raise_on_error=False)
    text = _error(result, "gpu_probe")
    assert "did not start within 4 s" in text and "phase Pending" in text and "NVIDIA-H100" in text
    assert len(node.seen) == 1 and node.ran == []  # stored by the API server, never run
    assert cluster.core_api().list_namespaced_pod(cluster.namespace).items == []  # and cleaned up


def test_a_failing_pod_surfaces_the_workers_error_in_the_run(cluster, s3, node):
    uri = "s3://ple-artifacts/nowhere"
    gpu = k8s_gpu(cluster, s3)
    result = dg.materialize([_worker_asset(uri)], resources={"gpu": gpu}, raise_on_error=False)
    text = _error(result, "gpu_probe")
    # The worker's own exception, carried by the Pipes messages in S3 (not by pod logs, which no kubelet serves).
    assert "GPU worker 'train-teacher' (k8s) failed" in text
    assert f"artifact 'teacher/x/inputs.npz' not found at {uri}/teacher/x/inputs.npz" in text
    assert node.ran[0]["exit_code"] != 0

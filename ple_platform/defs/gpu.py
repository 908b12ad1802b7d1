"""GPU dispatch through Dagster Pipes: the same worker entry point, locally or on a GPU pod.

``ple_teacher`` exports its inputs to the artifact store, closes the warehouse connection and hands the training
to :class:`GpuDispatchResource`:

* ``mode="subprocess"`` (the embedded default, every CI run): ``dg.PipesSubprocessClient`` runs
  ``python -m ple_platform.gpu_worker train-teacher`` with the run's interpreter; messages via a temp file.
* ``mode="k8s"`` (production): ``dagster_k8s.PipesK8sClient`` creates one pod on the GPU image running
  ``ple-platform gpu-train-teacher``, built by :func:`gpu_pod_spec` (``nvidia.com/gpu`` request = limit, node
  selector + toleration, CPU/memory requests, ``activeDeadlineSeconds``); messages come back through S3
  (``dagster_aws.pipes.PipesS3MessageReader``), not pod logs, which the log API may truncate or lose with the pod.

Why Pipes and not ``k8s_job_executor``: the DuckDB warehouse is a file on the run pod's volume, so a step pod on
a GPU node could not read it; with Pipes only the GPU work leaves the run, and it reads and writes the artifact
store (S3) only (docs/architecture.md, "GPU dispatch").
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from typing import Any

import dagster as dg

# Steps that occupy a GPU share this pool (limit in the instance config); the warehouse pool is not held by them.
GPU_POOL = "gpu"

WORKER_MODULE = "ple_platform.gpu_worker"
POD_COMMAND = ("ple-platform", "gpu-train-teacher")


def gpu_pod_spec(*, gpus: int = 1, cpu: str = "4", memory: str = "32Gi",
                 node_selector: Mapping[str, str] | None = None, active_deadline_seconds: int = 6 * 3600,
                 service_account_name: str | None = None, env_from_secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    """Pod spec (Kubernetes API field names) of one GPU training pod; the Pipes client adds image, command, env."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # A hard cap: a hung or runaway fit frees the GPU node instead of holding it for the whole run timeout.
        "activeDeadlineSeconds": int(active_deadline_seconds),
        # The worker talks to S3 only; no Kubernetes API token is needed inside the pod.
        "automountServiceAccountToken": False,
        # A toleration lets the pod onto tainted GPU nodes; the selector makes it go there.
        "nodeSelector": dict(node_selector or {"nvidia.com/gpu.present": "true"}),
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [{
            "name": "ple-gpu-worker",
            "resources": {
                # Extended resources must have request == limit (the API server rejects anything else).
                "requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(gpus)},
                "limits": {"memory": memory, "nvidia.com/gpu": str(gpus)},
            },
        }],
    }
    if env_from_secrets:  # S3 credentials etc. from Kubernetes Secrets, never in the pod spec itself
        spec["containers"][0]["envFrom"] = [{"secretRef": {"name": name}} for name in env_from_secrets]
    if service_account_name:
        spec["serviceAccountName"] = service_account_name
    return spec


# Kept for mamba_temporal, which still fits its encoder inside the run (tags only read by k8s_job_executor).
GPU_OP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": gpu_pod_spec()["containers"][0]["resources"],
        },
        "pod_spec_config": {
            "node_selector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
}


class GpuDispatchResource(dg.ConfigurableResource):
    """Where GPU work runs. ``mode`` is picked per environment in ``defs/resources.py`` (``PLE_GPU_DISPATCH``)."""

    mode: str = "subprocess"  # "subprocess" | "k8s"
    # k8s mode
    image: str | None = None
    namespace: str = "default"
    kubeconfig_file: str | None = None  # None + load_incluster_config in a cluster
    load_incluster_config: bool = False
    messages_bucket: str | None = None  # S3 bucket of the Pipes message chunks
    s3_endpoint_url: str | None = None
    gpus: int = 1
    cpu: str = "4"
    memory: str = "32Gi"
    node_selector: dict[str, str] | None = None
    active_deadline_seconds: int = 6 * 3600
    # From pod creation until a node runs it (a GPU node pool scaling from zero takes minutes) ...
    schedule_timeout_seconds: float = 1800.0
    # ... and until it terminates.
    pod_wait_timeout_seconds: float = 24 * 3600.0
    poll_interval_seconds: float = 2.0
    env: dict[str, str] | None = None  # extra env for the worker (e.g. AWS_ENDPOINT_URL); no secrets here
    env_from_secrets: list[str] = []  # Kubernetes Secrets whose keys become the worker's env (S3 credentials)

    def pod_spec(self) -> dict[str, Any]:
        return gpu_pod_spec(gpus=self.gpus, cpu=self.cpu, memory=self.memory, node_selector=self.node_selector,
                            active_deadline_seconds=self.active_deadline_seconds,
                            env_from_secrets=tuple(self.env_from_secrets))

    def run_worker(self, context: dg.AssetExecutionContext, job: str, extras: Mapping[str, Any]):
        """Run worker ``job`` (``train-teacher``) through Pipes; returns the completed invocation. A failure of
        the worker raises here with the worker's own error (Pipes forwards the exception)."""
        # The op context: Dagster 1.13's Pipes reads ``context.run_id``, deprecated on AssetExecutionContext only.
        op_context = getattr(context, "op_execution_context", context)
        if self.mode not in ("subprocess", "k8s"):
            raise dg.Failure(description=f"gpu dispatch mode {self.mode!r} is unknown: expected 'subprocess' or "
                                         "'k8s' (PLE_GPU_DISPATCH)")
        try:
            # Dagster 1.13's own Pipes session calls a preview API and warns on every run: noise in a user's terminal.
            warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*expected_writer_count")
            if self.mode == "subprocess":
                return dg.PipesSubprocessClient().run(
                    context=op_context, command=[sys.executable, "-m", WORKER_MODULE, job], extras=dict(extras),
                    env=dict(self.env or {}))
            return self._run_k8s(op_context, extras)
        except dg.Failure:
            raise
        except Exception as err:
            # The client only says "process failed with code 1" or shows the pod status; the worker's own
            # exception came back through Pipes as an engine event of this step: put it in the failure.
            worker_error = _worker_exception(op_context)
            raise dg.Failure(
                description=f"GPU worker '{job}' ({self.mode}) failed: {worker_error or f'{type(err).__name__}: {err}'}",
                metadata={"dispatch": self.mode, "client_error": f"{type(err).__name__}: {err}"[:2000]},
            ) from err

    def _run_k8s(self, context, extras):
        import boto3
        from dagster_aws.pipes import PipesS3MessageReader

        if not self.image or not self.messages_bucket:
            raise dg.Failure(description="gpu dispatch k8s needs an image (PLE_GPU_IMAGE) and a bucket for Pipes "
                                         f"messages (PLE_PIPES_BUCKET); got image={self.image!r}, "
                                         f"bucket={self.messages_bucket!r}")
        reader = PipesS3MessageReader(bucket=self.messages_bucket, interval=self.poll_interval_seconds,
                                      client=boto3.client("s3", endpoint_url=self.s3_endpoint_url))
        client = GpuPodPipesClient(message_reader=reader, kubeconfig_file=self.kubeconfig_file,
                                   load_incluster_config=self.load_incluster_config or None,
                                   poll_interval=self.poll_interval_seconds,
                                   schedule_timeout=self.schedule_timeout_seconds)
        env = dict(self.env or {})
        if self.s3_endpoint_url:
            env.setdefault("AWS_ENDPOINT_URL", self.s3_endpoint_url)
        return client.run(context=context, image=self.image, command=list(POD_COMMAND), namespace=self.namespace,
                          env=env, base_pod_spec=self.pod_spec(), extras=dict(extras),
                          pod_wait_timeout=self.pod_wait_timeout_seconds)


def _gpu_pod_client_class():
    """Built lazily: dagster-k8s (and the kubernetes client) load only where pods are launched."""
    import time

    import kubernetes
    from dagster_k8s import PipesK8sClient
    from dagster_k8s.client import DagsterK8sError, DagsterKubernetesClient, PatchedApiClient, WaitForPodState
    from dagster_k8s.pipes import build_pod_body, get_pod_name

    class _LogTolerantClient(DagsterKubernetesClient):
        def retrieve_pod_logs(self, pod_name, namespace, container_name=None, **kwargs):
            # A failed pod's logs may be gone (evicted, node lost); the worker's error comes back through Pipes.
            try:
                return super().retrieve_pod_logs(pod_name, namespace, container_name, **kwargs)
            except Exception as err:  # noqa: BLE001 - only the diagnostic tail is lost
                return f"(pod logs unavailable: {type(err).__name__})"

    class _GpuPodPipesClient(PipesK8sClient):
        """``PipesK8sClient.run`` plus two guarantees it lacks in dagster-k8s 0.29.27: a pod that is never
        scheduled fails after ``schedule_timeout`` (upstream waits its 24 h launch default whatever
        ``pod_wait_timeout`` says), and API rejections / missing logs become one clear message."""

        def __init__(self, *, schedule_timeout: float, **kwargs):
            super().__init__(**kwargs)
            self.schedule_timeout = schedule_timeout

        def run(self, *, context, extras, image, command, namespace, env, base_pod_spec,  # type: ignore[override]
                pod_wait_timeout):
            self._load_k8s_config()
            client = _LogTolerantClient(
                batch_api=kubernetes.client.BatchV1Api(api_client=PatchedApiClient()),
                core_api=kubernetes.client.CoreV1Api(api_client=PatchedApiClient()),
                logger=context.log.debug, sleeper=time.sleep, timer=time.time)
            with dg.open_pipes_session(context=context, extras=extras, context_injector=self.context_injector,
                                       message_reader=self.message_reader) as session:
                pod_name = get_pod_name(context.run_id, context.op.name)
                body = build_pod_body(pod_name=pod_name, image=image, command=command,
                                      env_vars={**session.get_bootstrap_env_vars(), **(self.env or {}), **env},
                                      base_pod_meta=None, base_pod_spec=base_pod_spec)
                try:
                    client.core_api.create_namespaced_pod(namespace, body)
                except kubernetes.client.ApiException as err:
                    raise dg.Failure(description=f"the Kubernetes API rejected GPU pod {pod_name} in namespace "
                                                 f"{namespace}: {err.status} {err.reason}: {_api_message(err)}")
                context.log.info(f"GPU pod {namespace}/{pod_name} created (image {image})")
                try:
                    client.wait_for_pod(pod_name, namespace, wait_for_state=WaitForPodState.Terminated,
                                        pod_launch_timeout=self.schedule_timeout, wait_timeout=pod_wait_timeout,
                                        wait_time_between_attempts=self.poll_interval)
                except DagsterK8sError as err:
                    if "while waiting for pod to become ready" not in str(err):
                        raise
                    pod = client.core_api.read_namespaced_pod(pod_name, namespace)
                    raise dg.Failure(description=(
                        f"GPU pod {namespace}/{pod_name} did not start within {self.schedule_timeout:g} s "
                        f"(phase {pod.status.phase}, node {pod.spec.node_name or 'none'}): no node took it; check "
                        f"GPU node capacity, nodeSelector {pod.spec.node_selector} and tolerations")) from None
                finally:
                    try:
                        client.core_api.delete_namespaced_pod(pod_name, namespace)
                    except kubernetes.client.ApiException as err:
                        if err.status != 404:
                            raise
            return dg.PipesClientCompletedInvocation(session)

    return _GpuPodPipesClient


def GpuPodPipesClient(**kwargs):  # noqa: N802 - reads like the class it builds
    return _gpu_pod_client_class()(**kwargs)


def _api_message(err) -> str:
    import json

    try:
        return json.loads(err.body).get("message", err.body)
    except (TypeError, ValueError):
        return str(err.body)


def _worker_exception(context) -> str | None:
    """Message of the exception the worker reported when it closed Pipes (the last one of this step), if any."""
    records = context.instance.all_logs(context.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
    for record in reversed(records):
        event = record.dagster_event
        if (event is not None and event.step_key == context.get_step_execution_context().step.key
                and record.user_message.startswith("[pipes] external process pipes closed with exception")):
            error = event.engine_event_data.error
            return error.message.strip() if error is not None else None
    return None

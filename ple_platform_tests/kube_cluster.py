"""A real Kubernetes API server on loopback for the test suite, and a node agent that plays the kubelet.

* ``kube_binaries()``: kube-apiserver v1.20.2 and etcd from ``infra/build-kube-apiserver.sh`` (its cache is reused;
  the first build costs ~9 CPU-minutes).
* ``kube_cluster()``: etcd + kube-apiserver on free 127.0.0.1 ports (token auth, RBAC, the default admission
  chain), a kubeconfig for the admin token, and a namespace with its ``default`` ServiceAccount (what the
  controller-manager, absent here, would create).
* ``NodeAgent``: there is no kubelet or scheduler, so this thread plays one node. It takes Pending pods of its
  namespace whose nodeSelector matches its labels and that tolerate its taints, binds them to itself through the
  API, runs the first container's command locally with the pod's env (the image is not pulled: the local venv is
  the "image"), enforces ``activeDeadlineSeconds``, and writes Running / Succeeded / Failed status with
  ``containerStatuses`` back, as a kubelet does. Pods it cannot take stay Pending, as on a cluster without a
  matching node.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "infra" / "build-kube-apiserver.sh"


def kube_cache() -> Path:
    return Path(os.environ.get("PLE_KUBE_CACHE", Path.home() / ".cache" / "ple-platform" / "kube"))


class KubeUnavailable(RuntimeError):
    """The API server cannot be built here (no apt sources / Go toolchain download): the tier is skipped."""


def kube_binaries() -> tuple[Path, Path]:
    """(kube-apiserver, etcd), building them with the repo script when the cache lacks them."""
    bin_dir = kube_cache() / "bin"
    api, etcd = bin_dir / "kube-apiserver", bin_dir / "etcd"
    if not (api.exists() and etcd.exists()):
        build = subprocess.run(["nice", "-n", "19", str(BUILD_SCRIPT)], capture_output=True, text=True)
        if build.returncode != 0 or not api.exists():
            last = (build.stderr or build.stdout).strip().splitlines()[-1:] or ["no output"]
            raise KubeUnavailable(f"{BUILD_SCRIPT.name} failed ({build.returncode}): {last[0]}")
    return api, etcd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class KubeCluster:
    url: str
    token: str
    kubeconfig: Path
    namespace: str
    root: Path

    def core_api(self):
        import kubernetes

        return kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(str(self.kubeconfig)))


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def kube_cluster(namespace: str = "ple") -> Iterator[KubeCluster]:
    import httpx

    api_bin, etcd_bin = kube_binaries()
    root = Path(tempfile.mkdtemp(prefix="ple-kube-"))
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start([str(etcd_bin), "--data-dir", str(root / "etcd"), "--listen-client-urls", etcd_url,
                             "--advertise-client-urls", etcd_url, "--listen-peer-urls",
                             f"http://127.0.0.1:{peer_port}", "--initial-advertise-peer-urls",
                             f"http://127.0.0.1:{peer_port}", "--initial-cluster",
                             f"default=http://127.0.0.1:{peer_port}"], root / "etcd.log"))
        subprocess.run(["openssl", "genrsa", "-out", str(root / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(root / "sa.key"), "-pubout", "-out", str(root / "sa.pub")],
                       check=True, capture_output=True)
        token = "ple-test-admin-token"
        (root / "tokens.csv").write_text(f"{token},admin,admin,system:masters\n")
        procs.append(_start([
            str(api_bin), f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}", "--insecure-port=0", f"--token-auth-file={root / 'tokens.csv'}",
            "--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={root / 'sa.pub'}",
            f"--service-account-signing-key-file={root / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/24", f"--cert-dir={root / 'certs'}",
        ], root / "apiserver.log"))
        url = f"https://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 90
        while True:
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}: "
                                       f"{(root / ('etcd.log' if p is procs[0] else 'apiserver.log')).read_text()[-2000:]}")
            try:
                # Self-signed serving cert (SANs include 127.0.0.1), written at start-up: trusted as the CA.
                ca = root / "certs" / "apiserver.crt"
                if ca.exists() and httpx.get(f"{url}/readyz", headers={"Authorization": f"Bearer {token}"},
                                             verify=ssl.create_default_context(cafile=str(ca)),
                                             timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver not ready after 90 s: {(root / 'apiserver.log').read_text()[-2000:]}")
            time.sleep(0.5)
        kubeconfig = root / "kubeconfig"
        kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: ple-test, cluster: {{server: "{url}", certificate-authority: "{root / 'certs' / 'apiserver.crt'}"}}}}]
users: [{{name: admin, user: {{token: {token}}}}}]
contexts: [{{name: ple-test, context: {{cluster: ple-test, user: admin, namespace: {namespace}}}}}]
current-context: ple-test
""")
        cluster = KubeCluster(url, token, kubeconfig, namespace, root)
        core = cluster.core_api()
        core.create_namespace({"metadata": {"name": namespace}})
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "default"}})
        yield cluster
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(root, ignore_errors=True)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class NodeAgent:
    """One fake GPU node: label ``nvidia.com/gpu.present=true`` and taint ``nvidia.com/gpu:NoSchedule``."""

    cluster: KubeCluster
    name: str = "ple-gpu-node-0"
    labels: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    taints: tuple[tuple[str, str], ...] = (("nvidia.com/gpu", "NoSchedule"),)
    seen: list[dict] = field(default_factory=list)  # every pod the API server stored (as dicts), in order
    ran: list[dict] = field(default_factory=list)  # {"pod", "exit_code", "stderr"} of pods this node ran
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> NodeAgent:
        self._core = self.cluster.core_api()
        self._handled: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="ple-node-agent", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _schedulable(self, pod) -> bool:
        selector = pod.spec.node_selector or {}
        if any(self.labels.get(k) != v for k, v in selector.items()):
            return False
        tolerated = {(t.key, t.effect) for t in (pod.spec.tolerations or []) if t.operator in ("Exists", None)}
        return all((k, e) in tolerated for k, e in self.taints)

    def _loop(self) -> None:
        ns = self.cluster.namespace
        while not self._stop.is_set():
            for pod in self._core.list_namespaced_pod(ns).items:
                uid = pod.metadata.uid
                if uid in self._handled:
                    continue
                self._handled.add(uid)
                self.seen.append(self._core.api_client.sanitize_for_serialization(pod))
                if pod.status.phase == "Pending" and self._schedulable(pod):
                    threading.Thread(target=self._run_pod, args=(pod,), daemon=True).start()
            self._stop.wait(0.2)

    def _env(self, container) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        env = {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.cluster.root),
               "PLE_COMPUTE_THREADS": "1"}
        import base64

        for source in container.env_from or []:  # as the kubelet does: Secret keys become variables
            if source.secret_ref is not None:
                secret = self._core.read_namespaced_secret(source.secret_ref.name, self.cluster.namespace)
                env.update({k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()})
        for var in container.env or []:
            env[var.name] = var.value or ""
        return env

    def _status(self, name: str, status: dict) -> None:
        self._core.patch_namespaced_pod_status(name, self.cluster.namespace, {"status": status})

    def _run_pod(self, pod) -> None:
        ns, name = self.cluster.namespace, pod.metadata.name
        container = pod.spec.containers[0]
        self._core.create_namespaced_binding(
            ns, {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                 "target": {"apiVersion": "v1", "kind": "Node", "name": self.name}}, _preload_content=False)
        started = _now()
        self._status(name, {"phase": "Running", "startTime": started, "containerStatuses": [
            {"name": container.name, "image": container.image, "imageID": "", "ready": True, "restartCount": 0,
             "state": {"running": {"startedAt": started}}}]})
        workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.cluster.root))
        argv = list(container.command or []) + list(container.args or [])
        deadline = pod.spec.active_deadline_seconds
        try:
            proc = subprocess.run(argv, env=self._env(container), cwd=workdir, capture_output=True, text=True,
                                  timeout=deadline)
            code, stderr = proc.returncode, proc.stderr
            reason = "Completed" if code == 0 else "Error"
        except subprocess.TimeoutExpired as err:
            code, stderr, reason = 137, str(err.stderr or ""), "DeadlineExceeded"
        except OSError as err:  # command not found in the "image"
            code, stderr, reason = 127, str(err), "ContainerCannotRun"
        self.ran.append({"pod": name, "exit_code": code, "stderr": stderr})
        self._status(name, {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [
            {"name": container.name, "image": container.image, "imageID": "", "ready": False, "restartCount": 0,
             "state": {"terminated": {"exitCode": code, "reason": reason, "message": stderr[-1000:],
                                      "startedAt": started, "finishedAt": _now()}}}]})

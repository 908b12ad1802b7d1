"""The S3 artifact store against a real S3 HTTP endpoint: moto's server on 127.0.0.1 (no network, no keys)."""

import os
import signal
import socket
import subprocess
import sys
import time

import boto3
import httpx
import pytest

from ple_platform.core.storage import ArtifactNotFound, artifact_store_from_uri, sha256_bytes

pytestmark = pytest.mark.slow  # starts a moto S3 server process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="ple-artifacts")
    return s3_endpoint


def test_put_get_exists_round_trip_with_content_hash(bucket):
    store = artifact_store_from_uri("s3://ple-artifacts/prod", endpoint_url=bucket)
    data = b"tree\nversion=v4\n" * 1000
    uri, sha = store.put("students/2016-05-01/churn_signal/abc.txt", data)
    assert uri == "s3://ple-artifacts/prod/students/2016-05-01/churn_signal/abc.txt"
    assert sha == sha256_bytes(data)
    assert store.exists("students/2016-05-01/churn_signal/abc.txt")
    assert store.get("students/2016-05-01/churn_signal/abc.txt") == data
    # The object carries its hash as S3 metadata, readable without downloading it.
    head = boto3.client("s3", endpoint_url=bucket).head_object(
        Bucket="ple-artifacts", Key="prod/students/2016-05-01/churn_signal/abc.txt")
    assert head["Metadata"]["sha256"] == sha


def test_missing_artifact_is_a_clear_error_naming_it(bucket):
    store = artifact_store_from_uri("s3://ple-artifacts/prod", endpoint_url=bucket)
    assert not store.exists("teacher/2016-05-01/checkpoint.pt")
    with pytest.raises(ArtifactNotFound, match="teacher/2016-05-01/checkpoint.pt"):
        store.get("teacher/2016-05-01/checkpoint.pt")

"""Artifact store for binary artifacts (checkpoints, LightGBM models, fitted feature state, reports).

Local folder by default, S3 (any endpoint, e.g. a moto server in tests) in production. Every write is
atomic and returns the SHA-256 of the bytes, which lineage and the audit log record.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class ArtifactNotFound(FileNotFoundError):
    pass


class ArtifactStore(Protocol):
    def put(self, key: str, data: bytes) -> tuple[str, str]:
        """Store bytes under key; return (uri, sha256)."""

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def uri(self, key: str) -> str: ...


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"artifact key {key!r} must be a relative path without '..'")
    return key


@dataclass(frozen=True)
class LocalArtifactStore:
    root: Path

    def uri(self, key: str) -> str:
        return str(Path(self.root) / _check_key(key))

    def put(self, key: str, data: bytes) -> tuple[str, str]:
        path = Path(self.uri(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half of one
        return str(path), sha256_bytes(data)

    def get(self, key: str) -> bytes:
        path = Path(self.uri(key))
        if not path.exists():
            raise ArtifactNotFound(f"artifact {key!r} not found at {path}")
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return Path(self.uri(key)).exists()


@dataclass(frozen=True)
class S3ArtifactStore:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None

    def _client(self):
        import boto3  # imported lazily: only the S3 profile needs it

        return boto3.client("s3", endpoint_url=self.endpoint_url)

    def _key(self, key: str) -> str:
        return f"{self.prefix.strip('/')}/{_check_key(key)}".lstrip("/")

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def put(self, key: str, data: bytes) -> tuple[str, str]:
        digest = sha256_bytes(data)
        # A single PUT is atomic in S3: readers never see a partial object.
        self._client().put_object(Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={"sha256": digest})
        return self.uri(key), digest

    def get(self, key: str) -> bytes:
        client = self._client()
        try:
            return client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except client.exceptions.NoSuchKey:
            raise ArtifactNotFound(f"artifact {key!r} not found at {self.uri(key)}") from None

    def exists(self, key: str) -> bool:
        client = self._client()
        try:
            client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except client.exceptions.ClientError:
            return False


def artifact_store_from_uri(uri: str, endpoint_url: str | None = None) -> ArtifactStore:
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        return S3ArtifactStore(bucket=bucket, prefix=prefix, endpoint_url=endpoint_url)
    return LocalArtifactStore(Path(uri))

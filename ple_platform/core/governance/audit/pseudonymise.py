"""Keyed pseudonymisation of customer identifiers (HMAC-SHA256, truncated to 80 bits).

The source system's customer number never reaches the warehouse: raw ingest replaces it with
``HMAC(key, source_id)``. The same key gives the same pseudonym every month (joins across months work);
without the key the mapping cannot be recomputed. The HMAC is evaluated inside DuckDB so a 20M-row
transactions month is pseudonymised without leaving the database engine.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Mapping

PSEUDONYM_HEX_CHARS = 20  # 80 bits: collision probability ~1e-12 at 1M customers
KEY_ENV_VAR = "PLE_PSEUDONYMISATION_KEY"
# Documented demo default. Refused when PLE_ENV=prod (see pseudonymisation_key).
DEV_KEY = b"ple-platform-dev-only-pseudonymisation-key"


class MissingSecretError(RuntimeError):
    """A secret required in production is not set."""


def pseudonymisation_key(environ: Mapping[str, str] | None = None) -> bytes:
    e = os.environ if environ is None else environ
    value = e.get(KEY_ENV_VAR)
    if value:
        return value.encode()
    if e.get("PLE_ENV", "dev") == "prod":
        raise MissingSecretError(
            f"{KEY_ENV_VAR} is not set: production ingest refuses to pseudonymise customer ids with the dev key"
        )
    return DEV_KEY


def pseudonymise(source_id: str, key: bytes) -> str:
    """Reference implementation (used by tests and the serving API)."""
    return hmac.new(key, source_id.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_CHARS]


def hmac_sql(expr: str, key: bytes) -> str:
    """A DuckDB SQL expression computing ``pseudonymise(expr, key)`` for a VARCHAR expression.

    HMAC(K, m) = H((K' ^ opad) || H((K' ^ ipad) || m)), with K' the key zero-padded to the 64-byte block.
    """
    block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    ipad = bytes(b ^ 0x36 for b in block).hex()
    opad = bytes(b ^ 0x5C for b in block).hex()
    inner = f"unhex(sha256(unhex('{ipad}') || encode(CAST({expr} AS VARCHAR))))"
    return f"left(sha256(unhex('{opad}') || {inner}), {PSEUDONYM_HEX_CHARS})"

"""Keyed pseudonymisation of customer identifiers (HMAC-SHA256, truncated to 80 bits).

The source system's customer number never reaches the warehouse: raw ingest replaces it with
``HMAC(key, source_id)``. The same key gives the same pseudonym every month (joins across months work);
without the key the mapping cannot be recomputed. The HMAC is evaluated inside DuckDB so a 20M-row
transactions month is pseudonymised without leaving the database engine.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Mapping

from ple_platform.core.secrets import (  # noqa: F401  (MissingSecretError: re-exported)
    DEV_PSEUDONYMISATION_KEY, PSEUDONYMISATION_KEY_ENV_VAR, MissingSecretError, pseudonymisation_key_material)

PSEUDONYM_HEX_CHARS = 20  # 80 bits: collision probability ~1e-12 at 1M customers
KEY_ENV_VAR = PSEUDONYMISATION_KEY_ENV_VAR
DEV_KEY = DEV_PSEUDONYMISATION_KEY  # documented demo default, refused when PLE_ENV=prod


def pseudonymisation_key(environ: Mapping[str, str] | None = None) -> bytes:
    """The key from ``PLE_PSEUDONYMISATION_KEY``; ``DEV_KEY`` outside production (rules: core/secrets.py)."""
    return pseudonymisation_key_material(environ).value


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

"""HMAC keys from the environment, with the rules production enforces and a record of where each came from.

Two keys exist: the pseudonymisation key (customer number -> pseudonym) and the audit key (hash chain of the
audit log). Both have a documented development default so the demo and tests run without configuration; those
defaults are public in the source, so anyone holding them can re-identify pseudonyms or forge audit entries.
With ``PLE_ENV=prod`` a key must be set, must not be either published default, and must be at least
``MIN_KEY_BYTES`` long (HMAC-SHA256 keys shorter than the 32-byte output weaken it to the key's length).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

MIN_KEY_BYTES = 32
DEV_DEFAULT_SOURCE = "dev_default"
PSEUDONYMISATION_KEY_ENV_VAR = "PLE_PSEUDONYMISATION_KEY"
AUDIT_KEY_ENV_VAR = "PLE_AUDIT_KEY"
PSEUDONYMISATION_PURPOSE = "pseudonymise customer ids"
AUDIT_PURPOSE = "write or verify the audit log"
# The published defaults. Refused in production whichever variable carries them.
DEV_PSEUDONYMISATION_KEY = b"ple-platform-dev-only-pseudonymisation-key"
DEV_AUDIT_KEY = b"ple-platform-dev-only-audit-log-key"
_PUBLISHED = {DEV_PSEUDONYMISATION_KEY: "development pseudonymisation key",
              DEV_AUDIT_KEY: "development audit key"}


class MissingSecretError(RuntimeError):
    """A secret required in production is missing, published or too short; the message names the variable."""


@dataclass(frozen=True)
class KeyMaterial:
    """A key and where it came from: ``env:<VARIABLE>`` or ``dev_default``."""

    value: bytes
    source: str

    def __repr__(self) -> str:  # never print the key itself
        return f"KeyMaterial(source={self.source!r}, {len(self.value)} bytes)"


def key_material(value: str | bytes | None, env_var: str, dev_default: bytes, purpose: str,
                 env: str = "dev") -> KeyMaterial:
    """The key ``value`` (as configured in ``env_var``); outside production its documented default when unset.
    The caller passes the value in (a Dagster resource reads it through ``dg.EnvVar``); the rules live here."""
    raw = value.encode() if isinstance(value, str) else (value or b"")
    if env != "prod":
        return KeyMaterial(raw, f"env:{env_var}") if raw else KeyMaterial(dev_default, DEV_DEFAULT_SOURCE)
    if not raw:
        raise MissingSecretError(f"{env_var} is not set: production refuses to {purpose} with the dev key")
    if raw in _PUBLISHED:
        raise MissingSecretError(f"{env_var} is the published {_PUBLISHED[raw]}: production needs a secret "
                                 f"of its own to {purpose}")
    if len(raw) < MIN_KEY_BYTES:
        raise MissingSecretError(f"{env_var} is {len(raw)} bytes: production needs at least {MIN_KEY_BYTES} "
                                 f"bytes to {purpose}")
    return KeyMaterial(raw, f"env:{env_var}")


def resolve_key(env_var: str, dev_default: bytes, purpose: str,
                environ: Mapping[str, str] | None = None) -> KeyMaterial:
    """The key in ``env_var`` of ``environ`` (default ``os.environ``): for the CLI and other non-Dagster callers."""
    e = os.environ if environ is None else environ
    return key_material(e.get(env_var), env_var, dev_default, purpose, e.get("PLE_ENV", "dev"))


def pseudonymisation_key_from(value: str | bytes | None, env: str = "dev") -> KeyMaterial:
    return key_material(value, PSEUDONYMISATION_KEY_ENV_VAR, DEV_PSEUDONYMISATION_KEY, PSEUDONYMISATION_PURPOSE, env)


def audit_key_from(value: str | bytes | None, env: str = "dev") -> KeyMaterial:
    return key_material(value, AUDIT_KEY_ENV_VAR, DEV_AUDIT_KEY, AUDIT_PURPOSE, env)


def pseudonymisation_key_material(environ: Mapping[str, str] | None = None) -> KeyMaterial:
    return resolve_key(PSEUDONYMISATION_KEY_ENV_VAR, DEV_PSEUDONYMISATION_KEY, PSEUDONYMISATION_PURPOSE, environ)


def audit_key_material(environ: Mapping[str, str] | None = None) -> KeyMaterial:
    return resolve_key(AUDIT_KEY_ENV_VAR, DEV_AUDIT_KEY, AUDIT_PURPOSE, environ)


def check_production_keys(environ: Mapping[str, str] | None = None) -> None:
    """Raise ``MissingSecretError`` for the first unusable key (no-op outside production)."""
    pseudonymisation_key_material(environ)
    audit_key_material(environ)

"""Knobs of the compliance evidence (core/governance/compliance/evidence.py), apart from it so that run configs
read their defaults without importing the evidence loader's torch and plotting dependencies."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvidenceSettings:
    n_boot: int = 200
    min_group_size: int = 50  # smaller groups are "insufficient evidence", never a pass
    landing_kind: str = "synthetic"
    require_approval: bool = False
    # Where each HMAC key came from: "env:<VARIABLE>" when configured, "dev_default" for the published key.
    pseudonymisation_key_source: str = "dev_default"
    audit_key_source: str = "dev_default"

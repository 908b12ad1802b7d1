"""Governance: pseudonymisation, audit log, registry, fairness, reports."""

"""Governance: the audit trail (audit/), model promotion (promotion/) and compliance reporting (compliance/)."""

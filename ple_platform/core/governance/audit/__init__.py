"""Audit trail: pseudonymisation, the governance store, the HMAC-chained audit log and lineage walks."""

"""Canonical raw data: schema, product and MCC taxonomies, synthetic generator, Santander adapter, validation."""

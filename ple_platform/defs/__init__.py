"""Dagster wiring only: assets, checks, sensors, jobs, resources, partitions. Domain logic lives in core."""

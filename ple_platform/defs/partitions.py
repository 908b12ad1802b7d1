"""The one monthly partitions definition every asset uses (snapshot months, keyed by their first day).

Read from the environment (``PLE_START_MONTH``, ``PLE_END_MONTH``) when the definitions are imported, not through
the settings resource: the partition set is a definition-time fact — Dagster needs it to build the asset graph,
the UI's partition bars and backfills before any run (and any resource) exists. Settings that only a running
step needs come from the ``settings`` resource (defs/resources.py).
"""

from __future__ import annotations

import dagster as dg

from ple_platform.core.data.schema import add_months
from ple_platform.core.settings import Settings


def monthly_partitions(settings: Settings) -> dg.MonthlyPartitionsDefinition:
    # end_date is exclusive, so the last partition is settings.end_month.
    return dg.MonthlyPartitionsDefinition(
        start_date=settings.start_month.isoformat(),
        end_date=add_months(settings.end_month, 1).isoformat(),
        timezone="UTC",
    )


MONTHLY = monthly_partitions(Settings.from_env())

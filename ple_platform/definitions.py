"""The one ``Definitions`` object of ple-platform (loaded by ``dg``, workspace.yaml and ``dagster dev``).

Every asset, check, job and sensor is discovered under ``ple_platform/defs/``; resources are added here from
one place (``defs/resources.py``), chosen by the environment.
"""

import warnings
from pathlib import Path

# Three deliberate uses of non-GA Dagster APIs, silenced by exact message only (everything else still warns):
# partitioned asset checks (per-month check results), allow_nonexistent_upstream_partitions (warm-up
# months have less history than a feature's lookback window) and the raw assets' single-run backfill policy.
# Set before the asset modules are imported.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")
warnings.filterwarnings("ignore", message="Parameter `allow_nonexistent_upstream_partitions`")
warnings.filterwarnings("ignore", message="Parameter `backfill_policy` of function `asset`")

import dagster as dg  # noqa: E402

from ple_platform.core.settings import Settings  # noqa: E402
from ple_platform.defs.resources import build_resources  # noqa: E402


def load_definitions() -> dg.Definitions:
    """Load the definitions folder and bind the resources of the current environment."""
    found = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return dg.Definitions.merge(found, dg.Definitions(resources=build_resources(Settings.from_env())))


@dg.definitions
def defs() -> dg.Definitions:
    return load_definitions()

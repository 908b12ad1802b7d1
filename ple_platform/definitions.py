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


def load_defs_folder() -> dg.Definitions:
    """Every definition under ``defs/``, discovered the way ``dg.load_from_defs_folder`` does (same project
    config in ``[tool.dg.project]``, same ``ComponentTree``), but built at the defs folder rather than at the
    tree's root.

    The root adds two things this project does not use, and one of them is most of the load time: a catalogue
    of every component type installed in the environment (Dagster's ``dagster_dg_cli.registry_modules`` entry
    points, shown in the UI's Docs tab). ``dagster-aws`` registers one, and importing it loads boto3, the
    Athena and Secrets Manager resources and, through them, Dagster's internal test utilities with alembic and
    sqlalchemy: ~2.5 s of every `dg` command, `dagster dev`, the daemon and each run worker
    (docs/benchmarks.md, fast feedback). The other is app-managed components (created in the Dagster+ UI).
    ``dg list components`` still lists the installed types; it reads the entry points itself.
    """
    tree = dg.ComponentTree.for_project(Path(__file__).parent)
    # load_from_defs_folder silences Dagster's own preview warnings about its loader; so does this call.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return tree.build_defs(tree.defs_module_path)


def load_definitions() -> dg.Definitions:
    """Load the definitions folder and bind the resources of the current environment."""
    return dg.Definitions.merge(load_defs_folder(), dg.Definitions(resources=build_resources(Settings.from_env())))


@dg.definitions
def defs() -> dg.Definitions:
    return load_definitions()

"""The one ``Definitions`` object of ple-platform (loaded by workspace.yaml and ``dagster dev``)."""

import warnings

# Two deliberate uses of non-GA Dagster APIs, silenced by exact message only (everything else still warns):
# partitioned asset checks (per-month check results) and allow_nonexistent_upstream_partitions (warm-up
# months have less history than a feature's lookback window). Set before the asset modules are imported.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")
warnings.filterwarnings("ignore", message="Parameter `allow_nonexistent_upstream_partitions`")

import dagster as dg  # noqa: E402

from ple_platform.core.settings import Settings  # noqa: E402
from ple_platform.defs.distillation.assets import distillation_dataset, model_bundle, student_assets  # noqa: E402
from ple_platform.defs.features.assets import feature_assets  # noqa: E402
from ple_platform.defs.governance.promotion import (  # noqa: E402
    champion_challenger_sensor,
    governance_assets,
    governance_jobs,
)
from ple_platform.defs.governance.reports import report_assets  # noqa: E402
from ple_platform.defs.governance.serving import serving_assets  # noqa: E402
from ple_platform.defs.labels.assets import task_labels  # noqa: E402
from ple_platform.defs.raw.assets import raw_assets  # noqa: E402
from ple_platform.defs.resources import build_resources  # noqa: E402
from ple_platform.defs.training.assets import ple_teacher, teacher_evaluation  # noqa: E402

defs = dg.Definitions(
    assets=[*raw_assets, *feature_assets, task_labels, ple_teacher, teacher_evaluation, distillation_dataset,
            *student_assets, model_bundle, *governance_assets, *report_assets,
            *serving_assets],
    jobs=governance_jobs,
    sensors=[champion_challenger_sensor],
    resources=build_resources(Settings.from_env()),
)

"""The one ``Definitions`` object of ple-platform (loaded by workspace.yaml and ``dagster dev``)."""

from __future__ import annotations

import dagster as dg

from ple_platform.core.settings import Settings
from ple_platform.defs.features.assets import feature_assets
from ple_platform.defs.raw.assets import raw_assets
from ple_platform.defs.resources import build_resources

defs = dg.Definitions(
    assets=[*raw_assets, *feature_assets],
    resources=build_resources(Settings.from_env()),
)

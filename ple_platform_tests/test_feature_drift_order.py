"""The features' drift check reads month t-1 through a declared self-dependency: months run out of order say
"t-1 not materialized" instead of passing, the first month passes as having nothing to compare, and once t-1 is
stored the result equals the in-order run's (the control, on its own warehouse)."""

import dagster as dg

from ple_platform.core.settings import Settings
from ple_platform.defs.features.assets import feature_assets
from ple_platform.defs.raw.assets import raw_assets
from ple_platform.defs.resources import build_resources
from ple_platform_tests.conftest import materialize

GROUP = "demographics"
MONTHS = ["2015-01-01", "2015-02-01", "2015-03-01"]
ASSET = next(a for a in feature_assets if a.key == dg.AssetKey(GROUP))


def _platform(tmp_path, landing_dir, name):
    env = {"PLE_DATA_DIR": str(tmp_path / name), "PLE_LANDING": str(landing_dir), "PLE_LANDING_KIND": "synthetic",
           "PLE_FIT_END_MONTH": "2015-04-01"}
    resources = build_resources(Settings.from_env(env))
    for m in MONTHS:
        assert materialize(raw_assets, m, resources, raise_on_error=True).success
    return resources


def _drift(resources, month):
    result = materialize([ASSET], month, resources, raise_on_error=True)
    (evaluation,) = [e for e in result.get_asset_check_evaluations()
                     if e.check_name == "psi_drift_vs_previous_month"]
    return evaluation


def test_the_drift_check_declares_month_t_minus_1_and_does_not_depend_on_order(tmp_path, landing_dir):
    dep = next(d for d in ASSET.specs_by_key[ASSET.key].deps if d.asset_key == ASSET.key)
    assert dep.partition_mapping == dg.TimeWindowPartitionMapping(
        start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True)

    in_order = _platform(tmp_path, landing_dir, "in_order")
    control = {m: _drift(in_order, m) for m in MONTHS}
    assert control[MONTHS[0]].passed and control[MONTHS[0]].metadata["evaluated"].value is False
    assert all("max_psi" in control[m].metadata for m in MONTHS[1:])

    reverse = _platform(tmp_path, landing_dir, "reverse")
    backwards = {m: _drift(reverse, m) for m in reversed(MONTHS)}
    for m in MONTHS[1:]:
        # Run before its t-1: not a silent pass.
        assert not backwards[m].passed and backwards[m].severity == dg.AssetCheckSeverity.WARN
        assert "t-1 of this group is not materialized" in backwards[m].description
    assert backwards[MONTHS[0]].passed  # the first month has no t-1 and is never "missing" one

    # Re-run in the order the dependency declares: the same PSI as the in-order control.
    rerun = {m: _drift(reverse, m) for m in MONTHS[1:]}
    for m in MONTHS[1:]:
        assert rerun[m].passed == control[m].passed
        assert rerun[m].metadata["max_psi"].value == control[m].metadata["max_psi"].value

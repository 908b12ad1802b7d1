"""The 17 feature groups on real warehouse data: widths, no look-ahead, row-order independence."""

import shutil
from datetime import date

import duckdb
import numpy as np
import pytest

from ple_platform.core.features.build import BuildContext, build_group
from ple_platform.core.features.fits import FitPolicy, FitStore
from ple_platform.core.features.spec import FEATURE_GROUPS, TOTAL_FEATURE_WIDTH, all_columns
from ple_platform.core.storage import LocalArtifactStore
from ple_platform.defs.raw.assets import raw_assets
from ple_platform.defs.resources import build_resources
from ple_platform.core.settings import Settings
from ple_platform_tests.conftest import materialize

# SPEC §4 table: the contract every downstream consumer relies on.
SPEC_DIMS = {
    "demographics": 17, "product_holdings": 24, "txn_behavior": 14, "derived_temporal": 4, "tda_global": 16,
    "tda_local": 16, "hmm_states": 25, "mamba_temporal": 50, "product_hierarchy": 34, "merchant_hierarchy": 27,
    "graph_collaborative": 66, "gmm_clustering": 16, "model_derived": 27, "txn_lag_tensor": 800,
    "txn_rolling_stats": 20, "product_history_multihot": 24, "mcc_top30_multihot": 31,
}
T = date(2015, 3, 1)
FIT_END = date(2015, 6, 1)  # later than T: the fit for T must still anchor at T and read nothing after it


def test_spec_widths_match_the_contract():
    assert {g.name: g.dim for g in FEATURE_GROUPS} == SPEC_DIMS
    assert TOTAL_FEATURE_WIDTH == 1211 == len(set(all_columns()))


def _ingest(tmp_path_factory, landing_dir, months, name):
    root = tmp_path_factory.mktemp(name)
    env = {"PLE_DATA_DIR": str(root), "PLE_LANDING": str(landing_dir)}
    resources = build_resources(Settings.from_env(env))
    for m in months:
        assert materialize(raw_assets, m.isoformat(), resources).success
    return root / "warehouse.duckdb"


@pytest.fixture(scope="session")
def warehouses(tmp_path_factory, landing_dir):
    """Three warehouses over the same landing data: months <= T, months <= T+3, and months <= T stored shuffled."""
    short = _ingest(tmp_path_factory, landing_dir, [date(2015, m, 1) for m in (1, 2, 3)], "wh_short")
    long = _ingest(tmp_path_factory, landing_dir, [date(2015, m, 1) for m in (1, 2, 3, 4, 5, 6)], "wh_long")
    shuffled = tmp_path_factory.mktemp("wh_shuffled") / "warehouse.duckdb"
    shutil.copy(short, shuffled)
    with duckdb.connect(str(shuffled)) as con:
        con.execute("SELECT setseed(0.42)")
        for t in ("customers", "holdings", "transactions"):
            con.execute(f"CREATE TABLE raw.tmp AS SELECT * FROM raw.{t} ORDER BY random()")
            con.execute(f"DROP TABLE raw.{t}")
            con.execute(f"ALTER TABLE raw.tmp RENAME TO {t}")
    return {"short": short, "long": long, "shuffled": shuffled}


def _features(path, tmp_path, name: str) -> tuple[np.ndarray, np.ndarray]:
    with duckdb.connect(str(path)) as con:
        store = LocalArtifactStore(tmp_path / f"artifacts_{path.parent.name}")
        ctx = BuildContext(con, T, FitPolicy(fit_end=FIT_END, first_month=date(2015, 1, 1)), FitStore(store, con), fit_sample=400, tree_epochs=150, mamba_fit_sample=200)
        out = build_group(name, ctx)
        return ctx.pop.customer_ids, out.values


@pytest.mark.parametrize("name", [g.name for g in FEATURE_GROUPS])
def test_no_look_ahead_and_row_order_independence(warehouses, tmp_path_factory, name):
    tmp = tmp_path_factory.mktemp(f"fits_{name}")
    ids_short, short = _features(warehouses["short"], tmp, name)
    ids_long, long = _features(warehouses["long"], tmp, name)
    ids_shuf, shuf = _features(warehouses["shuffled"], tmp, name)
    assert len(ids_short) > 100 and short.shape[1] == SPEC_DIMS[name]
    assert np.isfinite(short).all()
    # Later months in the warehouse change nothing about month T.
    np.testing.assert_array_equal(ids_short, ids_long)
    np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-6)
    # Storage order of the raw rows changes nothing about any customer's features.
    np.testing.assert_array_equal(ids_short, ids_shuf)
    np.testing.assert_allclose(short, shuf, rtol=1e-5, atol=1e-6)
    # Not a constant group: customers differ.
    assert (short.std(axis=0) > 0).any()
    # A second computation reuses the stored fits (safetensors round trip) and gives the same features.
    _, again = _features(warehouses["short"], tmp, name)
    np.testing.assert_array_equal(again, short)

"""Task labels from month t+1, the newest month's explicit absence, and the time split."""

from datetime import date

import duckdb
import numpy as np
import pytest

from ple_platform.core.data.schema import PRODUCT_GROUPS
from ple_platform.core.tasks.labels import LabelsUnavailable, read_labels
from ple_platform.core.tasks.split import SplitError, time_split
from ple_platform.defs.labels.assets import task_labels
from ple_platform.defs.raw.assets import raw_assets
from ple_platform_tests.conftest import materialize


def test_split_never_trains_or_validates_on_the_test_month():
    s = time_split(date(2016, 5, 1), first_train_month=date(2015, 6, 1))
    assert s.test == date(2016, 4, 1) and s.validation == date(2016, 3, 1)
    assert s.train[0] == date(2015, 6, 1) and s.train[-1] == date(2016, 2, 1)
    assert s.test not in s.train and s.validation not in s.train
    # Label month t-1 reads raw month t: the newest data; training label months read at most raw t-2.
    assert max(s.train) < s.validation < s.test < s.model_month
    with pytest.raises(SplitError, match="warm-up"):
        time_split(date(2015, 8, 1), first_train_month=date(2015, 6, 1))


def test_labels_come_from_the_next_month(platform_env, resources):
    for m in ("2015-01-01", "2015-02-01", "2015-03-01"):
        assert materialize(raw_assets, m, resources).success
    result = materialize([task_labels], "2015-02-01", resources)
    assert result.get_asset_materialization_events()  # stored, whatever the check decides
    (check,) = result.get_asset_check_evaluations()
    with duckdb.connect(platform_env.warehouse_path) as con:
        ids, labels = read_labels(con, date(2015, 2, 1), vocabulary=[5411, 5812])
        # Recompute acquisitions by hand from raw holdings of t and t+1.
        cols = con.execute("SELECT * FROM raw.holdings LIMIT 0").fetchnumpy().keys()
        products = [c for c in cols if c not in ("customer_id", "month")]
        a = con.execute(f"SELECT customer_id, {', '.join(products)} FROM raw.holdings WHERE month = '2015-02-01' ORDER BY 1").fetchall()
        b = dict((r[0], r[1:]) for r in con.execute(f"SELECT customer_id, {', '.join(products)} FROM raw.holdings WHERE month = '2015-03-01'").fetchall())
        stored = con.execute("SELECT count(*) FROM labels.task_labels WHERE month = '2015-02-01'").fetchall()[0][0]
    assert stored == len(ids) == len(a)
    expected = np.array([sum(1 for x, y in zip(r[1:], b[r[0]]) if (x or 0) == 0 and y == 1) if r[0] in b else np.nan for r in a])
    np.testing.assert_array_equal(labels["cross_sell_count"], expected)
    assert set(np.unique(labels["nba_primary"][~np.isnan(labels["nba_primary"])])) <= set(range(len(PRODUCT_GROUPS) + 1))
    assert ((labels["nba_primary"] > 0) == (labels["cross_sell_count"] > 0))[~np.isnan(expected)].all()
    # Undefined labels are NULL, never zero: customers holding nothing at t have no stability.
    assert np.isnan(labels["product_stability"]).any()
    # The blocking check fails exactly for the binary tasks with fewer than 5 positives or negatives.
    from ple_platform.core.tasks.spec import TASKS

    rare = {t.name for t in TASKS if t.kind == "binary" and min(np.nansum(labels[t.name]), np.sum(labels[t.name] == 0)) < 5}
    assert set(check.metadata["failing_tasks"].value) == rare
    assert check.passed == (not rare) and result.success == (not rare)


def test_newest_month_says_it_has_no_labels(platform_env, resources):
    assert materialize(raw_assets, "2015-01-01", resources).success
    result = materialize([task_labels], "2015-01-01", resources)
    assert result.success
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["labels_available"].value is False and "2015-02" in meta["reason"].value
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and check.severity.value == "WARN"
    with duckdb.connect(platform_env.warehouse_path) as con:
        with pytest.raises(LabelsUnavailable):
            read_labels(con, date(2015, 1, 1), [])
        assert con.execute("SELECT count(*) FROM labels.task_labels").fetchall()[0][0] == 0

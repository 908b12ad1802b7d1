"""The drift rule of the feature checks uses the platform's one PSI (core/stats.py) and its alert level."""

import numpy as np

from ple_platform.core.features.quality import evaluate
from ple_platform.core.features.spec import FEATURE_GROUPS
from ple_platform.core.stats import PSI_ALERT, psi

SPEC = FEATURE_GROUPS[0]


def _psi_result(previous, values):
    results = evaluate(SPEC, values, 0.0, None, previous, None)
    return next(r for r in results if r.name == "psi_drift_vs_previous_month")


def test_shifted_column_fails_the_drift_rule_naming_it():
    rng = np.random.default_rng(0)
    previous = rng.normal(size=(4000, SPEC.dim))
    same = rng.normal(size=(4000, SPEC.dim))
    assert _psi_result(previous, same).passed

    shifted = same.copy()
    shifted[:, 3] += 1.5
    r = _psi_result(previous, shifted)
    assert not r.passed and not r.blocking
    assert r.metadata["worst_column"] == SPEC.columns[3] and r.metadata["columns_over"] == 1
    assert r.metadata["max_psi"] == psi(previous[:, 3], shifted[:, 3]) >= PSI_ALERT


def test_move_off_a_point_mass_is_seen():
    # 60% zeros (no activity) moving to small positive values: the atom at 0 gets its own bin.
    rng = np.random.default_rng(1)
    previous = np.where(rng.random((5000, SPEC.dim)) < 0.6, 0.0, rng.exponential(size=(5000, SPEC.dim)))
    current = previous.copy()
    current[:, 0] = np.where(previous[:, 0] == 0.0, 1e-3, previous[:, 0])
    r = _psi_result(previous, current)
    assert not r.passed and r.metadata["worst_column"] == SPEC.columns[0]


def test_a_missing_previous_month_is_not_a_pass_unless_it_is_the_first_month():
    values = np.random.default_rng(2).normal(size=(500, SPEC.dim)).astype(np.float32)
    pick = lambda results: next(r for r in results if r.name == "psi_drift_vs_previous_month")  # noqa: E731
    first = pick(evaluate(SPEC, values, 0.0, None, None, None, first_month=True))
    missing = pick(evaluate(SPEC, values, 0.0, None, None, None, first_month=False))
    assert first.passed and first.metadata["evaluated"] is False
    assert not missing.passed and not missing.blocking and missing.metadata["evaluated"] is False
    assert "t-1" in missing.description and "not materialized" in missing.description

"""Per-customer persistent homology (tda_global / tda_local): hand-computed diagrams, row-order independence,
non-constant output, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ple_platform.core.features.spec import FEATURE_GROUPS_BY_NAME, TDA_STATS
from ple_platform.core.features.topology import (
    DIAGRAM_KEYS,
    diagram_stats,
    landscape_summaries,
    tda_global_features,
    tda_local_features,
)

SQRT2 = math.sqrt(2.0)


def _entropy(lives):
    p = np.asarray(lives, dtype=float) / np.sum(lives)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _stats(births, deaths):
    b, d = np.asarray(births, float), np.asarray(deaths, float)
    life = d - b
    return np.array(
        [len(b), life.mean(), life.max(), life.std(), _entropy(life), life.sum(), b.mean(), d.mean()]
    )


def _brute_landscapes(b, d):
    """Oracle: evaluate the tents at every breakpoint candidate and integrate (trapezoid is exact)."""
    b, d = np.asarray(b, float), np.asarray(d, float)
    if b.size == 0:
        return np.zeros(4)
    c = np.unique(np.concatenate([b, d, ((b[:, None] + d[None, :]) / 2).ravel()]))
    tents = -np.sort(-np.maximum(np.minimum(c[:, None] - b, d - c[:, None]), 0), axis=1)
    lam1 = tents[:, 0]
    lam2 = tents[:, 1] if b.size > 1 else np.zeros_like(lam1)
    return np.array([lam1.max(), np.trapezoid(lam1, c), lam2.max(), np.trapezoid(lam2, c)])


def _behaviour(rng, n, t=12, d=4):
    """Customers with different behaviour: loops, clusters, drifts and noise of different scales."""
    kinds = rng.integers(0, 4, n)
    ang = np.linspace(0, 2 * np.pi, t, endpoint=False)
    pts = rng.normal(scale=rng.uniform(0.05, 2.0, (n, 1, 1)), size=(n, t, d))
    loop = np.stack([np.cos(ang), np.sin(ang)], axis=1) * rng.uniform(0.5, 3, (n, 1, 1))
    pts[kinds == 0, :, :2] += loop[kinds == 0]
    pts[kinds == 1] += np.linspace(0, 5, t)[None, :, None] * rng.normal(size=(n, 1, d))[kinds == 1]
    valid = rng.random((n, t)) < 0.85
    return pts, valid


def test_column_widths_match_spec():
    rng = np.random.default_rng(0)
    pts, valid = _behaviour(rng, 5)
    g, _ = tda_global_features(pts, valid)
    loc, _ = tda_local_features(rng.random((5, 90)))
    assert g.shape == (5, len(FEATURE_GROUPS_BY_NAME["tda_global"].columns)) == (5, 16)
    assert loc.shape == (5, len(FEATURE_GROUPS_BY_NAME["tda_local"].columns)) == (5, 16)


def test_diagram_stats_hand_computed_and_conventions():
    np.testing.assert_array_equal(diagram_stats([], []), np.zeros(len(TDA_STATS)))
    got = diagram_stats([0.0, 1.0], [2.0, 2.0])  # lifetimes 2 and 1
    exp = [2, 1.5, 2, 0.5, -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3), 3, 0.5, 2]
    np.testing.assert_allclose(got, exp, rtol=0, atol=1e-15)
    # An infinite death is capped at the largest finite value, or at the given cap; never inf/NaN.
    np.testing.assert_allclose(diagram_stats([0.0, 1.0], [np.inf, 3.0]), _stats([0, 1], [3, 3]))
    np.testing.assert_allclose(diagram_stats([0.0], [np.inf], cap=5.0), _stats([0], [5]))
    assert np.isfinite(diagram_stats([2.0], [np.inf])).all()


def test_rips_unit_square_exact():
    square = np.array([[[0, 0], [1, 0], [1, 1], [0, 1]]], dtype=float)
    stats, dg = tda_global_features(square, np.ones((1, 4), dtype=bool))
    # H0: three merges at edge length 1, plus the essential class capped at the diameter sqrt(2).
    h0 = _stats([0, 0, 0, 0], [1, 1, 1, SQRT2])
    # H1: the square's loop is born when the 4 sides appear (1) and filled by the diagonals/triangles (sqrt 2).
    h1 = np.array([1, SQRT2 - 1, SQRT2 - 1, 0, 0, SQRT2 - 1, 1, SQRT2])
    np.testing.assert_allclose(stats[0, :8], h0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats[0, 8:], h1, rtol=0, atol=1e-12)
    assert set(dg) == set(DIAGRAM_KEYS)
    assert dg["customer"].dtype == np.int64 and dg["dim"].dtype == np.int8
    assert list(dg["dim"]) == [0, 0, 0, 0, 1] and set(dg["kind"]) == {"global"}
    np.testing.assert_allclose(dg["death"], [1, 1, 1, SQRT2, SQRT2])
    np.testing.assert_allclose(dg["birth"], [0, 0, 0, 0, 1])


def test_cubical_series_exact():
    stats, dg = tda_local_features(np.array([[0.0, 3.0, 1.0, 4.0, 0.0]]))
    # Sublevel: trough at 1 dies when it merges at 3; the two 0-troughs merge at 4; essential [0, max=4].
    sub_b, sub_d = [1, 0, 0], [3, 4, 4]
    np.testing.assert_allclose(stats[0, :8], _stats(sub_b, sub_d), rtol=0, atol=1e-12)
    # Superlevel (sublevel of -x): peak 3 dies at 1 -> (-3, -1); essential peak 4 capped at -min = 0 -> (-4, 0).
    np.testing.assert_allclose(stats[0, 8:12], [2, 4, 6, _entropy([2, 4])], rtol=0, atol=1e-12)
    # Landscapes of the finite bars (1,3), (0,4): tent of (0,4) on top (peak 2, area 4), (1,3) below (1, 1).
    np.testing.assert_allclose(stats[0, 12:], [2, 4, 1, 1], rtol=0, atol=1e-12)
    assert sorted(zip(dg["birth"], dg["death"])) == [(0, 4), (0, 4), (1, 3)]
    assert set(dg["kind"]) == {"local"} and set(dg["dim"]) == {0}


def test_landscapes_match_oracle():
    rng = np.random.default_rng(3)
    for i in range(300):
        n = int(rng.integers(0, 9))
        if i % 2:  # integer bars: ties in births, deaths and crossings
            b = rng.integers(0, 5, n).astype(float)
            d = b + rng.integers(0, 4, n)
        else:
            b = rng.random(n) * 5
            d = b + rng.random(n) * 3
        np.testing.assert_allclose(landscape_summaries(b, d), _brute_landscapes(b, d), atol=1e-10)


def test_row_order_independence():
    rng = np.random.default_rng(1)
    pts, valid = _behaviour(rng, 60)
    daily = np.log1p(rng.gamma(0.5, 40, (60, 90)) * (rng.random((60, 90)) < 0.4))
    perm = rng.permutation(60)
    for fn, args, args_p in (
        (tda_global_features, (pts, valid), (pts[perm], valid[perm])),
        (tda_local_features, (daily,), (daily[perm],)),
    ):
        s, dg = fn(*args)
        sp, dgp = fn(*args_p)
        np.testing.assert_allclose(sp, s[perm], rtol=1e-12, atol=1e-12)
        # Each customer's stored diagram is the same bars, just under its new row index.
        for new, old in enumerate(perm[:10]):
            a = np.c_[dg["dim"], dg["birth"], dg["death"]][dg["customer"] == old]
            b = np.c_[dgp["dim"], dgp["birth"], dgp["death"]][dgp["customer"] == new]
            np.testing.assert_allclose(np.sort(a, axis=0), np.sort(b, axis=0), rtol=1e-12)


def test_stats_vary_across_customers_and_are_finite():
    rng = np.random.default_rng(2)
    pts, valid = _behaviour(rng, 80)
    daily = np.log1p(rng.gamma(0.5, 40, (80, 90)) * (rng.random((80, 90)) < rng.uniform(0.1, 0.9, (80, 1))))
    g, dg = tda_global_features(pts, valid)
    loc, dl = tda_local_features(daily)
    for s, d in ((g, dg), (loc, dl)):
        assert np.isfinite(s).all()
        assert np.isfinite(d["birth"]).all() and np.isfinite(d["death"]).all()
        assert (d["death"] >= d["birth"]).all()
        varies = s.std(axis=0) > 0  # no constant column (the reference broadcast one diagram to everyone)
        if s is g:
            # ...except tdag_h0_mean_birth: every Rips H0 class is born at filtration 0, so it is 0 by construction.
            assert FEATURE_GROUPS_BY_NAME["tda_global"].columns[6] == "tdag_h0_mean_birth"
            assert not varies[6] and (s[:, 6] == 0).all()
            varies[6] = True
        assert varies.all()
        assert len(np.unique(s, axis=0)) == len(s)


def test_month_position_does_not_matter_and_invalid_months_are_ignored():
    rng = np.random.default_rng(4)
    cloud = rng.normal(size=(5, 3))
    left = np.full((1, 12, 3), np.nan)
    left[0, :5] = cloud
    right = np.zeros((1, 12, 3))
    right[0, 7:] = cloud[::-1]
    s_left, _ = tda_global_features(left, np.arange(12)[None] < 5)
    s_right, _ = tda_global_features(right, np.arange(12)[None] >= 7)
    np.testing.assert_allclose(s_left, s_right, rtol=1e-12, atol=1e-12)


def test_degenerate_customers():
    pts = np.random.default_rng(5).normal(size=(3, 12, 4))
    valid = np.zeros((3, 12), dtype=bool)
    valid[1, 11] = True  # one valid month
    valid[2, [3, 9]] = True
    pts[2, 9] = pts[2, 3]  # two identical months
    stats, dg = tda_global_features(pts, valid)
    assert np.isfinite(stats).all()
    np.testing.assert_array_equal(stats[0], 0)  # no valid month: empty diagrams
    # One point (or identical points): the essential class alone, length 0 -> count 1, everything else 0.
    for i in (1, 2):
        np.testing.assert_array_equal(stats[i], [1] + [0] * 15)
    assert list(dg["customer"]) == [1, 2]

    daily = np.zeros((2, 90))
    daily[1] = 7.0
    loc, dl = tda_local_features(daily)
    expected = np.zeros(16)
    expected[0] = expected[8] = 1  # one zero-length bar in each direction (sublevel count, superlevel count)
    np.testing.assert_array_equal(loc[0], expected)
    assert loc[1, 0] == 1 and loc[1, 8] == 1
    np.testing.assert_array_equal(loc[1, [6, 7]], [7, 7])  # constant series: bar [7, 7]
    assert np.isfinite(loc).all()


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        tda_local_features(np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(ValueError):
        tda_global_features(np.full((1, 2, 2), np.nan), np.ones((1, 2), dtype=bool))

"""Conditioned inputs: the training-month scaler log-compresses amounts, clips, keeps flags and codes as they are."""

from __future__ import annotations

import numpy as np
import pytest

from ple_platform.core.features.spec import CATEGORICAL_COLUMNS, FEATURE_GROUPS, LAG_LENGTH, all_columns
from ple_platform.core.model.data import (
    CLIP,
    LAG_GROUP,
    FeatureScaler,
    MonthData,
    dropped_columns,
    unscaled_columns,
)

COLS = all_columns()


def month(n: int, seed: int, tail: float) -> MonthData:
    """Rows like the warehouse's: heavy-tailed amounts (lognormal with sigma ``tail``), rare 0/1 flags, codes,
    and a lag tensor with amounts, MCC indices 0..105, days and hours, -1 padded."""
    rng = np.random.default_rng(seed)
    groups = {}
    for g in FEATURE_GROUPS:
        if g.name == LAG_GROUP:
            continue
        x = rng.normal(size=(n, g.dim)).astype(np.float32)
        x[:, ::3] = rng.lognormal(3.0, tail, size=(n, len(range(0, g.dim, 3))))  # amount-like
        if g.dim > 1:
            x[:, 1] = rng.random(n) < 0.01  # a rare flag
        for j, c in enumerate(g.columns):
            if c in CATEGORICAL_COLUMNS:
                x[:, j] = rng.integers(0, 9, n)
        groups[g.name] = x
    seq = np.stack([rng.lognormal(3.0, tail, (n, LAG_LENGTH)), rng.integers(0, 106, (n, LAG_LENGTH)),
                    np.sort(rng.random((n, LAG_LENGTH)) * 365, axis=1), rng.integers(0, 24, (n, LAG_LENGTH))],
                   axis=2).astype(np.float32)
    seq[:, 150:] = -1.0
    return MonthData(customer_ids=np.array([f"c{i}" for i in range(n)], dtype=object),
                     months=np.full(n, np.datetime64("2025-01-01")), groups=groups, txn_seq=seq,
                     diagrams=np.zeros((n, 1, 4), np.float32), diagram_mask=np.zeros((n, 1), bool),
                     holdings=np.zeros((n, 24), np.float32), labels=None)


def conditioned(scaler: FeatureScaler, md: MonthData) -> np.ndarray:
    return np.hstack([scaler.transform_group(g.name, md.group(g.name)) for g in FEATURE_GROUPS])


def test_no_conditioned_column_exceeds_the_clip():
    train, later = month(500, 0, 1.5), month(500, 1, 2.5)  # a later month with a heavier tail than training
    scaler = FeatureScaler.fit([train])
    x = conditioned(scaler, later)
    assert np.isfinite(x).all()
    assert np.abs(x[:, scaler.scaled]).max() <= CLIP
    # Control: plain standardisation with the training mean/std (no log, no clip) goes far past it.
    keep = scaler.scaled & ~np.isin(COLS, sorted(dropped_columns()))
    fit_raw, later_raw = train.matrix()[:, keep].astype(np.float64), later.matrix()[:, keep]
    z = (later_raw - fit_raw.mean(0)) / np.maximum(fit_raw.std(0), 1e-4)
    assert np.abs(z).max() > 10 * CLIP


def test_amounts_are_log_compressed_flags_and_codes_pass_unchanged():
    train, later = month(400, 0, 1.5), month(300, 2, 1.5)
    scaler = FeatureScaler.fit([train])
    x, raw = conditioned(scaler, later), later.matrix()
    j = COLS.index(FEATURE_GROUPS[1].columns[0]) if FEATURE_GROUPS[1].name != LAG_GROUP else 0
    assert scaler.log[j]
    expect = np.clip((np.sign(raw[:, j]) * np.log1p(np.abs(raw[:, j])) - scaler.mean[j]) / scaler.std[j], -CLIP, CLIP)
    np.testing.assert_allclose(x[:, j], expect, rtol=1e-5, atol=1e-5)
    flag = COLS.index(FEATURE_GROUPS[1].columns[1])
    assert not scaler.scaled[flag] and set(np.unique(x[:, flag])) <= {0.0, 1.0}
    np.testing.assert_array_equal(x[:, flag], raw[:, flag])
    codes = [COLS.index(c) for c in CATEGORICAL_COLUMNS]
    np.testing.assert_array_equal(x[:, codes], raw[:, codes])
    dropped = [COLS.index(c) for c in sorted(dropped_columns())]
    assert dropped and (x[:, dropped] == 0).all()  # MCC index and hour never enter as magnitudes
    assert set(dropped_columns()) <= unscaled_columns()


def test_scaler_round_trips_through_checkpoint_arrays():
    scaler = FeatureScaler.fit([month(200, 0, 1.5)])
    back = FeatureScaler.from_arrays(scaler.to_arrays())
    assert back.content_hash == scaler.content_hash and back.log.sum() == scaler.log.sum() > 0
    later = month(50, 3, 2.0)
    np.testing.assert_array_equal(conditioned(back, later), conditioned(scaler, later))


def test_bad_scaler_arrays_are_refused():
    s = FeatureScaler.fit([month(50, 0, 1.0)])
    with pytest.raises(ValueError, match="clip"):
        FeatureScaler(s.mean, s.std, s.scaled, 1, clip=0.0)
    with pytest.raises(ValueError, match="log mask"):
        FeatureScaler(s.mean, s.std, np.zeros_like(s.scaled), 1, log=s.log)

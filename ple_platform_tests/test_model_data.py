"""Warehouse -> teacher input (``core.model.data``): loading, scaler discipline, diagrams, labels, batches.

The warehouse is small and synthetic but written with the production writers (``features.<group>`` and
``features.tda_diagrams`` through the feature asset's ``_write``/``_write_diagrams``, ``labels.task_labels`` with
the label asset's table layout), so the loader reads exactly the stored schema. Six months x ~110 customers;
the whole module runs in a few seconds.
"""

import hashlib
import shutil
from datetime import date

import duckdb
import numpy as np
import pytest
import torch

from ple_platform.core.data.taxonomy import mcc_hierarchy
from ple_platform.core.features.spec import CATEGORICAL_COLUMNS, FEATURE_GROUPS, LAG_LENGTH, all_columns, group
from ple_platform.core.model.batch import DIAGRAM_MASK_KEY, DIAGRAMS_KEY, HOLDINGS_KEY, SEQ_KEY
from ple_platform.core.model.data import (
    CLIP,
    GROUP_SLICES,
    FeatureScaler,
    MissingDataError,
    TeacherData,
    load_month,
    load_months,
    subsample_customers,
    dropped_columns,
    unscaled_columns,
)
from ple_platform.core.tasks.spec import TASKS
from ple_platform.core.tasks.split import time_split
from ple_platform.defs.features.assets import _write, _write_diagrams
from ple_platform.core.tasks.labels import LABEL_TABLE, write_labels

MONTHS = [date(2015, m, 1) for m in range(1, 7)]
SPLIT = time_split(date(2015, 6, 1), date(2015, 1, 1))  # train 01-03, validation 04, test 05, score 06
N_MCC = mcc_hierarchy().n_codes
DROPPED = (date(2015, 2, 1), "hmm_states")  # one customer missing from this group in this month



def _ids(n: int) -> np.ndarray:
    return np.array([hashlib.sha256(f"c{k}".encode()).hexdigest()[:20] for k in range(n)], dtype=object)


def _group_values(rng, spec, n):
    if spec.name == "product_holdings":
        return (rng.random((n, spec.dim)) < 0.25).astype(np.float64)
    x = rng.normal(3.0, 2.0, (n, spec.dim)) * rng.uniform(0.5, 5.0, spec.dim)
    for j, c in enumerate(spec.columns):
        if c in CATEGORICAL_COLUMNS:
            x[:, j] = rng.integers(0, 6, n)
    if spec.name == "gmm_clustering":
        x[:, -2] = 7.0  # a constant column: the std floor maps it to 0, never NaN
    return x


def _lag_values(rng, n):
    n_txn = rng.integers(0, 60, n)
    n_txn[0], n_txn[1] = 0, LAG_LENGTH  # no transactions / a full tensor
    seq = np.stack([
        rng.gamma(2.0, 30.0, (n, LAG_LENGTH)),
        rng.integers(0, N_MCC, (n, LAG_LENGTH)),
        np.sort(rng.integers(0, 365, (n, LAG_LENGTH)), axis=1),
        rng.integers(0, 24, (n, LAG_LENGTH)),
    ], axis=2).astype(np.float64)
    seq[np.arange(LAG_LENGTH)[None, :] >= n_txn[:, None]] = -1.0
    return seq.reshape(n, -1)


def _diagrams(rng, n, kind):
    counts = rng.integers(1, 6, n) if kind == "global" else rng.integers(0, 9, n)
    cust = np.repeat(np.arange(n), counts)
    birth = rng.uniform(0, 3, len(cust))
    return {"customer": cust, "kind": np.full(len(cust), kind), "dim": rng.integers(0, 2, len(cust)),
            "birth": birth, "death": birth + rng.uniform(0, 2, len(cust))}


def _labels(rng, n):
    out = {}
    for t in TASKS:
        v = (rng.random(n) < 0.3).astype(float) if t.kind == "binary" else \
            rng.integers(0, t.n_classes, n).astype(float) if t.kind == "multiclass" else rng.normal(0, 1, n)
        v[rng.random(n) < 0.1] = np.nan  # NULL = undefined
        out[t.name] = v
    return out


def _write_labels(con, month, ids, values):
    write_labels(con, month, ids, values)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    path = tmp_path_factory.mktemp("model_data") / "warehouse.duckdb"
    all_ids = _ids(130)
    with duckdb.connect(str(path)) as con:
        for k, month in enumerate(MONTHS):
            rng = np.random.default_rng(100 + k)
            alive = np.sort(rng.choice(len(all_ids), 110, replace=False))
            ids = rng.permutation(all_ids[alive])  # stored unsorted
            n = len(ids)
            for spec in FEATURE_GROUPS:
                values = _lag_values(rng, n) if spec.name == "txn_lag_tensor" else _group_values(rng, spec, n)
                keep = np.arange(n) != 5 if (month, spec.name) == DROPPED else np.ones(n, bool)
                _write(con, spec, month, ids[keep], values[keep])
            for kind in ("global", "local"):
                _write_diagrams(con, month, ids, _diagrams(rng, n, kind))
            if month != SPLIT.score:  # the newest month has no labels
                has = rng.random(n) > 0.05  # a few customers without a label row
                _write_labels(con, month, ids[has], {t: v[has] for t, v in _labels(rng, n).items()})
    return path


def _copy(warehouse, tmp_path):
    out = tmp_path / "warehouse.duckdb"
    shutil.copy(warehouse, out)
    return out


def _ro(path):
    return duckdb.connect(str(path), read_only=True)


@pytest.fixture(scope="module")
def teacher(warehouse):
    with _ro(warehouse) as con:
        return TeacherData.from_split(con, SPLIT)


# ------------------------------------------------------------------------------------------------ loading


def test_load_month_shapes_alignment_and_inner_join(warehouse):
    month = DROPPED[0]
    with _ro(warehouse) as con:
        d = load_month(con, month)
        raw = {g.name: con.execute(f"SELECT * EXCLUDE (month) FROM {g.table} WHERE month = ?", [month]).fetchnumpy()
               for g in FEATURE_GROUPS}
    n = d.n_rows
    assert n == 109  # 110 customers, one missing from hmm_states: the inner join drops it
    assert list(d.customer_ids) == sorted(d.customer_ids)
    assert set(d.customer_ids) == set(raw["hmm_states"]["customer_id"])
    assert (d.months == np.datetime64(month, "D")).all() and d.month_list == (month,)
    for g in FEATURE_GROUPS:
        x = d.group(g.name)
        assert x.shape == (n, g.dim) and x.dtype == np.float32
        pos = {c: i for i, c in enumerate(raw[g.name]["customer_id"])}
        for r in (0, 17, n - 1):  # spot-check rows against the stored table
            i = pos[d.customer_ids[r]]
            np.testing.assert_array_equal(x[r], np.array([raw[g.name][c][i] for c in g.columns], np.float32))
    assert d.txn_seq.shape == (n, LAG_LENGTH, 4) and d.txn_seq.dtype == np.float32
    assert np.shares_memory(d.group("txn_lag_tensor"), d.txn_seq)  # raw lag group = a view, not a copy
    np.testing.assert_array_equal(d.holdings, d.group("product_holdings"))
    assert set(np.unique(d.holdings)) <= {0.0, 1.0} and not np.shares_memory(d.holdings, d.groups["product_holdings"])
    assert d.labels is not None and all(v.dtype == np.float64 and v.shape == (n,) for v in d.labels.values())


def test_labels_align_with_customer_ids(warehouse):
    month = date(2015, 4, 1)
    with _ro(warehouse) as con:
        d = load_month(con, month)
        stored = con.execute(f"SELECT customer_id FROM {LABEL_TABLE} WHERE month = ?", [month]).fetchnumpy()
        stored = set(stored["customer_id"])
        for r in range(0, d.n_rows, 9):
            cid = d.customer_ids[r]
            row = con.execute(f"SELECT * EXCLUDE (customer_id, month) FROM {LABEL_TABLE} "
                              f"WHERE month = ? AND customer_id = ?", [month, cid]).fetchall()
            got = np.array([d.labels[t.name][r] for t in TASKS])
            if cid in stored:
                expect = np.array([np.nan if v is None else v for v in row[0]], dtype=float)
                np.testing.assert_array_equal(got, expect)  # NULL -> NaN, never 0
            else:
                assert np.isnan(got).all()  # no label row: undefined, not zero
        assert any(np.isnan(d.labels[t.name]).any() for t in TASKS)
        assert len(stored - set(d.customer_ids)) == 0 and len(set(d.customer_ids) - stored) > 0
        assert load_month(con, SPLIT.score).labels is None  # the newest month is not labelled
        assert load_month(con, month, labels=False).labels is None


def test_missing_month_or_table_raises_naming_it(warehouse, tmp_path):
    with _ro(warehouse) as con:
        with pytest.raises(MissingDataError, match=r"features\.demographics.*2015-07"):
            load_month(con, date(2015, 7, 1))
    path = _copy(warehouse, tmp_path)
    with duckdb.connect(str(path)) as con:
        con.execute("DELETE FROM features.mamba_temporal WHERE month = '2015-02-01'")
        con.execute(f"DELETE FROM {LABEL_TABLE} WHERE month = '2015-03-01'")
    with _ro(path) as con:
        with pytest.raises(MissingDataError, match=r"features\.mamba_temporal.*2015-02"):
            load_month(con, date(2015, 2, 1))
        with pytest.raises(MissingDataError, match=r"labels\.task_labels.*2015-03"):
            TeacherData.from_split(con, time_split(date(2015, 6, 1), date(2015, 3, 1)))
        assert load_month(con, date(2015, 3, 1)).labels is None
    with duckdb.connect(str(path)) as con:
        con.execute("DELETE FROM features.tda_diagrams WHERE month = '2015-04-01' AND kind = 'local'")
        con.execute("DROP TABLE features.gmm_clustering")
    with _ro(path) as con:
        with pytest.raises(MissingDataError, match=r"features\.gmm_clustering does not exist.*2015-01"):
            load_month(con, date(2015, 1, 1))
        con.close()
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE features.gmm_clustering AS SELECT * FROM features.demographics LIMIT 0")
    with _ro(path) as con, pytest.raises(MissingDataError,
                                         match=r"features\.gmm_clustering has no rows for month 2015-01"):
        load_month(con, date(2015, 1, 1))


# ------------------------------------------------------------------------------------------------ diagrams


def _stored_counts(con, month):
    rows = con.execute("SELECT customer_id, count(*) FROM features.tda_diagrams WHERE month = ? GROUP BY ALL",
                       [month]).fetchall()
    return dict(rows)


def test_diagram_mask_matches_stored_counts_and_cap_keeps_most_persistent(warehouse, tmp_path):
    month = date(2015, 3, 1)
    with _ro(warehouse) as con:
        d = load_month(con, month, labels=False)
        capped = load_month(con, month, labels=False, max_points=3)
        counts = _stored_counts(con, month)
        pts = con.execute("SELECT customer_id, death - birth FROM features.tda_diagrams WHERE month = ?",
                          [month]).fetchall()
    expect = np.array([counts.get(c, 0) for c in d.customer_ids])
    assert d.diagrams.shape == (d.n_rows, expect.max(), 4) and d.diagram_mask.dtype == bool
    np.testing.assert_array_equal(d.diagram_mask.sum(axis=1), expect)
    np.testing.assert_array_equal(d.diagram_points, expect)
    # Real points first, padding zero; kinds 0/1, dims 0/1, death >= birth.
    np.testing.assert_array_equal(d.diagram_mask, np.arange(d.diagrams.shape[1])[None, :] < expect[:, None])
    assert (d.diagrams[~d.diagram_mask] == 0).all()
    real = d.diagrams[d.diagram_mask]
    assert set(np.unique(real[:, 3])) == {0.0, 1.0} and set(np.unique(real[:, 2])) <= {0.0, 1.0}
    assert (real[:, 1] >= real[:, 0]).all()
    # Cap: min(count, 3) points, the 3 most persistent.
    np.testing.assert_array_equal(capped.diagram_mask.sum(axis=1), np.minimum(expect, 3))
    pers = {}
    for cid, p in pts:
        pers.setdefault(cid, []).append(p)
    for r in range(0, d.n_rows, 7):
        kept = capped.diagrams[r, capped.diagram_mask[r]]
        top = sorted(pers.get(d.customer_ids[r], []), reverse=True)[:3]
        np.testing.assert_allclose(np.sort(kept[:, 1] - kept[:, 0])[::-1], top, rtol=1e-5, atol=1e-5)
    # Storage order of the points changes nothing.
    path = _copy(warehouse, tmp_path)
    with duckdb.connect(str(path)) as con:
        con.execute("SELECT setseed(0.3)")
        con.execute("CREATE TABLE features.tmp AS SELECT * FROM features.tda_diagrams ORDER BY random()")
        con.execute("DROP TABLE features.tda_diagrams")
        con.execute("ALTER TABLE features.tmp RENAME TO tda_diagrams")
    with _ro(path) as con:
        shuffled = load_month(con, month, labels=False)
    np.testing.assert_array_equal(shuffled.diagram_mask, d.diagram_mask)
    np.testing.assert_array_equal(shuffled.diagrams, d.diagrams)


# ------------------------------------------------------------------------------------------------ scaler


def test_scaler_is_fitted_on_train_months_only(warehouse, teacher, tmp_path):
    path = _copy(warehouse, tmp_path)
    with duckdb.connect(str(path)) as con:
        for m in (SPLIT.validation, SPLIT.test, SPLIT.score):
            con.execute("UPDATE features.txn_behavior SET txn_count = txn_count * 100 + 7, log_spend = -log_spend "
                        "WHERE month = ?", [m])
    with _ro(path) as con:
        other = TeacherData.from_split(con, SPLIT)
    assert other.scaler.content_hash == teacher.scaler.content_hash
    np.testing.assert_array_equal(other.parts["train"].groups["txn_behavior"],
                                  teacher.parts["train"].groups["txn_behavior"])
    assert not np.allclose(other.parts["test"].groups["txn_behavior"], teacher.parts["test"].groups["txn_behavior"])
    with duckdb.connect(str(path)) as con:  # a training month, by contrast, moves the scaler
        con.execute("UPDATE features.txn_behavior SET txn_count = txn_count + 1 WHERE month = ?", [SPLIT.train[1]])
    with _ro(path) as con:
        assert TeacherData.from_split(con, SPLIT, parts=("train",)).scaler.content_hash != teacher.scaler.content_hash


def test_standardised_train_columns_and_untouched_codes(warehouse, teacher):
    with _ro(warehouse) as con:
        raw = load_months(con, SPLIT.train)
    train = teacher.parts["train"]
    assert train.n_rows == raw.n_rows == 3 * 110 - 1 and train.standardised and not raw.standardised
    np.testing.assert_array_equal(train.customer_ids, raw.customer_ids)
    skip = unscaled_columns()
    cols = all_columns()
    scaled = teacher.scaler.scaled
    # Codes are never scaled; 0/1 flag columns (e.g. the holdings) are left as 0/1 too.
    assert not scaled[[cols.index(c) for c in skip]].any() and (~scaled).sum() > len(skip)
    dropped = np.isin(cols, sorted(dropped_columns()))
    for g in FEATURE_GROUPS:
        x, r = train.group(g.name).astype(np.float64), raw.group(g.name)
        s = scaled[GROUP_SLICES[g.name]]
        # Standardised exactly where nothing was log-compressed or clipped.
        plain = s & ~teacher.scaler.log[GROUP_SLICES[g.name]] & (np.abs(x) < CLIP - 1e-3).all(axis=0)
        varying = plain & (r.std(axis=0) > 1e-3)
        np.testing.assert_allclose(x[:, varying].mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(x[:, varying].std(axis=0), 1.0, rtol=1e-3)
        keep = ~s & ~dropped[GROUP_SLICES[g.name]]
        np.testing.assert_array_equal(x[:, keep], r[:, keep])  # codes and flags: bit-identical
        constant = s & (r.std(axis=0) <= 1e-3)
        assert np.isfinite(x).all() and (np.abs(x[:, constant]) < 1e-3).all()
    # The constant column is centred, not divided by a tiny std (a later deviation must not explode).
    gmm = GROUP_SLICES["gmm_clustering"]
    assert scaled[gmm][-2] and teacher.scaler.std[gmm][-2] == 1.0 and teacher.scaler.mean[gmm][-2] == 7.0
    # Raw inputs of the contract stay raw.
    np.testing.assert_array_equal(train.txn_seq, raw.txn_seq)
    np.testing.assert_array_equal(train.holdings, raw.holdings)
    np.testing.assert_array_equal(train.diagrams, raw.diagrams)


def test_scaler_arrays_round_trip_through_safetensors(teacher, tmp_path):
    from safetensors.numpy import load_file, save_file

    save_file(teacher.scaler.to_arrays(), str(tmp_path / "scaler.safetensors"))
    back = FeatureScaler.from_arrays(load_file(str(tmp_path / "scaler.safetensors")))
    assert back.content_hash == teacher.scaler.content_hash and back.n_rows == teacher.scaler.n_rows
    x = np.random.default_rng(0).normal(size=(5, group("txn_behavior").dim)).astype(np.float32)
    np.testing.assert_array_equal(back.transform_group("txn_behavior", x),
                                  teacher.scaler.transform_group("txn_behavior", x))
    with pytest.raises(ValueError, match="already standardised"):
        teacher.scaler.transform(teacher.parts["test"])


def test_txn_seq_padding_stays_minus_one(teacher):
    for part in ("train", "score"):
        d = teacher.parts[part]
        batch, _ = next(iter(teacher.batches(part, batch_size=d.n_rows, shuffle=False)(0)))
        seq = batch[SEQ_KEY].numpy()
        pad = seq[:, :, 1] == -1  # mcc index -1 marks padding
        assert pad.any() and (~pad).any() and pad[0].all() == (d.txn_seq[0, :, 1] == -1).all()
        assert (seq[pad] == -1).all()  # every channel of a padded slot
        assert ((seq[:, :, 3] == -1) == pad).all()
        np.testing.assert_array_equal(seq, d.txn_seq)
        lag = batch["txn_lag_tensor"].numpy().reshape(-1, LAG_LENGTH, 4)
        assert (lag[:, :, [1, 3]] == 0).all()  # codes never enter the tabular view as magnitudes
        assert not np.allclose(lag[:, :, 0], seq[:, :, 0])  # amounts standardised


# ------------------------------------------------------------------------------------------------ batches


def test_batches_are_deterministic_and_cover_every_row_once(teacher):
    train = teacher.parts["train"]
    f = teacher.batches("train", batch_size=64, seed=3)
    first, again, other = list(f(0)), list(f(0)), list(f(1))
    assert len(first) == -(-train.n_rows // 64) and first[-1][0]["demographics"].shape[0] == train.n_rows % 64
    for (b1, l1), (b2, l2) in zip(first, again, strict=True):
        assert b1.keys() == b2.keys() and l1.keys() == l2.keys() == {t.name for t in TASKS}
        for k in b1:
            assert torch.equal(b1[k], b2[k])
        for k in l1:
            assert torch.equal(torch.nan_to_num(l1[k], nan=-9), torch.nan_to_num(l2[k], nan=-9))
    assert not torch.equal(first[0][0]["txn_behavior"], other[0][0]["txn_behavior"])  # reshuffled per epoch
    other_seed = next(iter(teacher.batches("train", 64, seed=4)(0)))[0]
    assert not torch.equal(first[0][0]["txn_behavior"], other_seed["txn_behavior"])
    for epoch in (0, 1):
        idx = np.concatenate(teacher.batch_indices("train", 64, True, 3, epoch))
        np.testing.assert_array_equal(np.sort(idx), np.arange(train.n_rows))
    total = sum(b["mamba_temporal"].double().sum(0) for b, _ in first)
    np.testing.assert_allclose(total.numpy(), train.groups["mamba_temporal"].astype(np.float64).sum(0),
                               rtol=1e-6, atol=1e-6)
    # Evaluation parts keep the stored order; the score month has no labels.
    val = list(teacher.batches("validation", 50)(0))
    np.testing.assert_array_equal(torch.cat([b["demographics"] for b, _ in val]).numpy(),
                                  teacher.parts["validation"].groups["demographics"])
    assert all(lab == {} for _, lab in teacher.batches("score", 50)(0))
    b, lab = first[0]
    for k in (DIAGRAMS_KEY, DIAGRAM_MASK_KEY, HOLDINGS_KEY, SEQ_KEY, *(g.name for g in FEATURE_GROUPS)):
        assert k in b and b[k].shape[0] == 64
        assert b[k].dtype == (torch.bool if k == DIAGRAM_MASK_KEY else torch.float32)
    assert b[DIAGRAMS_KEY].shape[1] == int(b[DIAGRAM_MASK_KEY].sum(1).max())  # trimmed to the batch
    assert all(v.dtype == torch.float32 and v.shape == (64,) for v in lab.values())


def test_subsample_is_deterministic_panel_and_matches_load_time_sampling(warehouse, teacher):
    small = teacher.subsample_customers(40, seed=1)
    again = teacher.subsample_customers(40, seed=1)
    assert again.parts["train"].customer_ids.tolist() == small.parts["train"].customer_ids.tolist()
    for part, d in small.parts.items():
        for m in np.unique(d.months):
            assert (d.months == m).sum() == 40
    ids = {p: set(d.customer_ids) for p, d in small.parts.items()}
    assert len(ids["validation"] & ids["test"]) >= 25  # mostly the same customers from month to month
    assert small.scaler is teacher.scaler
    with _ro(warehouse) as con:
        loaded = TeacherData.from_split(con, SPLIT, max_customers_per_month=40, sample_seed=1)
    for part in small.parts:
        np.testing.assert_array_equal(loaded.parts[part].customer_ids, small.parts[part].customer_ids)
    np.testing.assert_array_equal(subsample_customers(np.array(["b", "a"], dtype=object), 5), ["a", "b"])
    assert set(teacher.subsample_customers(40, seed=2).parts["test"].customer_ids) != ids["test"]


# ------------------------------------------------------------------------------------------------ model


def test_batches_feed_the_ple_teacher(teacher):
    from ple_platform.core.model.losses import multitask_loss
    from ple_platform.core.model.ple import PLEConfig, PLEModel
    from ple_platform_tests.test_ple import SMALL_EXPERTS

    torch.manual_seed(0)
    model = PLEModel(PLEConfig(expert_dim=8, n_layers=1, mlp_hidden=(8,), tower_dims=(8,),
                               expert_config=SMALL_EXPERTS))
    batch, labels = next(iter(teacher.batches("train", batch_size=24, seed=0)(0)))
    out = model(batch)  # all 7 heterogeneous experts read their keys of the Batch
    assert set(out.outputs) == {t.name for t in TASKS}
    assert all(torch.isfinite(v).all() for v in out.outputs.values())
    # The labels (NaN = undefined) go straight into the multi-task loss, and gradients flow.
    loss, terms = multitask_loss(out, labels, weights=model.loss_weighting)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared0["perslay"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared0["lightgcn"].parameters())
    model.eval()
    with torch.no_grad():
        scored, none = next(iter(teacher.batches("score", batch_size=16)(0)))
        assert none == {} and all(torch.isfinite(v).all() for v in model(scored).outputs.values())

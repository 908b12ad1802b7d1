"""LightGBM students by distillation: soft targets, blending, gain-based selection, Platt calibration, the
artefact (text + sha256), routing, and fidelity. Tiny synthetic data (2,000 x 40), one thread, a few seconds."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from ple_platform.core.distillation.fidelity import (
    FidelityInputError,
    FidelityThresholds,
    average_ranks,
    fidelity,
    spearman,
    topk_agreement,
)
from ple_platform.core.distillation.students import (
    BIAS,
    FeatureBins,
    Student,
    StudentConfig,
    StudentInputError,
    StudentIntegrityError,
    blend_targets,
    fit_platt,
    fit_task_students,
    route,
    select_by_gain,
    soft_targets,
    teacher_has_edge,
    train_direct,
    train_student,
)
from ple_platform.core.model import evaluate as ev
from ple_platform.core.storage import sha256_bytes
from ple_platform.core.tasks.spec import TASKS_BY_NAME

N, F = 2000, 40
NAMES = [f"f{i}" for i in range(F)]
CFG = StudentConfig(min_features=2, max_features=40, selection_rounds=40, num_boost_round=100,
                    early_stopping_rounds=10, num_threads=1,
                    params={"num_leaves": 15, "min_data_in_leaf": 20, "learning_rate": 0.1})
N_CLASSES = TASKS_BY_NAME["nba_primary"].n_classes


def _sig(z):
    return 1 / (1 + np.exp(-z))


def binary_data(n, seed):
    """Labels drawn from a logistic model of columns 0-3; the teacher knows the logit up to noise."""
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, F))
    z = 1.5 * X[:, 0] - 1.0 * X[:, 1] + 0.8 * X[:, 2] * X[:, 3]
    y = (r.random(n) < _sig(z)).astype(float)
    return X, y, _sig(z + 0.3 * r.normal(size=n))


def multiclass_data(n, seed):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, F))
    W = np.random.default_rng(99).normal(size=(3, N_CLASSES)) * 1.5
    logits = X[:, :3] @ W
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (p.cumsum(1) < r.random((n, 1))).sum(1).astype(float)  # a draw from p
    return X, y, p


def regression_data(n, seed):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, F))
    f = 2 * X[:, 0] + X[:, 1] - X[:, 2]
    return X, f + 0.3 * r.normal(size=n), f


@pytest.fixture(scope="module")
def binary():
    X, y, t = binary_data(N, 0)
    Xv, yv, tv = binary_data(1000, 1)
    return X, y, t, Xv, yv, tv


@pytest.fixture(scope="module")
def distilled(binary):
    X, y, t, Xv, yv, tv = binary
    return train_student("churn_signal", X, y, t, Xv, yv, tv, NAMES, CFG)


# ------------------------------------------------------------------------------------------------ targets


def test_soft_targets_by_hand_and_temperature_limits():
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(soft_targets("churn_signal", p, 1.0), p)
    # logit(0.9) = ln 9; / 2 = ln 3 -> sigmoid = 3/4 (and 1/4 for 0.1).
    np.testing.assert_allclose(soft_targets("churn_signal", p, 2.0), [0.25, 0.5, 0.75])
    np.testing.assert_allclose(soft_targets("churn_signal", p, 1e9), 0.5, atol=1e-8)
    q = np.array([[0.5, 0.25, 0.25, 0, 0, 0, 0]])
    # T = 2: square roots renormalised; zero classes stay (almost) zero.
    s = soft_targets("nba_primary", q, 2.0)
    np.testing.assert_allclose(s[0, :3], np.array([0.5, 0.25, 0.25]) ** 0.5 / (0.5**0.5 + 2 * 0.25**0.5), atol=1e-5)
    np.testing.assert_allclose(s.sum(1), 1.0)
    np.testing.assert_allclose(soft_targets("nba_primary", q, 1e9), 1 / N_CLASSES, atol=1e-6)
    v = np.array([-3.0, 0.5, 7.0])
    np.testing.assert_array_equal(soft_targets("spend_change", v, 5.0), v)  # no temperature for regression
    with pytest.raises(StudentInputError, match="temperature"):
        soft_targets("churn_signal", p, 0.0)


def test_blend_targets_binary_and_regression_by_hand_with_missing_labels():
    cfg = StudentConfig(temperature=2.0, alpha=0.5)
    b = blend_targets("churn_signal", [1.0, 0.0, np.nan, -1.0], [0.9, 0.9, 0.1, 0.5], cfg)
    # soft = [.75, .75, .25, .5]; labelled rows 0.5 y + 0.5 soft with weight 1, unlabelled: soft with weight 0.5.
    np.testing.assert_array_equal(b.rows, [0, 1, 2, 3])
    np.testing.assert_allclose(b.label, [0.875, 0.375, 0.25, 0.5])
    np.testing.assert_allclose(b.weight, [1.0, 1.0, 0.5, 0.5])
    assert (b.n_labelled, b.n_soft_only) == (2, 2)
    hard_only = blend_targets("churn_signal", [1.0, 0.0, np.nan, -1.0], [0.9, 0.9, 0.1, 0.5], replace(cfg, alpha=1.0))
    np.testing.assert_array_equal(hard_only.rows, [0, 1])  # weight 0 rows are dropped
    np.testing.assert_allclose(hard_only.label, [1.0, 0.0])
    assert hard_only.n_soft_only == 0
    r = blend_targets("spend_change", [2.0, np.nan], [1.0, -1.0], replace(cfg, alpha=0.25))
    np.testing.assert_allclose(r.label, [0.25 * 2 + 0.75 * 1, -1.0])
    np.testing.assert_allclose(r.weight, [1.0, 0.75])


def test_blend_targets_multiclass_expands_rows_by_hand():
    cfg = StudentConfig(temperature=1.0, alpha=0.5, soft_top_classes=2)
    teacher = np.array([[0.6, 0.3, 0.1, 0, 0, 0, 0], [0.1, 0.0, 0.0, 0.7, 0.2, 0, 0]])
    b = blend_targets("nba_primary", [2.0, -1.0], teacher, cfg)
    # Row 0: hard class 2 (weight .5), soft top-2 classes 0 and 1 renormalised (.6/.9, .3/.9) x .5.
    # Row 1 (no label): soft classes 3 and 4 with .7/.9 and .2/.9 x .5.
    np.testing.assert_array_equal(b.rows, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(b.label, [2, 0, 1, 3, 4])
    np.testing.assert_allclose(b.weight, [0.5, 0.5 * 2 / 3, 0.5 / 3, 0.5 * 7 / 9, 0.5 * 2 / 9])
    # Every labelled row weighs 1 in total, an unlabelled one 1 - alpha.
    np.testing.assert_allclose(np.bincount(b.rows, weights=b.weight), [1.0, 0.5])


# ------------------------------------------------------------------------------------------------ selection, Platt


def test_select_by_gain_by_hand():
    gain = [0.0, 5.0, 3.0, 2.0, 0.0]  # shares of the sorted gains: .5, .8, 1.0
    np.testing.assert_array_equal(select_by_gain(gain, 0.8, 1, 10), [1, 2])
    np.testing.assert_array_equal(select_by_gain(gain, 0.81, 1, 10), [1, 2, 3])
    np.testing.assert_array_equal(select_by_gain(gain, 0.5, 1, 10), [1])
    np.testing.assert_array_equal(select_by_gain(gain, 0.5, 4, 10), [1, 2, 3])  # min, but never a zero-gain column
    np.testing.assert_array_equal(select_by_gain(gain, 1.0, 1, 1), [1])  # max clamps
    np.testing.assert_array_equal(select_by_gain([0.0, 0.0, 0.0], 0.9, 2, 5), [0, 1])  # no split at all
    with pytest.raises(StudentInputError, match="gain"):
        select_by_gain([1.0, -1.0], 0.9, 1, 5)


def test_platt_calibration_reduces_ece_of_a_miscalibrated_score():
    r = np.random.default_rng(5)
    z = r.normal(size=20000)
    y = (r.random(20000) < _sig(z)).astype(float)
    raw = _sig(3 * z + 1)  # over-confident and shifted: true p = sigmoid((logit(raw) - 1) / 3)
    cal = fit_platt(raw, y)
    assert cal.a == pytest.approx(1 / 3, abs=0.02) and cal.b == pytest.approx(-1 / 3, abs=0.03)
    before, after = ev.ece(y, raw), ev.ece(y, cal.apply(raw))
    assert before > 0.1 and after < 0.02
    assert ev.roc_auc(y, cal.apply(raw)) == pytest.approx(ev.roc_auc(y, raw))  # monotone: ranking kept
    # Separable data: Platt's prior-corrected targets keep the slope finite.
    sep = fit_platt([0.2, 0.3, 0.7, 0.8], [0, 0, 1, 1])
    assert math.isfinite(sep.a) and sep.a > 0
    # An anti-correlated score would be flipped by Platt: identity kept, with a note.
    flip = fit_platt(1 - raw, y)
    assert (flip.a, flip.b) == (1.0, 0.0) and "reverse" in flip.note


# ------------------------------------------------------------------------------------------------ training


def test_soft_targets_and_temperature_change_the_trained_model(binary, distilled):
    X, y, t, Xv, yv, tv = binary
    hard = train_student("churn_signal", X, y, t, Xv, yv, tv, NAMES, replace(CFG, alpha=1.0))
    hot = train_student("churn_signal", X, y, t, Xv, yv, tv, NAMES, replace(CFG, temperature=5.0))
    shas = {distilled.model_sha256, hard.model_sha256, hot.model_sha256}
    assert len(shas) == 3
    pa, ph = distilled.predict(Xv, NAMES), hard.predict(Xv, NAMES)
    assert np.abs(pa - ph).max() > 0.02
    # The blended student learns: a real AUC on the validation month, calibrated probabilities.
    assert distilled.metrics["validation"]["auc"]["value"] > 0.78
    assert 0 <= pa.min() and pa.max() <= 1 and distilled.calibration is not None
    assert distilled.route == "DISTILL" and distilled.kind == "binary"


def test_student_is_deterministic_round_trips_and_verifies_its_hash(binary, distilled):
    X, y, t, Xv, yv, tv = binary
    again = train_student("churn_signal", X, y, t, Xv, yv, tv, NAMES, CFG,
                          bins=FeatureBins.build(X, Xv, NAMES, CFG))  # shared bins: the same model
    assert again.model_sha256 == distilled.model_sha256 == sha256_bytes(distilled.model_str.encode())
    assert distilled.booster().model_to_string() == distilled.model_str
    meta = json.loads(json.dumps(distilled.to_dict()))  # JSON-able metadata
    assert "model_str" not in meta and meta["features"] == list(distilled.features)
    loaded = Student.from_dict(meta, distilled.model_str)
    np.testing.assert_array_equal(loaded.predict(Xv, NAMES), distilled.predict(Xv, NAMES))
    assert loaded.calibration == distilled.calibration and loaded.config == CFG
    tampered = distilled.model_str.replace("shrinkage=0.1", "shrinkage=0.2", 1)
    assert tampered != distilled.model_str
    with pytest.raises(StudentIntegrityError, match="sha256"):
        Student.from_dict(meta, tampered)
    with pytest.raises(StudentIntegrityError, match="refusing"):
        replace(distilled, model_str=tampered).booster()


def test_predict_picks_its_columns_by_name_and_contributions_add_up(binary, distilled):
    _, _, _, Xv, _, _ = binary
    perm = np.random.default_rng(0).permutation(F)
    np.testing.assert_allclose(distilled.predict(Xv[:, perm], [NAMES[i] for i in perm]),
                               distilled.predict(Xv, NAMES))
    c = distilled.predict_contrib(Xv[:50], NAMES)
    assert c.values.shape == (50, len(distilled.features) + 1) and c.columns[-1] == BIAS
    raw = distilled.booster().predict(Xv[:50][:, [NAMES.index(f) for f in distilled.features]])
    np.testing.assert_allclose(c.values.sum(1), np.log(raw / (1 - raw)), atol=1e-6)  # log-odds, pre-calibration
    with pytest.raises(StudentInputError, match="lacks"):
        distilled.predict(Xv[:, 1:], NAMES[1:])
    with pytest.raises(StudentInputError, match=r"\(N, 40\)"):
        distilled.predict(Xv[:, :5], NAMES)


def test_calibration_lowers_ece_of_a_tempered_student(binary):
    X, y, t, Xv, yv, tv = binary
    Xt, yt, _ = binary_data(2000, 2)  # an untouched month
    cfg = replace(CFG, temperature=4.0, alpha=0.2)  # soft targets squeezed toward 0.5: raw scores under-confident
    raw = train_student("churn_signal", X, y, t, Xv, yv, tv, NAMES, replace(cfg, calibrate=False))
    cal = train_student("churn_signal", X, y, t, Xv, yv, tv, NAMES, cfg)
    assert raw.calibration is None and cal.calibration.a > 1  # stretches the squeezed logits
    assert ev.ece(yt, cal.predict(Xt, NAMES)) < 0.5 * ev.ece(yt, raw.predict(Xt, NAMES))


def test_missing_hard_labels_are_taught_by_the_teacher_alone(binary):
    X, y, t, Xv, yv, tv = binary
    y_missing = y.copy()
    y_missing[::3] = np.nan
    n_missing = int(np.isnan(y_missing).sum())
    s = train_student("churn_signal", X, y_missing, t, Xv, yv, tv, NAMES, CFG)
    d = train_direct("churn_signal", X, y_missing, Xv, yv, NAMES, CFG)
    h = train_student("churn_signal", X, y_missing, t, Xv, yv, tv, NAMES, replace(CFG, alpha=1.0))
    assert s.metrics["training"]["n_soft_only"] == n_missing and s.metrics["training"]["n_rows"] == N
    assert d.metrics["training"]["n_rows"] == N - n_missing and d.metrics["training"]["n_soft_only"] == 0
    assert h.metrics["training"]["n_rows"] == N - n_missing
    assert s.metrics["validation"]["auc"]["value"] > 0.75


def test_multiclass_student_probabilities_and_contributions():
    X, y, t = multiclass_data(N, 0)
    Xv, yv, tv = multiclass_data(1000, 1)
    y[:100] = -1  # missing labels
    cfg = replace(CFG, selection_rounds=20, num_boost_round=40)
    s = train_student("nba_primary", X, y, t, Xv, yv, tv, NAMES, cfg)
    p = s.predict(Xv, NAMES)
    assert p.shape == (1000, N_CLASSES)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    assert s.calibration is None
    assert s.metrics["training"]["n_rows"] == (N - 100) + N * cfg.soft_top_classes  # hard + soft rows
    assert s.metrics["validation"]["macro_f1"]["value"] > s.metrics["validation"]["macro_f1_majority"]["value"]
    Xs = Xv[:20][:, [NAMES.index(f) for f in s.features]]
    raw = s.booster().predict(Xs, raw_score=True)
    c = s.predict_contrib(Xv[:20], NAMES)
    np.testing.assert_array_equal(c.class_index, p[:20].argmax(1))
    np.testing.assert_allclose(c.values.sum(1), raw[np.arange(20), c.class_index], atol=1e-6)
    c3 = s.predict_contrib(Xv[:20], NAMES, class_index=3)
    np.testing.assert_allclose(c3.values.sum(1), raw[:, 3], atol=1e-6)
    with pytest.raises(StudentInputError, match="class_index"):
        s.predict_contrib(Xv[:2], NAMES, class_index=N_CLASSES)


def test_feature_selection_keeps_the_informative_columns_and_drops_noise():
    X, y, t = regression_data(N, 0)
    Xv, yv, tv = regression_data(1000, 1)
    s = train_student("spend_change", X, y, t, Xv, yv, tv, NAMES, replace(CFG, gain_share=0.9))
    assert {"f0", "f1", "f2"} <= set(s.features)
    assert len(set(s.features) - {"f0", "f1", "f2"}) <= 2  # of 37 pure-noise columns
    assert s.selection["n_candidates"] == F and s.selection["gain_share_covered"] >= 0.9
    assert s.metrics["validation"]["r2"]["value"] > 0.9
    top2 = train_direct("spend_change", X, y, Xv, yv, NAMES, replace(CFG, max_features=2))
    assert len(top2.features) == 2 and "f0" in top2.features  # f0 carries the largest coefficient


# ------------------------------------------------------------------------------------------------ routing


def test_route_on_constructed_numbers_including_the_mae_sign_flip():
    d = route("churn_signal", 0.80, 0.75, 0.78)  # edge .05, student keeps .03 >= .5 x .05
    assert d.route == "DISTILL" and d.teacher_edge == pytest.approx(0.05) and d.kept_share == pytest.approx(0.6)
    assert "0.8000" in d.reason and "DISTILL" in d.reason
    assert route("churn_signal", 0.80, 0.75, 0.775).route == "DISTILL"  # exactly half the edge: kept
    lost = route("churn_signal", 0.80, 0.75, 0.77)
    assert lost.route == "DIRECT" and "only 40%" in lost.reason
    no_edge = route("churn_signal", 0.74, 0.75, 0.79)
    assert no_edge.route == "DIRECT" and "no edge" in no_edge.reason
    # MAE: lower is better. Teacher .90 vs direct 1.00 is an edge of +.10.
    m = route("spend_change", 0.90, 1.00, 0.94)
    assert m.route == "DISTILL" and m.teacher_edge == pytest.approx(0.10) and m.student_edge == pytest.approx(0.06)
    assert route("spend_change", 0.90, 1.00, 0.97).route == "DIRECT"
    assert route("spend_change", 1.10, 1.00, 0.50).route == "DIRECT"  # a higher MAE is no edge
    nan = route("nba_primary", float("nan"), 0.3, 0.4)
    assert nan.route == "DIRECT" and "insufficient evidence" in nan.reason and nan.metric == "macro_f1"
    assert json.loads(json.dumps(m.to_dict()))["route"] == "DISTILL"
    with pytest.raises(StudentInputError, match="keep_share"):
        route("churn_signal", 0.8, 0.7, 0.75, keep_share=1.5)
    # The distilled form untrained: fine without a teacher edge, refused with one (the evidence would be missing).
    untrained = route("churn_signal", 0.74, 0.75, None)
    assert untrained.route == "DIRECT" and "no edge" in untrained.reason and "not trained" in untrained.reason
    assert route("spend_change", 1.10, 1.00, None).route == "DIRECT"
    with pytest.raises(StudentInputError, match="needs the distilled student"):
        route("churn_signal", 0.80, 0.75, None)


def test_fit_task_students_routes_on_validation_and_records_the_decision(binary):
    X, y, t, Xv, yv, tv = binary
    res = fit_task_students("churn_signal", X, y, t, Xv, yv, tv, NAMES, CFG, n_boot=20)
    v = res.validation
    assert set(v) == {"teacher", "distill", "direct"}
    assert teacher_has_edge("churn_signal", v["teacher"]["auc"]["value"], v["direct"]["auc"]["value"])
    assert (res.decision.teacher, res.decision.direct, res.decision.student) == (
        v["teacher"]["auc"]["value"], v["direct"]["auc"]["value"], v["distill"]["auc"]["value"])
    assert v["teacher"]["auc"]["lo"] <= v["teacher"]["auc"]["value"] <= v["teacher"]["auc"]["hi"]
    expected = route("churn_signal", res.decision.teacher, res.decision.direct, res.decision.student).route
    assert res.student.route == res.decision.route == expected
    assert res.student.metrics["routing"] == res.decision.to_dict()
    # The routed student is the one trained by the public function of its form (same bins, same model).
    same = (train_student("churn_signal", X, y, t, Xv, yv, tv, NAMES, CFG) if expected == "DISTILL"
            else train_direct("churn_signal", X, y, Xv, yv, NAMES, CFG))
    assert same.model_sha256 == res.student.model_sha256


def test_without_a_teacher_edge_the_distilled_form_is_not_trained(binary):
    """A teacher that trails the direct LightGBM on validation makes the route DIRECT whatever a distilled student
    scores, so it is not trained (half the task's cost); forcing DISTILL still trains and serves it."""
    X, y, t, Xv, yv, tv = binary
    rng = np.random.default_rng(7)
    noise_t, noise_v = rng.random(len(X)), rng.random(len(Xv))  # a teacher without information
    res = fit_task_students("churn_signal", X, y, noise_t, Xv, yv, noise_v, NAMES, CFG, n_boot=20)
    assert not teacher_has_edge("churn_signal", res.decision.teacher, res.decision.direct)
    assert res.validation["distill"] is None and res.student.route == res.decision.route == "DIRECT"
    assert "not trained" in res.decision.reason and math.isnan(res.decision.student)
    assert res.student.model_sha256 == train_direct("churn_signal", X, y, Xv, yv, NAMES, CFG).model_sha256
    forced = fit_task_students("churn_signal", X, y, noise_t, Xv, yv, noise_v, NAMES, CFG, n_boot=20,
                               force_route="DISTILL")
    assert forced.student.route == "DISTILL" and forced.validation["distill"] is not None
    assert "forced" in forced.decision.reason


# ------------------------------------------------------------------------------------------------ fidelity


def test_ranks_spearman_and_topk_by_hand():
    np.testing.assert_array_equal(average_ranks([3.0, 1.0, 2.0, 2.0]), [4.0, 1.0, 2.5, 2.5])
    np.testing.assert_array_equal(average_ranks([[1.0, 1.0, 0.0], [0.0, 5.0, 2.0]]), [[2.5, 2.5, 1.0], [1, 3, 2]])
    a, b = [1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]
    # ranks a = [1, 2.5, 2.5, 4], b = [1, 2, 3, 4]: cov 4.5 / sqrt(4.5 * 5)
    assert spearman(a, b) == pytest.approx(4.5 / math.sqrt(4.5 * 5.0))
    r = np.random.default_rng(0)
    x, y = r.integers(0, 5, 300).astype(float), r.normal(size=300)
    assert spearman(x, x + y) == pytest.approx(stats.spearmanr(x, x + y).statistic)
    assert math.isnan(spearman([1.0, 1.0], [0.0, 1.0]))
    # top 2 of 10 (top_fraction .2): {9, 8} vs {9, 0} -> 1 / 2
    s1 = np.arange(10.0)
    s2 = s1.copy()
    s2[0] = 8.5
    assert topk_agreement(s1, s2, 0.2) == 0.5


def test_fidelity_identical_predictions_pass_every_check_of_every_kind():
    Xb, yb, tb = binary_data(3000, 3)
    res = fidelity("churn_signal", yb, tb, tb)
    assert res.passed and res.failures == [] and all(res.checks.values())
    assert set(res.checks) == {"auc_gap", "spearman", "topk_agreement", "ece", "teacher_std", "teacher_auc"}
    assert res.metrics["auc_gap"] == 0 and res.metrics["spearman"] == pytest.approx(1.0)
    _, ym, tm = multiclass_data(3000, 3)
    res = fidelity("nba_primary", ym, tm, tm)
    assert res.passed and res.metrics["top1_agreement"] == 1.0 and res.metrics["topk_agreement"] == 1.0
    _, yr, tr = regression_data(3000, 3)
    res = fidelity("spend_change", yr, tr, tr)
    assert res.passed and res.metrics["mae_gap_rel"] == 0.0
    assert json.loads(json.dumps(res.to_dict()))["passed"] is True


def test_fidelity_shuffled_or_weak_students_and_degenerate_teachers_fail_with_named_metrics():
    _, y, t = binary_data(3000, 3)
    shuffled = np.random.default_rng(0).permutation(t)
    res = fidelity("churn_signal", y, t, shuffled)
    assert not res.passed and not res.checks["spearman"] and not res.checks["topk_agreement"]
    assert any("Spearman" in f and "min_spearman" in f for f in res.failures)
    assert any("top-k agreement" in f and "min_topk_agreement" in f for f in res.failures)
    noisy = _sig(np.log(t / (1 - t)) + 2.0 * np.random.default_rng(1).normal(size=len(t)))
    weak = fidelity("churn_signal", y, t, noisy)
    assert not weak.checks["auc_gap"] and weak.metrics["auc_gap"] > 0.03
    flat = np.full(len(t), 0.5) + 1e-4 * t  # near-constant teacher: the student copying it proves nothing
    degenerate = fidelity("churn_signal", y, flat, flat)
    assert not degenerate.passed and not degenerate.checks["teacher_std"]
    assert degenerate.checks["spearman"]  # the copy is perfect, which is exactly the blind spot
    unlabelled = fidelity("churn_signal", np.full(len(t), np.nan), t, t)
    assert not unlabelled.checks["auc_gap"] and any("not computable" in f for f in unlabelled.failures)
    _, yr, tr = regression_data(3000, 3)
    worse = fidelity("spend_change", yr, tr, tr + 0.5)
    assert not worse.checks["mae_gap_rel"] and worse.checks["spearman"]
    loose = fidelity("spend_change", yr, tr, tr + 0.5, FidelityThresholds(max_mae_gap_rel=5.0))
    assert loose.passed


def test_thresholds_config_and_fidelity_bad_input():
    th = FidelityThresholds.from_dict({"min_spearman": 0.9, "top_fraction": 0.05})
    assert FidelityThresholds.from_dict(th.to_dict()) == th and th.min_spearman == 0.9
    with pytest.raises(FidelityInputError, match="unknown keys"):
        FidelityThresholds.from_dict({"min_spearmen": 0.9})
    with pytest.raises(FidelityInputError, match="top_fraction"):
        FidelityThresholds(top_fraction=0.0)
    y = np.array([0.0, 1.0, 1.0])
    with pytest.raises(FidelityInputError, match="student_pred must be"):
        fidelity("churn_signal", y, [0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(FidelityInputError, match=r"\(3, 7\)"):
        fidelity("nba_primary", y, np.ones((3, 3)) / 3, np.ones((3, 3)) / 3)
    with pytest.raises(FidelityInputError, match="non-finite"):
        fidelity("churn_signal", y, [0.1, np.nan, 0.3], [0.1, 0.2, 0.3])
    with pytest.raises(FidelityInputError, match="0/1"):
        fidelity("churn_signal", [0.0, 2.0, 1.0], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    with pytest.raises(FidelityInputError, match="unknown task"):
        fidelity("churn", y, y, y)


# ------------------------------------------------------------------------------------------------ bad input


def test_student_config_round_trip_and_validation():
    assert StudentConfig.from_dict(CFG.to_dict()) == CFG
    assert json.loads(json.dumps(CFG.to_dict()))["params"]["num_leaves"] == 15
    for bad in ({"temperature": 0.0}, {"alpha": 1.5}, {"gain_share": 0.0}, {"min_features": 500},
                {"num_boost_round": 0}, {"params": {"objective": "binary"}}):
        with pytest.raises(StudentInputError, match="StudentConfig"):
            StudentConfig(**bad)
    with pytest.raises(StudentInputError, match="unknown keys"):
        StudentConfig.from_dict({"temprature": 1.0})


def test_bad_shapes_and_inputs_raise_clear_errors(binary):
    X, y, t, Xv, yv, tv = binary
    with pytest.raises(StudentInputError, match="X_train must be a numeric"):
        train_student("churn_signal", X[:, 0], y, t, Xv, yv, tv, NAMES, CFG)
    with pytest.raises(StudentInputError, match="teacher_train must be"):
        train_student("churn_signal", X, y, t[:-1], Xv, yv, tv, NAMES, CFG)
    with pytest.raises(StudentInputError, match="teacher_val must be"):
        train_student("churn_signal", X, y, t, Xv, yv, tv[:10], NAMES, CFG)
    with pytest.raises(StudentInputError, match="probabilities in"):
        train_student("churn_signal", X, y, t * 3, Xv, yv, tv, NAMES, CFG)
    with pytest.raises(StudentInputError, match="logits passed"):
        blend_targets("nba_primary", [0.0, 1.0], np.zeros((2, N_CLASSES)) + 2.0, CFG)
    with pytest.raises(StudentInputError, match="39 feature names for 40 columns"):
        train_direct("churn_signal", X, y, Xv, yv, NAMES[:-1], CFG)
    with pytest.raises(StudentInputError, match="duplicate"):
        train_direct("churn_signal", X, y, Xv, yv, ["f0"] * F, CFG)
    with pytest.raises(StudentInputError, match="training labels"):
        train_direct("churn_signal", X, y[:-1], Xv, yv, NAMES, CFG)
    with pytest.raises(StudentInputError, match="labelled validation"):
        train_direct("churn_signal", X, y, Xv, np.full(len(yv), np.nan), NAMES, CFG)
    with pytest.raises(StudentInputError, match="unknown task"):
        train_direct("churn", X, y, Xv, yv, NAMES, CFG)
    with pytest.raises(ValueError, match="0/1"):
        train_direct("churn_signal", X, y * 2, Xv, yv, NAMES, CFG)
    bins = FeatureBins.build(X, Xv, NAMES, CFG)
    with pytest.raises(StudentInputError, match=r"dataset-level LightGBM params .*\['max_bin', 'seed'\]"):
        train_direct("churn_signal", X, y, Xv, yv, NAMES, replace(CFG, seed=1, params={**CFG.params, "max_bin": 63}),
                     bins=bins)
    # Training-only parameters may differ between fits sharing the bins (e.g. a cheaper many-class recipe).
    faster = replace(CFG, params={**CFG.params, "learning_rate": 0.3}, num_boost_round=5)
    assert train_direct("churn_signal", X, y, Xv, yv, NAMES, faster, bins=bins).best_iteration <= 5


def test_an_unfaithful_distilled_student_is_routed_direct_on_validation(binary):
    """Keeping the teacher's edge is not enough: a distilled student must also rank like its teacher on the
    validation month, otherwise the task goes DIRECT with the failed fidelity numbers in the reason."""
    from ple_platform.core.distillation.fidelity import FidelityThresholds

    X, y, t, Xv, yv, tv = binary
    lenient = fit_task_students("churn_signal", X, y, t, Xv, yv, tv, NAMES, CFG, n_boot=20, keep_share=0.0,
                                validation_fidelity=FidelityThresholds(min_spearman=-1.0, min_topk_agreement=0.0,
                                                                       max_auc_gap=1.0, max_ece=1.0,
                                                                       min_teacher_std=0.0, min_teacher_auc=0.0))
    strict = fit_task_students("churn_signal", X, y, t, Xv, yv, tv, NAMES, CFG, n_boot=20, keep_share=0.0,
                               validation_fidelity=FidelityThresholds(min_spearman=0.99999, min_topk_agreement=0.0,
                                                                      max_auc_gap=1.0, max_ece=1.0,
                                                                      min_teacher_std=0.0, min_teacher_auc=0.0))
    assert lenient.decision.route == "DISTILL", lenient.decision.reason  # the fixture's teacher has an edge
    assert strict.decision.route == "DIRECT" and strict.student.route == "DIRECT"
    assert "not faithful" in strict.decision.reason and "Spearman" in strict.decision.reason

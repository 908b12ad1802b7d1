"""Evaluation metrics, bootstrap CIs, LightGBM baselines (B2) and gate explanations. Small synthetic cases;
metrics checked against sklearn or by hand. CPU, one or two threads, a few seconds in all."""

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from ple_platform.core.model import evaluate as ev
from ple_platform.core.model.baselines import predict_lightgbm, train_lightgbm_baselines
from ple_platform.core.model.ple import PLEConfig, PLEModel
from ple_platform.core.tasks.spec import TASKS, TASKS_BY_NAME
from ple_platform_tests.test_ple import SMALL_EXPERTS, make_batch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_agree_with_sklearn_including_ties(seed):
    r = rng(seed)
    y = (r.random(400) < 0.25).astype(float)
    p = np.round(np.clip(0.3 * y + r.random(400) * 0.7, 0, 1), 2)  # rounded: many tied scores
    assert ev.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert ev.pr_auc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert ev.log_loss(y, p) == pytest.approx(skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), rel=1e-9)
    assert math.isnan(ev.roc_auc(np.ones(5), np.arange(5.0)))  # one class: undefined, not 0.5


def test_ece_by_hand_zero_when_calibrated_large_when_not():
    # bins of width 1/15: 0.1 -> bin 1 (mean y .5 vs .1), 0.9 -> bin 13 (mean y 1 vs .9)
    assert ev.ece([0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert ev.ece([1, 0], [1.0, 0.0]) == 0.0  # p = 1 falls in the last bin, not past it
    r = rng(3)
    p = r.random(200_000)
    y = (r.random(200_000) < p).astype(float)
    assert ev.ece(y, p) < 0.01
    assert ev.ece(y, p**3) > 0.15  # systematically under-confident scores


@pytest.mark.parametrize("n_classes", [7, 50])
def test_multiclass_metrics_agree_with_sklearn(n_classes):
    r = rng(n_classes)
    y = r.integers(0, n_classes, 600)
    y[y == 3] = 4  # a class absent from y_true: macro over classes present in y_true or y_pred
    probs = r.dirichlet(np.ones(n_classes), 600)
    probs[np.arange(600), y] += r.random(600) * 0.2
    assert ev.macro_f1(y, probs) == pytest.approx(skm.f1_score(y, probs.argmax(1), average="macro"), abs=1e-12)
    assert ev.top_k_accuracy(y, probs, k=3) == pytest.approx(
        skm.top_k_accuracy_score(y, probs, k=3, labels=np.arange(n_classes)), abs=1e-12)
    assert ev.ndcg_at_k(y, probs, k=3) == pytest.approx(skm.ndcg_score(np.eye(n_classes)[y], probs, k=3), abs=1e-12)


def test_regression_metrics_agree_with_sklearn():
    r = rng(4)
    y = r.normal(3.0, 2.0, 500)
    p = y + r.normal(0, 1, 500)
    assert ev.mae(y, p) == pytest.approx(skm.mean_absolute_error(y, p), abs=1e-12)
    assert ev.r2(y, p) == pytest.approx(skm.r2_score(y, p), abs=1e-12)


def test_weighted_forms_equal_the_metric_on_the_resampled_rows():
    """The bootstrap's count weights are exactly 'customer i drawn c_i times'."""
    r = rng(5)
    n = 300
    yb, pb = (r.random(n) < 0.3).astype(float), np.round(r.random(n), 1)
    yc, pc = r.integers(0, 7, n), r.dirichlet(np.ones(7), n)
    yr, pr = r.normal(size=n), r.normal(size=n)
    idx = ev._replicate_indices(n, 0, 9)
    w = np.bincount(idx, minlength=n)
    for fn, y, p in [(ev.roc_auc, yb, pb), (ev.pr_auc, yb, pb), (ev.ece, yb, pb), (ev.log_loss, yb, pb),
                     (ev.macro_f1, yc, pc), (ev.top_k_accuracy, yc, pc), (ev.ndcg_at_k, yc, pc),
                     (ev.mae, yr, pr), (ev.r2, yr, pr)]:
        assert fn(y, p, weights=w) == pytest.approx(fn(y[idx], p[idx]), abs=1e-12), fn.__name__


def test_map_at_7_by_hand():
    n_products = 10
    scores = np.tile(np.arange(n_products, 0, -1, dtype=float), (4, 1))  # product 0 ranked first, then 1, ...
    held = np.zeros((4, n_products), bool)
    acquired = np.zeros((4, n_products), bool)
    held[0, 0] = True
    acquired[0, [2, 5]] = True  # candidates 1,2,3,...: hits at ranks 2 and 5 -> (1/2 + 2/5) / 2
    # customer 1 acquires nothing: excluded
    held[2, :2] = True
    acquired[2, 9] = True  # rank 8 of the candidates: outside the top 7 -> AP 0
    held[3, 4], acquired[3, 4] = True, True  # "acquires" a product already held: not a new product
    ap, has = ev.average_precision_at_k(scores, held, acquired, k=7)
    assert ap.tolist() == pytest.approx([0.45, 0.0, 0.0, 0.0])
    assert has.tolist() == [True, False, True, False]
    assert ev.map_at_k(scores, held, acquired) == pytest.approx(0.225)
    assert ev.map_at_k(scores, held, acquired, include_empty=True) == pytest.approx(0.45 / 4)  # Kaggle's
    # A held product is never recommended, however high its score.
    only = np.zeros((1, n_products), bool)
    only[0, 1] = True
    top_held = np.zeros((1, n_products), bool)
    top_held[0, 0] = True
    assert ev.map_at_k(scores[:1], top_held, only) == 1.0
    ci = ev.map_at_k_ci(scores, held, acquired, n_boot=50)
    assert ci["value"] == pytest.approx(0.225) and 0.0 <= ci["lo"] <= ci["hi"] <= 0.45


# ------------------------------------------------------------------------------------------------ bootstrap


def _scored(n, seed):
    r = rng(seed)
    y = (r.random(n) < 0.3).astype(float)
    return y, 1 / (1 + np.exp(-(1.2 * y + r.normal(size=n))))


def test_bootstrap_ci_contains_the_estimate_narrows_with_data_and_matches_the_generic_path():
    y, p = _scored(400, 0)
    small = ev.bootstrap_ci(ev.roc_auc, y, p, n_boot=200, seed=1)
    assert small["lo"] <= small["value"] <= small["hi"]
    assert small["value"] == pytest.approx(skm.roc_auc_score(y, p))
    y4, p4 = _scored(6400, 0)
    big = ev.bootstrap_ci(ev.roc_auc, y4, p4, n_boot=200, seed=1)
    assert big["lo"] <= big["value"] <= big["hi"]
    assert (big["hi"] - big["lo"]) < 0.5 * (small["hi"] - small["lo"])  # ~1/sqrt(16) in theory
    # Any metric callable works (one call per replicate) and sees the very same resamples.
    generic = ev.bootstrap_ci(lambda a, b: skm.roc_auc_score(a, b), y, p, n_boot=200, seed=1)
    assert generic == pytest.approx(small, abs=1e-12)
    assert ev.bootstrap_ci(ev.roc_auc, y, p, n_boot=200, seed=1) == small  # reproducible
    assert ev.bootstrap_ci(ev.roc_auc, y, p, n_boot=200, seed=2) != small


def _all_tasks(n, seed, missing=0.0):
    r = rng(seed)
    labels, preds = {}, {}
    for t in TASKS:
        if t.kind == "binary":
            y = (r.random(n) < 0.2).astype(float)
            p = np.clip(0.2 + 0.4 * y + 0.3 * r.normal(size=n), 0.001, 0.999)
        elif t.kind == "multiclass":
            y = np.minimum(r.geometric(0.5, n) - 1, t.n_classes - 1).astype(float)  # skewed: class 0 ~ 50%
            p = r.dirichlet(np.ones(t.n_classes), n)
            p[np.arange(n), y.astype(int)] += 0.3
            p /= p.sum(1, keepdims=True)
        else:
            y = r.normal(size=n)
            p = y + r.normal(size=n)
        if missing:
            y[r.random(n) < missing] = np.nan if t.kind == "regression" or t.name == "churn_signal" else -1
        labels[t.name], preds[t.name] = y, p
    return labels, preds


def test_evaluate_predictions_every_task_kind_with_cis_and_trivial_baselines():
    labels, preds = _all_tasks(1000, 0)
    res = ev.evaluate_predictions(labels, preds, n_boot=100, seed=0)
    assert list(res) == [t.name for t in TASKS]
    expected = {"binary": {"auc", "pr_auc", "ece", "logloss", "prevalence"},
                "multiclass": {"macro_f1", "top3_acc", "ndcg@3", "macro_f1_majority", "top3_acc_majority",
                               "ndcg@3_majority"},
                "regression": {"mae", "r2"}}
    for t in TASKS:
        assert set(res[t.name]) == expected[t.kind]
        assert TASKS_BY_NAME[t.name].primary_metric in res[t.name]
        for m in res[t.name].values():
            assert set(m) == {"value", "lo", "hi"} and m["lo"] <= m["value"] <= m["hi"]
    nba = res["nba_primary"]
    y = labels["nba_primary"].astype(int)
    # Majority baseline ranks classes by frequency for everyone: class 0 (~50%) first.
    order = np.argsort(-np.bincount(y, minlength=7), kind="stable")
    rank_of = np.empty(7, int)
    rank_of[order] = np.arange(1, 8)
    gains = np.where(rank_of[y] <= 3, 1 / np.log2(rank_of[y] + 1), 0.0)
    assert nba["ndcg@3_majority"]["value"] == pytest.approx(gains.mean())
    assert nba["ndcg@3_majority"]["value"] > 0.5  # the high trivial baseline reference item 22 never showed
    assert nba["macro_f1_majority"]["value"] == pytest.approx(
        skm.f1_score(y, np.full_like(y, order[0]), average="macro"))
    assert res["churn_signal"]["auc"]["value"] == pytest.approx(
        skm.roc_auc_score(labels["churn_signal"], preds["churn_signal"]))
    assert ev.mean_binary_auc(res) == pytest.approx(
        np.mean([res[t.name]["auc"]["value"] for t in TASKS if t.kind == "binary"]))


def test_missing_labels_are_ignored_per_task():
    labels, preds = _all_tasks(600, 1, missing=0.2)
    for t, y in labels.items():  # garbage predictions on unlabelled rows must not matter
        bad = ~np.isfinite(y) | ((y == -1) & (TASKS_BY_NAME[t].kind != "regression"))
        assert bad.any()
        preds[t][bad] = 0.0 if preds[t].ndim == 1 else 1.0
    res = ev.evaluate_predictions(labels, preds, n_boot=0)
    for t in ("churn_signal", "will_acquire_deposits", "nba_primary", "spend_change"):
        y = labels[t]
        ok = np.isfinite(y) & (y != -1)
        clean = ev.evaluate_predictions({t: y[ok]}, {t: preds[t][ok]}, n_boot=0)[t]
        assert {k: v["value"] for k, v in res[t].items()} == pytest.approx({k: v["value"] for k, v in clean.items()})
        assert all(math.isnan(v["lo"]) for v in res[t].values())  # n_boot=0: point values only


def test_compare_predictions_is_paired():
    labels, preds = _all_tasks(800, 2)
    same = ev.compare_predictions(labels, preds, preds, n_boot=50)
    assert same["mean_binary_auc"]["auc"] == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    worse = {t: (p if TASKS_BY_NAME[t].kind != "binary" else 0.5 * p + 0.5 * rng(7).random(len(p)))
             for t, p in preds.items()}
    d = ev.compare_predictions(labels, preds, worse, n_boot=100)["mean_binary_auc"]["auc"]
    assert 0 < d["lo"] <= d["value"] <= d["hi"]


# ------------------------------------------------------------------------------------------------ LightGBM B2

SMALL_GBM = {"num_leaves": 15, "min_data_in_leaf": 20}


def _gbm_data(n, seed, n_features=12):
    r = rng(seed)
    X = r.normal(size=(n, n_features))
    X[r.random((n, n_features)) < 0.05] = np.nan  # missing features are fine for LightGBM
    col = np.nan_to_num(X[:, 3])
    y = {
        "churn_signal": (col > 0).astype(float),  # one column decides
        "nba_primary": np.digitize(col, [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]).astype(float),
        "spend_change": r.normal(size=n),  # pure noise: nothing to learn
    }
    return X, y


@pytest.fixture(scope="module")
def gbm():
    X, y = _gbm_data(800, 0)
    y["churn_signal"][:80] = np.nan
    y["nba_primary"][80:120] = -1
    Xv, yv = _gbm_data(400, 1)
    models = train_lightgbm_baselines(X, y, Xv, yv, params=SMALL_GBM, seed=3, num_boost_round=150,
                                      early_stopping_rounds=10, num_threads=1)
    return models, (X, y, Xv, yv)


def test_lightgbm_baselines_learn_predict_and_early_stop(gbm):
    models, _ = gbm
    assert list(models) == ["churn_signal", "nba_primary", "spend_change"]
    Xt, yt = _gbm_data(500, 2)
    pred = predict_lightgbm(models, Xt, num_threads=1)
    assert pred["churn_signal"].shape == (500,) and 0 <= pred["churn_signal"].min() <= pred["churn_signal"].max() <= 1
    assert ev.roc_auc(yt["churn_signal"], pred["churn_signal"]) > 0.95
    assert pred["nba_primary"].shape == (500, TASKS_BY_NAME["nba_primary"].n_classes)
    np.testing.assert_allclose(pred["nba_primary"].sum(1), 1.0, atol=1e-9)
    assert pred["spend_change"].shape == (500,)
    # The noisy target stops early on the validation month; the model keeps its best iteration only.
    assert models["spend_change"].best_iteration < 150 - 10
    assert set(models["spend_change"].best_score["val"]) == {"l1"}
    res = ev.evaluate_predictions(yt, pred, n_boot=0)  # the format evaluate_predictions expects
    assert res["nba_primary"]["macro_f1"]["value"] > 0.5


def test_lightgbm_baselines_are_deterministic_for_a_seed(gbm):
    models, (X, y, Xv, yv) = gbm
    keep = {"churn_signal": y["churn_signal"]}
    kw = dict(params={**SMALL_GBM, "num_leaves": 7}, num_boost_round=20, early_stopping_rounds=5, num_threads=1)
    a = predict_lightgbm(train_lightgbm_baselines(X, keep, Xv, yv, seed=3, **kw), Xv)["churn_signal"]
    b = predict_lightgbm(train_lightgbm_baselines(X, keep, Xv, yv, seed=3, **kw), Xv)["churn_signal"]
    c = predict_lightgbm(train_lightgbm_baselines(X, keep, Xv, yv, seed=4, **kw), Xv)["churn_signal"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # bagging and feature fraction do depend on the seed


# ------------------------------------------------------------------------------------------------ gates


def tiny_model(experts=("deepfm", "temporal", "causal"), n_layers=2, **kw) -> PLEModel:
    torch.manual_seed(0)
    cfg = PLEConfig(expert_dim=16, n_layers=n_layers, mlp_hidden=(16,), tower_dims=(16,), experts=experts,
                    expert_config={e: SMALL_EXPERTS[e] for e in experts if e in SMALL_EXPERTS}, **kw)
    return PLEModel(cfg)


def test_gate_entropy_bounds():
    assert ev.gate_entropy(np.full((5, 8), 1 / 8)) == pytest.approx(1.0)
    assert ev.gate_entropy(np.eye(4)) == pytest.approx(0.0, abs=1e-9)
    w = torch.softmax(torch.randn(20, 8), 1)
    assert 0 < ev.gate_entropy(w) < 1


def test_gate_faithfulness_on_a_real_ple_model_runs_without_grad():
    model = tiny_model().train()
    batch, labels = make_batch(n=24, seed=5)
    seen = []
    hook = model.towers["churn_signal"].register_forward_hook(
        lambda m, i, o: seen.append((torch.is_grad_enabled(), m.training)))
    res = ev.gate_faithfulness(model, batch, "churn_signal", seed=0)
    hook.remove()
    assert seen and all(g is False and t is False for g, t in seen)  # no grad, eval mode (no dropout)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    assert 0.0 <= res["share"] <= 1.0 and res["n_customers"] == 24 and res["n_shared"] == 3
    assert res["mean_delta_top"] >= 0 and res["mean_delta_random"] >= 0
    assert set(res["top_expert_share"]) == set(model.expert_names)
    assert sum(res["top_expert_share"].values()) == pytest.approx(1.0)
    sampled = ev.gate_faithfulness(model, batch, "churn_signal", n_random=4, seed=1)
    assert 0.0 <= sampled["share"] <= 1.0 and sampled["mean_delta_top"] == res["mean_delta_top"]
    every = ev.gate_faithfulness_all(model, batch, labels=labels)
    assert set(every) == set(model.config.tasks)
    assert every["churn_signal"]["share"] == res["share"]
    assert all(0.0 <= r["share"] <= 1.0 for r in every.values())


def test_gate_faithfulness_is_one_when_the_gate_really_routes_and_ignores_own_experts():
    # One layer (no shared gate): an expert's only path to the task is its task-gate weight. Force the churn
    # gate onto expert 1 among the shared ones and give the task's own expert an even larger weight: the top
    # *shared* expert must be expert 1, and masking it moves the logit far more than masking a ~0-weight one.
    model = tiny_model(n_layers=1, expert_kind="mlp", experts=("deepfm", "temporal", "causal", "ot"))
    gate = model.gates0.task_gates["churn_signal"]
    with torch.no_grad():
        gate.weight.zero_()
        gate.bias.copy_(torch.tensor([-12.0, 4.0, -12.0, -12.0, 6.0]))  # 4 shared, then own
    batch, _ = make_batch(n=16, seed=6)
    res = ev.gate_faithfulness(model, batch, "churn_signal")
    assert res["top_expert_share"]["mlp_1"] == 1.0
    assert res["share"] == 1.0 and res["mean_delta_top"] > 100 * res["mean_delta_random"]
    # Multiclass: the moved quantity is a class log-probability, true class where labelled.
    labels = {"nba_primary": torch.tensor([0.0, float("nan")] * 8)}
    mc = ev.gate_faithfulness(model, batch, "nba_primary", labels=labels)
    assert 0.0 <= mc["share"] <= 1.0

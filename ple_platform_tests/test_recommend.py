"""Product ranking, suitability, the feature glossary and L1 reasons (core/recommend). Hand-computed cases, no
Dagster; one tiny LightGBM for real TreeSHAP input. About a second in all."""

import dataclasses
import json
import re

import lightgbm as lgb
import numpy as np
import pytest

from ple_platform.core.data.schema import INVESTMENT_PRODUCTS, N_PRODUCTS, PRODUCT_NAMES
from ple_platform.core.features.spec import FEATURE_GROUPS, all_columns
from ple_platform.core.model import products as pr
from ple_platform.core.recommend import glossary as gl
from ple_platform.core.recommend import ranking as rk
from ple_platform.core.recommend import reasons as rs

P = {name: i for i, name in enumerate(PRODUCT_NAMES)}


# ------------------------------------------------------------------------------------------------ glossary


def test_every_feature_column_resolves_to_a_real_concept():
    columns = all_columns()
    assert len(columns) == 1211
    placeholder = re.compile(r"\{|\}|\(을\)|\(를\)|\(이\)|\(가\)|\(은\)|\(는\)|을\(를\)|이\(가\)|은\(는\)")
    for col in columns:
        c = gl.concept_for(col)
        assert c.column == col and c.unit in gl.UNITS
        phrases = [c.en, c.ko] + ([c.en_neg, c.ko_neg] if c.binary else [])
        for ph in phrases:
            assert ph and ph != col and "_" not in ph, (col, ph)  # no fallback to the bare column name
            assert not placeholder.search(ph), (col, ph)
        assert re.search("[가-힣]", c.ko), col
        if c.binary:  # flags are 0/1 columns and never show a number
            assert not c.shows_number and c.format_value(1.0, "en") is None
    # Every rule matches a column of its group (no dead rule); families are shared across groups.
    for rule in gl.RULES:
        group = next(g for g in FEATURE_GROUPS if g.name == rule.group)
        assert any(re.fullmatch(rule.pattern, col) for col in group.columns), rule.pattern
    assert gl.concept_for("log_spend").key == gl.concept_for("roll_90d_sum").key == "card_spend"


def test_concept_phrases_units_and_transforms():
    c = gl.concept_for("roll_30d_sum")
    assert (c.key, c.en, c.ko, c.unit) == ("card_spend", "your card spending over the last 30 days",
                                           "최근 30일 카드 이용액", "currency")
    assert c.format_value(1234.4, "en") == "€1,234"
    spend = gl.concept_for("log_spend")  # ln(1 + Σ amount): shown as the amount
    assert spend.format_value(float(np.log1p(800.0)), "en") == "€800"
    hold = gl.concept_for("hold_funds")
    assert hold.key == "holding:funds" and hold.phrase("en", 1.0) == "You hold investment funds"
    assert hold.phrase("en", 0.0) == "You do not hold investment funds yet"
    assert gl.concept_for("hmm_journey_p3").en == "your current customer-journey stage"
    assert gl.concept_for("hmm_journey_state").key == gl.concept_for("hmm_journey_p0").key == "stage:journey"
    for col in ("mamba_007", "gcf_012", "prodh_003", "lag_amount_001", "tdag_h1_entropy", "gmm_p03"):
        assert gl.concept_for(col).unit == "score" and gl.concept_for(col).format_value(3.0, "en") is None
    assert gl.concept_for("mamba_049").en == "your recent transaction pattern"
    assert gl.concept_for("tenure_months").format_value(1.0, "en") == "1 month"
    assert gl.concept_for("tenure_months").format_value(24.0, "ko") == "24개월"
    assert gl.concept_for("recency_days").format_value(12.0, "en") == "12 days"
    assert gl.concept_for("recency_days").format_value(1.0, "en") == "1 day"
    assert gl.concept_for("recency_days").format_value(12.0, "ko") == "12일"
    assert gl.concept_for("weekend_ratio").format_value(0.42, "en") == "42%"
    assert gl.concept_for("md_spend_vel1").format_value(float(np.log(1.25)), "en") == "25%"  # growth rate
    assert gl.format_currency(1234.5) == "€1,235" and gl.format_currency(-3.2) == "-€3"
    assert gl.format_count(2.46) == "2.5" and gl.format_count(1234.0) == "1,234"


def test_unknown_columns_and_names_are_clear_errors():
    with pytest.raises(ValueError, match="'hold_spaceship'.*FEATURE_GROUPS"):
        gl.concept_for("hold_spaceship")
    with pytest.raises(ValueError, match="gate column 'quantum'"):
        gl.expert_phrase("quantum", "en")
    assert gl.expert_phrase("will_acquire_funds/own_0", "en") == "overall profile"
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        gl.product_label("funds", "fr")


def test_josa_follows_the_final_consonant():
    # consonant-final vs vowel-final syllables
    assert gl.josa("대출", "을/를") == "대출을" and gl.josa("계좌", "을/를") == "계좌를"
    assert gl.josa("예금", "이/가") == "예금이" and gl.josa("신용카드", "이/가") == "신용카드가"
    assert gl.josa("이용액", "은/는") == "이용액은" and gl.josa("비중", "은/는") == "비중은"
    assert gl.josa("펀드", "은/는") == "펀드는" and gl.josa("펀드", "를/을") == "펀드를"  # either spelling
    # ㄹ takes 로, other finals 으로
    assert gl.josa("대출", "으로/로") == "대출로" and gl.josa("예금", "으로/로") == "예금으로"
    assert gl.josa("계좌", "으로/로") == "계좌로"
    # numbers by their reading: 2 이(vowel), 3 삼(ㅁ), 10 십(ㅂ), 100 백(ㄱ); "%" 퍼센트 (vowel); Latin: 엘 vs 비
    assert gl.josa("2", "이/가") == "2가" and gl.josa("3", "이/가") == "3이"
    assert gl.josa("10", "이/가") == "10이" and gl.josa("1,000", "은/는") == "1,000은"
    assert gl.josa("42%", "이/가") == "42%가"
    assert gl.josa("HTML", "을/를") == "HTML을" and gl.josa("ATB", "을/를") == "ATB를"
    assert gl.josa("(계좌)", "을/를") == "(계좌)를"  # closing brackets are skipped
    with pytest.raises(ValueError, match="particle pair"):
        gl.josa("계좌", "을(를)")
    with pytest.raises(ValueError, match="no word"):
        gl.josa("", "을/를")
    assert gl.fill("{p:을/를} 보유", {"p": "대출"}) == "대출을 보유"


# ------------------------------------------------------------------------------------------------ priors


def _holdings_case():
    """4 customers. Deposits: c0 acquires short; c1 acquires short + long; c2 keeps short (no acquisition);
    c3 drops medium (no acquisition). Nothing else changes."""
    t = np.zeros((4, N_PRODUCTS), dtype=np.int8)
    t1 = np.zeros_like(t)
    t1[0, P["short_deposit"]] = 1
    t1[1, P["short_deposit"]] = t1[1, P["long_deposit"]] = 1
    t[2, P["short_deposit"]] = t1[2, P["short_deposit"]] = 1
    t[3, P["medium_deposit"]] = 1
    return t, t1


def test_product_priors_hand_computed_and_json_round_trip():
    pri = pr.fit_product_priors(*_holdings_case())
    # deposits: acquisitions (short 2, medium 0, long 1), α = 1: (2+1)/(3+3), (0+1)/6, (1+1)/6
    assert pri.share_in_group[[P["short_deposit"], P["medium_deposit"], P["long_deposit"]]] == pytest.approx(
        [3 / 6, 1 / 6, 2 / 6])
    # "other" (saving, guarantee, derivative, pensions): no acquisitions -> uniform 1/4
    for p in ("saving", "guarantee", "derivative", "pensions"):
        assert pri.share_in_group[P[p]] == pytest.approx(0.25)
    # rate among non-holders at t: short deposit held at t by c2 only -> 2 / 3
    assert pri.product_rate[P["short_deposit"]] == pytest.approx(2 / 3)
    assert pri.overall_rate == pytest.approx(3 / (4 * 24 - 2))  # 3 acquisitions, 2 held pairs at t
    assert pri.n_rows == 4 and pri.acquisitions.sum() == 3
    back = pr.ProductPriors.from_dict(json.loads(json.dumps(pri.to_dict())))
    np.testing.assert_allclose(back.share_in_group, pri.share_in_group)
    assert back.overall_rate == pri.overall_rate and back.n_rows == 4
    # The fit reads only the arrays given: dropping c1's rows changes the shares accordingly.
    t, t1 = _holdings_case()
    sub = pr.fit_product_priors(t[[0, 2, 3]], t1[[0, 2, 3]])
    assert sub.share_in_group[P["short_deposit"]] == pytest.approx((1 + 1) / (1 + 3))


def test_product_priors_validation():
    t, t1 = _holdings_case()
    with pytest.raises(ValueError, match=r"held_t must be \(N, 24\).*\(4, 23\)"):
        pr.fit_product_priors(t[:, :23], t1)
    bad = t1.copy()
    bad[1, P["funds"]] = 2
    with pytest.raises(ValueError, match=r"held_t1 must contain only 0/1.*row 1, product 'funds'"):
        pr.fit_product_priors(t, bad)
    with pytest.raises(ValueError, match="0/1"):
        pr.fit_product_priors(t.astype(float) * np.nan, t1)
    with pytest.raises(ValueError, match="same shape"):
        pr.fit_product_priors(t, t1[:3])
    d = pr.fit_product_priors(t, t1).to_dict()
    with pytest.raises(ValueError, match="product list"):
        pr.ProductPriors.from_dict({**d, "products": d["products"][::-1]})
    with pytest.raises(ValueError, match="sum to 1 per group"):
        pr.ProductPriors.from_dict({**d, "share_in_group": [0.5] * 24})
    with pytest.raises(ValueError, match="missing field 'alpha'"):
        pr.ProductPriors.from_dict({k: v for k, v in d.items() if k != "alpha"})


# ------------------------------------------------------------------------------------------------ scores


def _task_preds():
    nba = np.array([[0.4, 0.1, 0.05, 0.1, 0.03, 0.02, 0.3],
                    [0.8, 0.05, 0.05, 0.03, 0.01, 0.01, 0.05]])
    return {
        "will_acquire_deposits": np.array([0.8, 0.2]),
        "will_acquire_investments": np.array([[0.1], [0.5]]),  # (N, 1) is accepted
        "will_acquire_accounts": np.array([0.3, 0.6]),
        "will_acquire_lending": np.array([0.05, 0.4]),
        "will_acquire_payments": np.array([0.7, 0.9]),
        "nba_primary": nba,
        "churn_signal": np.array([0.5, 0.5]),  # extra tasks are ignored
    }


def test_product_scores_hand_computed_two_customers():
    pri = pr.fit_product_priors(*_holdings_case())
    s = pr.product_scores(_task_preds(), pri)
    assert s.shape == (2, 24)
    assert s[0, P["short_deposit"]] == pytest.approx(0.8 * 3 / 6)
    assert s[1, P["long_deposit"]] == pytest.approx(0.2 * 2 / 6)
    assert s[0, P["saving"]] == pytest.approx(0.3 * 0.25)  # "other" uses nba_primary's class 6
    assert s[1, P["pensions"]] == pytest.approx(0.05 * 0.25)
    # accounts has 8 products and no acquisitions: share 1/8 each
    assert s[1, P["e_account"]] == pytest.approx(0.6 / 8)
    # lending: mortgage, loans (1/2 each); payments: 4 products (1/4); investments: 3 (1/3)
    assert s[1, P["loans"]] == pytest.approx(0.4 / 2)
    assert s[0, P["credit_card"]] == pytest.approx(0.7 / 4)
    assert s[1, P["funds"]] == pytest.approx(0.5 / 3)
    assert pr.task_for_product("pensions") == "nba_primary"
    assert pr.task_for_product(P["credit_card"]) == "will_acquire_payments"


def test_product_scores_validation():
    pri = pr.fit_product_priors(*_holdings_case())
    tp = _task_preds()
    del tp["will_acquire_lending"]
    with pytest.raises(ValueError, match="lacks 'will_acquire_lending'.*'lending'"):
        pr.product_scores(tp, pri)
    tp = _task_preds()
    tp["nba_primary"] = tp["nba_primary"][:, :6]
    with pytest.raises(ValueError, match=r"nba_primary.*\(N, 7\)"):
        pr.product_scores(tp, pri)
    tp = _task_preds()
    tp["will_acquire_accounts"] = np.array([0.3, 1.2])
    with pytest.raises(ValueError, match="will_acquire_accounts.*probabilities in"):
        pr.product_scores(tp, pri)
    tp = _task_preds()
    tp["will_acquire_payments"] = np.array([0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="3 rows"):
        pr.product_scores(tp, pri)


# ------------------------------------------------------------------------------------------------ top-k


def test_top_k_order_ties_and_padding_by_hand():
    s = np.zeros((2, 24))
    s[0, [3, 5, 7, 9]] = [0.5, 0.9, 0.9, 0.1]  # 5 and 7 tie: lower index first
    held = np.zeros((2, 24), dtype=np.int8)
    held[0, 5] = 1
    idx, top = rk.top_k(s, held, k=3)
    assert idx[0].tolist() == [7, 3, 9] and top[0].tolist() == [0.9, 0.5, 0.1]
    assert idx[1].tolist() == [0, 1, 2]  # all zero: index order
    # only two candidates left -> padded with -1 / NaN
    held2 = np.ones((1, 24), dtype=bool)
    held2[0, [4, 20]] = False
    idx2, top2 = rk.top_k(np.arange(24.0)[None, :], held2, k=4)
    assert idx2.tolist() == [[20, 4, -1, -1]] and np.isnan(top2[0, 2:]).all()
    idx3, _ = rk.top_k(np.zeros((1, 24)), np.zeros((1, 24)), k=30)
    assert idx3.shape == (1, 30) and idx3[0, 24:].tolist() == [-1] * 6
    with pytest.raises(ValueError, match="k must be a positive integer"):
        rk.top_k(s, held, k=0)
    with pytest.raises(ValueError, match="held must contain only 0/1"):
        rk.top_k(s, held * 3, k=2)
    with pytest.raises(ValueError, match="finite"):
        rk.top_k(np.full((2, 24), np.nan), held)


def test_top_k_never_returns_a_held_or_ineligible_product():
    r = np.random.default_rng(3)
    s = np.round(r.random((500, 24)), 2)  # many ties
    held = (r.random((500, 24)) < 0.4).astype(np.int8)
    elig = r.random((500, 24)) < 0.8
    idx, top = rk.top_k(s, held, k=7, eligible=elig)
    rows = np.repeat(np.arange(500), 7).reshape(500, 7)
    valid = idx >= 0
    assert not held[rows[valid], idx[valid]].any()
    assert elig[rows[valid], idx[valid]].all()
    # padding only when a customer has fewer than 7 candidates, and scores are non-increasing
    n_cand = ((held == 0) & elig).sum(1)
    assert (valid.sum(1) == np.minimum(n_cand, 7)).all()
    assert (np.diff(np.where(valid, top, -1.0), axis=1) <= 0).all()


def test_suitability_blocks_investment_products_without_a_profile():
    prof = np.array([None, "conservative", "growth", "bogus", float("nan")], dtype=object)
    mask, blocked = rk.eligibility(prof)
    inv = [P[p] for p in sorted(INVESTMENT_PRODUCTS)]
    assert sorted(INVESTMENT_PRODUCTS) == ["derivative", "funds", "pension_plan", "securities"]
    assert not mask[0, inv].any() and not mask[3, inv].any() and not mask[4, inv].any()
    assert mask[1, [P["funds"], P["pension_plan"], P["securities"]]].all() and not mask[1, P["derivative"]]
    assert mask[2].all()
    non_inv = [i for i in range(24) if i not in inv]
    assert mask[:, non_inv].all()
    assert blocked == 4 + 1 + 0 + 4 + 4
    # wired into top_k: a customer without a profile never gets an investment product
    s = np.zeros((5, 24))
    s[:, inv] = 1.0
    idx, _ = rk.top_k(s, np.zeros((5, 24)), k=5, eligible=mask)
    assert not set(idx[0]) & set(inv) and set(idx[2][:4]) == set(inv)
    with pytest.raises(ValueError, match="1-D"):
        rk.eligibility(np.array([["growth"]]))


# ------------------------------------------------------------------------------------------------ reasons

NAMES = ["roll_30d_sum", "hold_current_account", "txn_count", "recency_days", "mamba_000", "log_spend",
         "ratio_night", "tenure_months"]
RAW = np.array([[1234.4, 0, 12, 3, 0.7, np.log1p(800.0), 0.25, 1],
                [50.0, 1, 2, 17, 0.1, np.log1p(20.0), 0.5, 24]])
# customer 0: roll_30d_sum 5 > log_spend 4 (same concept), hold 0.3, mamba 0.2, txn 0.1; customer 1: all negative
CONTRIB = np.array([[5.0, 0.3, 0.1, 0.0, 0.2, 4.0, 0.0, -1.0, 0.5],
                    [-1.0, -0.2, -3.0, -0.5, -0.1, -0.2, -2.0, -1.0, 0.5]])
GATES = {"deepfm": np.array([0.2, 0.5]), "temporal": np.array([0.423, 0.1]),
         "will_acquire_payments/own_0": np.array([0.377, 0.4])}


def _explain(lang="en", **kw):
    return rs.explain_batch("credit_card", "will_acquire_payments", CONTRIB, NAMES, RAW, GATES, lang=lang, **kw)


def test_reasons_english_by_hand():
    a, b = _explain()
    assert [r.text for r in a] == [
        "Your card spending over the last 30 days is €1,234.",
        "You do not hold a current account yet.",
        "Based on your recent transaction pattern, a credit card would suit you.",
        "Our model relied most on your recent transaction history (42%).",
    ]
    assert a[0].columns == ("roll_30d_sum",) and a[0].values == (1234.4,) and a[0].contributions == (5.0,)
    assert a[0].concept_keys == ("card_spend",) and a[1].concept_keys == ("holding:current_account",)
    assert a[3].kind == "gate" and a[3].gate_expert == "temporal" and a[3].gate_weight == pytest.approx(0.423)
    # no positive contribution: largest-magnitude negatives, sign kept; ties (roll -1, tenure -1) by index
    assert [r.columns[0] for r in b[:3]] == ["txn_count", "ratio_night", "roll_30d_sum"]
    assert [r.contributions[0] for r in b[:3]] == [-3.0, -2.0, -1.0]
    assert b[0].text == "Your number of card payments this month is 2."
    assert b[3].text == "Our model relied most on your profile and product mix (50%)."
    # different contributions -> different reasons; same input -> same text
    assert [r.text for r in a] != [r.text for r in b]
    assert [r.text for r in _explain()[0]] == [r.text for r in a]
    assert json.loads(json.dumps(a[0].to_dict()))["columns"] == ["roll_30d_sum"]


def test_reasons_korean_particles_and_no_placeholders():
    a, b = _explain("ko")
    assert [r.text for r in a] == [
        "고객님의 최근 30일 카드 이용액은 €1,234입니다.",
        "고객님은 아직 입출금 계좌를 보유하고 있지 않습니다.",  # 좌: vowel -> 를
        "최근 거래 패턴을 분석한 결과, 고객님께 신용카드가 잘 맞을 것으로 보입니다.",  # 드: vowel -> 가
        "모델은 고객님의 최근 거래 흐름을 가장 많이 참고했습니다(42%).",  # 름: ㅁ -> 을
    ]
    assert b[0].text == "고객님의 이번 달 카드 결제 건수는 2건입니다."  # 수: vowel -> 는
    # a product ending in a consonant (대출, ㄹ) gets 을/이
    c = np.zeros((1, 9))
    c[0, 1], c[0, 4] = 0.5, 0.3
    r = rs.explain("loans", "will_acquire_lending", c[0], NAMES, RAW[0], lang="ko")
    assert [x.text for x in r] == ["고객님은 아직 입출금 계좌를 보유하고 있지 않습니다.",
                                   "최근 거래 패턴을 분석한 결과, 고객님께 대출이 잘 맞을 것으로 보입니다."]
    names = ["hold_loans", "hold_credit_card"]
    r2 = rs.explain("mortgage", "will_acquire_lending", [0.2, 0.1, 0.0], names, [1, 0], lang="ko")
    assert [x.text for x in r2] == ["고객님은 대출을 보유하고 계십니다.", "고객님은 아직 신용카드를 보유하고 있지 않습니다."]
    for x in a + b + r + r2:
        assert not re.search(r"\((을|를|이|가|은|는)\)", x.text)


def test_every_number_in_a_reason_is_the_customers_own_value():
    for lang in ("en", "ko"):
        batch = _explain(lang)
        for i, reasons in enumerate(batch):
            own = dict(zip(NAMES, RAW[i]))
            gate_row = {e: float(w[i]) for e, w in GATES.items()}
            for r in reasons:
                assert rs.grounded_numbers(r, own, gate_row), r.text
            # the numeric reasons are not grounded in the other customer's values
            other = dict(zip(NAMES, RAW[1 - i]))
            other_gates = {e: float(w[1 - i]) for e, w in GATES.items()}
            numeric = [r for r in reasons if re.search(r"\d", r.text.replace("30일", "").replace("30 days", ""))]
            assert numeric and not any(rs.grounded_numbers(r, other, other_gates) for r in numeric)
    first = _explain()[0][0]
    assert not rs.grounded_numbers(dataclasses.replace(first, text=first.text.replace("1,234", "1,999")),
                                   dict(zip(NAMES, RAW[0])))
    assert not rs.grounded_numbers(first, {})  # the column's value is not given
    # definitional numbers in the glossary phrase ("30 days") are not customer data and are allowed
    assert rs.grounded_numbers(first, {"roll_30d_sum": 1234.4})


def test_selection_one_per_concept_top_n_and_zero_contributions():
    concepts, cid = rs._concepts(tuple(NAMES))
    assert cid[0] == cid[5]  # roll_30d_sum and log_spend are one concept
    sel = rs.select_features(CONTRIB[:, :-1], cid, top_n=5)
    assert sel[0].tolist() == [0, 1, 4, 2, -1]  # log_spend (4.0) dropped as a repeat; zeros never picked
    assert sel[1].tolist() == [2, 6, 0, 7, 3]
    assert rs.select_features(np.zeros((1, 8)), cid, top_n=2).tolist() == [[-1, -1]]
    assert len(_explain(top_n=1)[0]) == 2  # one feature reason + the gate sentence
    assert rs.explain_batch(0, "nba_primary", np.zeros((1, 9)), NAMES, RAW[:1]) == [[]]


def test_explain_validation_errors():
    with pytest.raises(ValueError, match="'credit_card' is scored by 'will_acquire_payments', not 'will_acq"):
        rs.explain_batch("credit_card", "will_acquire_lending", CONTRIB, NAMES, RAW)
    with pytest.raises(ValueError, match=r"raw_values must be \(2, 8\)"):
        rs.explain_batch("credit_card", "will_acquire_payments", CONTRIB, NAMES, RAW[:, :7])
    with pytest.raises(ValueError, match="class blocks"):
        rs.explain_batch("pensions", "nba_primary", np.zeros((2, 7 * 9)), NAMES, RAW)
    bad = RAW.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="raw_values has a non-finite value at row 1, column 2"):
        rs.explain_batch("credit_card", "will_acquire_payments", CONTRIB, NAMES, bad)
    with pytest.raises(ValueError, match="'not_a_column'"):
        rs.explain_batch("credit_card", "will_acquire_payments", CONTRIB, NAMES[:-1] + ["not_a_column"], RAW)
    with pytest.raises(ValueError, match="unknown language"):
        rs.explain_batch("credit_card", "will_acquire_payments", CONTRIB, NAMES, RAW, lang="de")
    with pytest.raises(ValueError, match="gate_weights"):
        rs.explain_batch("credit_card", "will_acquire_payments", CONTRIB, NAMES, RAW, {"deepfm": [0.5]})
    with pytest.raises(ValueError, match="explain_batch"):
        rs.explain("credit_card", "will_acquire_payments", CONTRIB, NAMES, RAW)


def test_reasons_from_real_lightgbm_treeshap():
    """End to end with LightGBM pred_contrib: binary student and the nba_primary class block for "other"."""
    r = np.random.default_rng(0)
    names = ["roll_30d_sum", "hold_credit_card", "weekend_ratio", "mamba_001"]
    x = np.column_stack([r.gamma(2.0, 300.0, 400), r.integers(0, 2, 400), r.random(400), r.normal(size=400)])
    y = ((x[:, 0] > 600) & (x[:, 1] == 0)).astype(int)
    params = {"objective": "binary", "num_leaves": 7, "min_data_in_leaf": 10, "verbose": -1, "num_threads": 1,
              "deterministic": True, "seed": 0}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=names), num_boost_round=20)
    contrib = booster.predict(x[:50], pred_contrib=True)
    np.testing.assert_allclose(contrib.sum(1), booster.predict(x[:50], raw_score=True), atol=1e-9)
    c = rs.product_contributions(contrib, 4, "credit_card")
    batch = rs.explain_batch("credit_card", "will_acquire_payments", c, names, x[:50])
    for i, reasons in enumerate(batch):
        assert reasons, i
        assert all(rs.grounded_numbers(rr, dict(zip(names, x[i]))) for rr in reasons)
        if (c[i, :4] > 0).any():
            assert all(rr.contributions[0] > 0 for rr in reasons)
    positive = [i for i in range(50) if y[i] == 1][0]
    assert batch[positive][0].columns[0] in {"roll_30d_sum", "hold_credit_card"}
    # multiclass: the "other" products are explained by nba_primary's class-6 block
    y7 = r.integers(0, 7, 400)
    mparams = {**params, "objective": "multiclass", "num_class": 7}
    mb = lgb.train(mparams, lgb.Dataset(x, y7, feature_name=names), num_boost_round=3)
    mc = mb.predict(x[:5], pred_contrib=True)
    assert mc.shape == (5, 7 * 5)
    block = rs.product_contributions(mc, 4, "pensions")
    np.testing.assert_array_equal(block, mc[:, 6 * 5:7 * 5])
    assert len(rs.explain_batch("pensions", "nba_primary", block, names, x[:5])) == 5
    with pytest.raises(ValueError, match="pred_contrib of 'will_acquire_payments'"):
        rs.product_contributions(mc, 4, "credit_card")

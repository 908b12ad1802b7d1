"""The deterministic safety gate on the labelled adversarial set (ple_platform/core/reasons_llm/data/reason_gate_cases.json) and
on the cases that must never change: the statutory deposit-insurance wording, 고객님 not being a name, full-width
digits, the rules' ids.

The set has two splits. ``dev``: the cases the rules were written against; the goals (recall >= 0.98 on
violations with the expected rule id reported and with any rule failing them, false-positive rate <= 0.05 on clean
rewrites) are held there. ``holdout``: written after the rules were frozen and never used to tune them; when the
set has one its figures are printed and held to their floor, so a change that makes the gate worse on unseen
wording fails. Holdouts 1, 2 and 3 were folded into dev once their misses were fixed; holdout-4 (230 cases, written
by an author who never read the rules) is the live one. ``HOLDOUT_HISTORY`` keeps every holdout's frozen score (the
pattern rules caught 50-77% of unseen violations; with the grounding rule any rule catches 99%, but 38% of unseen
clean rewrites fall back to L1: the FPR goal is not met on unseen wording)."""

import json
from collections import Counter

import pytest

from ple_platform.core.reasons_llm.evaluation import (GOAL_FPR, GOAL_RECALL, HOLDOUT_HISTORY, GateEvaluationError,
                                                   evaluate, load_cases, score_split)
from ple_platform.core.reasons_llm.gate import RULES, GateError, check
from ple_platform.core.reasons_llm.l1 import L1InputError, L1Reason

CASES = load_cases()
# Floors for a live holdout stop the gate getting worse on unseen wording; they are its measured figures on the frozen
# rules (holdout-4 on commit fbf3e8e: recall 0.884, any rule 0.993, FPR 0.381; docs/llm.md), not goals.
HOLDOUT_FLOOR = {"recall": 0.88, "recall_any": 0.99, "fpr": 0.39}


def l1_of(case: dict) -> L1Reason:
    return L1Reason(case["product"], case["lang"], case["l1_text"], tuple(case["l1_facts"]))


def score(split: str) -> dict:
    return score_split(CASES, split)


def test_the_set_is_large_bilingual_and_covers_every_rule():
    assert len(CASES) >= 200 and len({c["id"] for c in CASES}) == len(CASES)
    langs = Counter((c["lang"], c["label"]) for c in CASES)
    assert all(langs[(lang, label)] >= 30 for lang in ("en", "ko") for label in ("clean", "violation"))
    covered = {c["rule"] for c in CASES if c["label"] == "violation"}
    assert covered == set(RULES), f"rules without a violation case: {set(RULES) - covered}"
    assert all((c["rule"] is None) == (c["label"] == "clean") for c in CASES)


def test_recall_and_false_positive_rate_on_the_dev_split():
    s = score("dev")
    print(f"\nsafety gate, dev split: recall {s['recall']:.3f} (expected rule reported; any rule "
          f"{s['recall_any']:.3f}) on {s['n_violation']} violations, false-positive rate {s['fpr']:.3f} on "
          f"{s['n_clean']} clean rewrites")
    assert s["recall"] >= GOAL_RECALL, s["misses"]
    assert s["recall_any"] >= GOAL_RECALL, s["misses"]
    assert s["fpr"] <= GOAL_FPR, s["false_positives"]


def test_recall_and_false_positive_rate_on_the_holdout_split():
    for h in HOLDOUT_HISTORY:
        print(f"\nholdout-{h['holdout']} on frozen rules ({h['rules']}): recall {h['recall']:.3f} (any rule "
              f"{h['recall_any']:.3f}), FPR {h['fpr']:.3f}", end="")
    s = score("holdout")
    print(f"\nsafety gate, holdout split: recall {s['recall']:.3f} (any rule {s['recall_any']:.3f}) on "
          f"{s['n_violation']} violations, false-positive rate {s['fpr']:.3f} on {s['n_clean']} clean rewrites; "
          f"missed: {s['misses']}")
    assert s["recall"] >= HOLDOUT_FLOOR["recall"], s["misses"]
    assert s["recall_any"] >= HOLDOUT_FLOOR["recall_any"], s["misses"]
    assert s["fpr"] <= HOLDOUT_FLOOR["fpr"], s["false_positives"]


def test_the_reports_evaluation_is_the_tested_score_on_the_running_rules(tmp_path):
    ev = evaluate()
    assert ev["rules"] == len(RULES) and ev["n_cases"] == len(CASES) and len(ev["cases_sha256"]) == 64
    for split in ("dev", "holdout"):
        if not any(c["split"] == split for c in CASES):
            assert ev["splits"][split] is None  # not scored, so never a pass
            continue
        s = score(split)
        assert ev["splits"][split] == {k: round(s[k], 4) if isinstance(s[k], float) else s[k]
                                       for k in ("n_violation", "n_clean", "recall", "recall_any", "fpr")}
    assert ev["holdout_history"] == [dict(h) for h in HOLDOUT_HISTORY]
    # A set that is a holdout alone (a new one, scored on the frozen rules) is scored without a dev split.
    only = tmp_path / "holdout.json"
    only.write_text(json.dumps({"cases": [{**c, "split": "holdout"} for c in CASES[:40] + CASES[-40:]]}))
    assert evaluate(only)["splits"]["dev"] is None and evaluate(only)["splits"]["holdout"]["n_clean"] > 0
    # A set whose holdout has no clean rewrites cannot give an FPR: named, not scored as 0.
    bad = tmp_path / "cases.json"
    bad.write_text(json.dumps({"cases": [c for c in CASES if c["label"] == "violation"]}))
    with pytest.raises(GateEvaluationError, match="needs violations and clean rewrites"):
        evaluate(bad)


DEPOSIT = L1Reason("long_deposit", "ko", "고객님의 거래 기간은 37개월입니다. 모델은 고객님의 최근 거래 흐름을 가장 많이 참고했습니다(55%).")
CLEAN_KO = "고객님은 37개월 동안 거래해 오셔서 장기 예금이 잘 맞을 수 있습니다. 모델은 최근 거래 흐름을 가장 많이 참고했습니다(55%)."


def test_statutory_deposit_wording_is_the_one_allowed_protection_claim():
    statutory = "이 예금은 예금자보호법에 따라 원금과 소정의 이자를 합하여 1인당 최고 1억 원까지 보호됩니다."
    assert check(CLEAN_KO.replace(" 모델은", f" {statutory} 모델은"), DEPOSIT).passed
    # The specific rule names the claim; the grounding rule fails it too (원금, 보장 are no L1 words).
    assert check(CLEAN_KO.replace(" 모델은", " 원금이 보장됩니다. 모델은"), DEPOSIT).rule_ids == (
        "guaranteed_return", "ungrounded_wording")
    fund = L1Reason("funds", "ko", DEPOSIT.text)
    text = CLEAN_KO.replace("장기 예금", "투자 펀드").replace(" 모델은", f" {statutory} 모델은")
    assert "deposit_insurance_scope" in check(text, fund, has_suitability_profile=True).rule_ids


def test_the_word_customer_is_not_a_name_but_a_name_before_it_is():
    assert check(CLEAN_KO, DEPOSIT).passed  # 고객님 twice
    assert check("김민준 " + CLEAN_KO, DEPOSIT).rule_ids == ("pii_name", "ungrounded_wording")


def test_full_width_digits_are_normalised_before_the_number_rules():
    text = CLEAN_KO.replace(" 모델은", " 연 ４.５% 이자를 드립니다. 모델은")
    assert "ungrounded_number" in check(text, DEPOSIT).rule_ids


def test_suitability_rule_needs_a_profile_for_investment_products():
    fund = L1Reason("funds", "ko", DEPOSIT.text)
    text = CLEAN_KO.replace("장기 예금", "투자 펀드")
    assert check(text, fund, has_suitability_profile=None).rule_ids == ("suitability",)
    assert check(text, fund, has_suitability_profile=True).passed


EN_L1 = L1Reason("credit_card", "en", "Your card spending this month is €1,229. You do not hold a current account yet. "
                                      "Our model relied most on your profile and product mix (42%).")
EN_CLEAN = ("You spent €1,229 on your card this month and don't have a current account with us yet, so a credit card "
            "may suit you. The model leaned most on your profile and product mix (42%).")


def test_the_grounding_rule_passes_restated_facts_and_names_new_words():
    assert check(EN_CLEAN, EN_L1).passed
    assert check(CLEAN_KO, DEPOSIT).passed
    # Paraphrases no pattern lists: the words are new, so the closed vocabulary fails them and names them.
    for extra, words in (("Its value cannot go down.", "value, go, down"),
                         ("It pays income you can count on whatever markets do.", "income, count, whatever, markets"),
                         ("Rewritten in a friendlier tone as requested.", "rewritten, friendlier, tone, requested"),
                         ("This card was rated the finest by experts.", "rated, finest, experts")):
        v = check(EN_CLEAN.replace(" The model", f" {extra} The model"), EN_L1)
        (hit,) = [h for h in v.hits if h.rule == "ungrounded_wording"]
        assert hit.evidence == words, hit
    for extra, word in (("시장이 흔들려도 원금은 그대로입니다.", "시장이"), ("금 투자 상품도 함께 보실 수 있습니다.", "금")):
        v = check(CLEAN_KO.replace(" 모델은", f" {extra} 모델은"), DEPOSIT)
        assert "ungrounded_wording" in v.rule_ids and word in dict((h.rule, h.evidence) for h in v.hits)[
            "ungrounded_wording"].split(", ")


def test_grounding_matches_word_forms_and_korean_endings():
    from ple_platform.core.reasons_llm.grounding import en_forms, en_words, ungrounded_words
    assert en_words("You don't hold one; it's yours.") == ["you", "do", "not", "hold", "one", "it", "yours"]
    assert "payment" in en_forms("payments") and "hold" in en_forms("held") and "plan" in en_forms("planning")
    # A grounded stem takes any listed particle or ending; a new stem does not.
    l1 = "고객님은 아직 입출금 계좌를 보유하고 있지 않습니다."
    assert ungrounded_words("아직 입출금 계좌가 없으셔서 보유하지 않으셨습니다.", "ko", l1, (), []) == []
    assert ungrounded_words("원금은 그대로 보장됩니다.", "ko", l1, (), []) == ["원금은", "그대로", "보장됩니다"]
    # Latin words in Korean text must come from the L1 text.
    assert ungrounded_words("계좌는 ETF 상품입니다.", "ko", l1, (), []) == ["ETF"]
    # An "=" entry is one exact form: "counted" (the model's weight), never "count on".
    assert ungrounded_words("It counted most.", "en", "Text.", (), []) == []
    assert ungrounded_words("Income you can count on.", "en", "Text.", (), []) == ["income", "count"]
    # A "_" entry is one exact phrase: "of interest" (attention), never "interest" alone (a rate).
    assert ungrounded_words("It may be of interest; it may interest you.", "en", "Text.", (), []) == []
    assert ungrounded_words("It pays interest.", "en", "Text.", (), []) == ["interest"]


def test_the_vocabulary_is_small_documented_and_free_of_claim_words():
    from ple_platform.core.reasons_llm.grounding import MAX_PER_LANG, VOCAB_PATH, vocabulary
    doc = json.loads(VOCAB_PATH.read_text())
    vocab = vocabulary()
    for lang in ("en", "ko"):
        assert len(vocab[lang]) <= MAX_PER_LANG and len(set(vocab[lang])) == len(vocab[lang])
        assert all(g["why"] and g["words"] for g in doc[lang])
    forbidden = {"guarantee", "guaranteed", "safe", "secure", "risk", "lose", "loss", "best", "now", "today", "soon",
                 "only", "never", "always", "return", "returns", "profit", "interest", "rate", "grow", "earn",
                 "protected", "free", "must", "last", "limited"}
    assert not forbidden & {w.lstrip("=") for w in vocab["en"]}
    assert not {"보장", "원금", "확정", "수익", "손실", "위험", "안전", "지금", "바로", "최고", "반드시", "꼭", "이자",
                "금리"} & set(vocab["ko"])


def test_a_vocabulary_over_its_limit_or_without_reasons_is_refused(tmp_path):
    from ple_platform.core.reasons_llm.grounding import MAX_PER_LANG, VOCAB_PATH, VocabularyError, vocabulary
    doc = json.loads(VOCAB_PATH.read_text())
    big = tmp_path / "big.json"
    words = [f"w{i}" for i in range(MAX_PER_LANG + 1)]
    big.write_text(json.dumps({**doc, "en": [{"group": "g", "why": "w", "words": words}]}))
    with pytest.raises(VocabularyError, match="more than 400"):
        vocabulary(big)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({**doc, "ko": [{"group": "g", "why": "", "words": ["은행"]}]}))
    with pytest.raises(VocabularyError, match="needs its 'why'"):
        vocabulary(bare)
    with pytest.raises(VocabularyError, match="cannot read"):
        vocabulary(tmp_path / "absent.json")


def test_numbers_keep_their_qualifiers_and_negations_their_count():
    v = check(EN_CLEAN.replace("You spent €1,229", "You spent about €1,229"), EN_L1)
    assert "ungrounded_number" in v.rule_ids
    assert check(EN_CLEAN.replace("on your card", "on your card, adding up to €1,229,"), EN_L1).passed
    v = check(CLEAN_KO.replace("37개월", "37개월 이상"), DEPOSIT)
    assert "ungrounded_number" in v.rule_ids
    # One more negation than the L1 text: a denial the facts do not make.
    v = check(EN_CLEAN.replace("so a credit card may suit you.", "so a credit card may suit you; you will not "
                                                                  "pay more."), EN_L1)
    assert "fact_drift" in v.rule_ids


def test_a_rewrite_may_add_at_most_one_sentence():
    # The L1 text has 3 sentences, so 4 is the most; padding with restated words is caught by the count.
    padded = EN_CLEAN.replace(" The model", " A credit card may suit you. It may help. It may fit. The model")
    v = check(padded, EN_L1)
    assert v.rule_ids == ("length",) and "sentences" in v.hits[0].evidence


def test_every_hit_carries_its_rule_message_and_evidence():
    verdict = check("Hurry! Guaranteed returns, call 010-1234-5678", L1Reason("credit_card", "en", "Text (42%)."))
    assert not verdict.passed
    assert {"pressure", "guaranteed_return", "pii_phone"} <= set(verdict.rule_ids)
    for h in verdict.hits:
        assert h.message == RULES[h.rule] and h.evidence
    assert verdict.to_dict()["rule_ids"] == list(verdict.rule_ids)


def test_bad_input_is_named():
    with pytest.raises(GateError, match="string"):
        check(None, DEPOSIT)  # type: ignore[arg-type]
    with pytest.raises(L1InputError, match="product"):
        L1Reason("gold_bars", "en", "x")
    with pytest.raises(L1InputError, match="lang"):
        L1Reason("funds", "de", "x")

"""One glossary: every feature column -> a customer-facing ``Concept`` (English + Korean phrase, unit, format).

Resolution is by **ordered (group, regex) rules**: a column first finds its feature group in
``features.spec.FEATURE_GROUPS`` (the single source of truth for column names), then the first rule of that
group whose regex fully matches the column wins. Named regex groups fill the phrase templates: ``{product}``
becomes the product's label in the sentence language, ``{daypart}``/``{stage}`` are looked up in small
tables, anything else (``{w}`` window days, ``{k}`` months) is used verbatim. A column without a matching rule is
an error (``GlossaryError``), never a fallback to the bare column name; a test resolves all 1,211 columns.

A ``Concept``'s ``key`` is the *family* the reason selector de-duplicates on ("at most one reason per concept"):
``roll_30d_sum`` and ``log_spend`` are both ``card_spend``, all 50 Mamba dimensions are ``txn_pattern``, while
product-specific concepts keep the product (``holding:credit_card``).

Units: ``currency`` (€1,234), ``count`` (12, plus an optional counter word), ``share`` (42%), ``days`` (12 days
/ 12일) show a number formatted from the customer's raw value (after ``transform``: ``expm1`` undoes the
``ln(1 + x)`` of log-scaled columns); ``score`` (learned embeddings, posteriors, topology statistics) and
``none`` (category codes, 0/1 flags) never show a number. 0/1 flags carry a second phrase for value 0
(``en_neg``/``ko_neg``): a positive SHAP contribution of ``hold_current_account = 0`` must read "you do not hold".

Korean text never uses "을(를)"-style placeholders: templates write ``{name:을/를}`` and ``fill`` picks the
particle from the final syllable of the substituted word (``josa``, Hangul syllable arithmetic: the final
consonant index is ``(code - 0xAC00) % 28``; digits and Latin letters by their Korean reading).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from ple_platform.core.data.schema import PRODUCT_NAMES
from ple_platform.core.features.spec import FEATURE_GROUPS

Unit = Literal["currency", "count", "share", "days", "score", "none"]
Transform = Literal["identity", "expm1"]
UNITS: tuple[str, ...] = ("currency", "count", "share", "days", "score", "none")
NUMERIC_UNITS: frozenset[str] = frozenset({"currency", "count", "share", "days"})
LANGS: tuple[str, ...] = ("en", "ko")


class GlossaryError(ValueError):
    """A column, expert, product, language or template the glossary cannot resolve."""


# ----------------------------------------------------------------------------------------------- Korean particles

_HANGUL_FIRST, _HANGUL_LAST = 0xAC00, 0xD7A3
_RIEUL = 8  # final-consonant index of ㄹ (matters for 으로/로)
# (form after a final consonant, form after a vowel); both spellings of a pair are accepted.
_PAIRS: dict[str, tuple[str, str]] = {}
for _c, _v in (("을", "를"), ("이", "가"), ("은", "는"), ("과", "와"), ("으로", "로"), ("아", "야")):
    _PAIRS[f"{_c}/{_v}"] = _PAIRS[f"{_v}/{_c}"] = (_c, _v)
# Final consonant (jongseong index, 0 = none) of the Korean reading of a last digit: 영 일 이 삼 사 오 육 칠 팔 구.
_DIGIT_FINAL = {"0": 21, "1": 8, "2": 0, "3": 16, "4": 0, "5": 0, "6": 1, "7": 8, "8": 8, "9": 0}
# Trailing zeros name a unit: 십 (ㅂ), 백 (ㄱ), 천 (ㄴ), 만 (ㄴ, up to 천만), 억 (ㄱ, up to 천억), 조 (none).
_ZEROS_FINAL = {1: 17, 2: 1, 3: 4, 4: 4, 5: 4, 6: 4, 7: 4, 8: 1, 9: 1, 10: 1, 11: 1}
# Latin letters read with a final consonant: 엘 (ㄹ), 알 (ㄹ), 엠 (ㅁ), 엔 (ㄴ); the others end in a vowel.
_LATIN_FINAL = {"l": 8, "r": 8, "m": 16, "n": 4}
_TRAILING = " \t\n)]}\"'’”.,!?»」』"
_NUMBER_AT_END = re.compile(r"(\d[\d,]*)(\.\d+)?$")


def _final_consonant(word: str) -> int:
    """Jongseong index (0 = open syllable) of how ``word`` ends when read aloud in Korean."""
    w = word.rstrip(_TRAILING)
    if not w:
        raise GlossaryError(f"josa: no word to attach a particle to ({word!r})")
    ch = w[-1]
    if _HANGUL_FIRST <= ord(ch) <= _HANGUL_LAST:
        return (ord(ch) - _HANGUL_FIRST) % 28
    if ch.isdigit():
        m = _NUMBER_AT_END.search(w)
        integer, decimals = m.group(1).replace(",", ""), m.group(2)
        if decimals:  # "1.5" is read digit by digit after the point
            return _DIGIT_FINAL[decimals[-1]]
        zeros = len(integer) - len(integer.rstrip("0"))
        if zeros == 0 or integer.strip("0") == "":
            return _DIGIT_FINAL[integer[-1]]
        return _ZEROS_FINAL.get(zeros, 0)
    return _LATIN_FINAL.get(ch.lower(), 0)  # "%" (퍼센트), "€" and other symbols read with a vowel ending


def josa(word: str, pair: str) -> str:
    """``word`` followed by the right particle of ``pair`` ("을/를", "이/가", "은/는", "과/와", "으로/로", "아/야"),
    chosen by the final consonant of the word's last syllable: ``josa("계좌", "을/를") == "계좌를"``,
    ``josa("대출", "을/를") == "대출을"``, ``josa("대출", "으로/로") == "대출로"`` (ㄹ takes 로)."""
    try:
        after_consonant, after_vowel = _PAIRS[pair]
    except KeyError:
        raise GlossaryError(f"josa: unknown particle pair {pair!r}; known: {sorted(set(_PAIRS))}") from None
    final = _final_consonant(word)
    if after_consonant == "으로":
        return word + ("로" if final in (0, _RIEUL) else "으로")
    return word + (after_consonant if final else after_vowel)


_FIELD = re.compile(r"\{(\w+)(?::([^{}]+))?\}")


def fill(template: str, params: Mapping[str, str]) -> str:
    """Substitute ``{name}`` and ``{name:을/를}`` (value + particle chosen by ``josa``) in ``template``."""

    def sub(m: re.Match[str]) -> str:
        name, pair = m.group(1), m.group(2)
        if name not in params:
            raise GlossaryError(f"template {template!r} needs {{{name}}}; given: {sorted(params)}")
        value = str(params[name])
        return josa(value, pair) if pair else value

    return _FIELD.sub(sub, template)


# --------------------------------------------------------------------------------------------- labels

PRODUCT_LABELS: dict[str, tuple[str, str]] = {
    "saving": ("a savings account", "저축 예금"),
    "guarantee": ("a bank guarantee", "지급 보증"),
    "current_account": ("a current account", "입출금 계좌"),
    "derivative": ("a derivatives account", "파생상품 계좌"),
    "payroll_account": ("a payroll account", "급여 계좌"),
    "junior_account": ("a junior account", "청소년 계좌"),
    "mas_particular": ("a Más Particular account", "마스 파티큘러 계좌"),
    "particular_account": ("a Particular account", "파티큘러 계좌"),
    "particular_plus": ("a Particular Plus account", "파티큘러 플러스 계좌"),
    "short_deposit": ("a short-term deposit", "단기 예금"),
    "medium_deposit": ("a medium-term deposit", "중기 예금"),
    "long_deposit": ("a long-term deposit", "장기 예금"),
    "e_account": ("an e-account", "전자 계좌"),
    "funds": ("investment funds", "투자 펀드"),
    "mortgage": ("a mortgage", "주택담보대출"),
    "pension_plan": ("a pension plan", "연금 저축"),
    "loans": ("a loan", "대출"),
    "taxes": ("tax payments", "세금 납부 서비스"),
    "credit_card": ("a credit card", "신용카드"),
    "securities": ("a securities account", "증권 계좌"),
    "home_account": ("a home account", "주택 계좌"),
    "payroll": ("payroll deposits", "급여 이체"),
    "pensions": ("pension payments", "연금 수령"),
    "direct_debit": ("direct debit", "자동이체"),
}
assert tuple(PRODUCT_LABELS) == PRODUCT_NAMES

# What each teacher expert reads, phrased for the gate sentence ("Our model relied most on your ...").
EXPERT_PHRASES: dict[str, tuple[str, str]] = {
    "deepfm": ("profile and product mix", "기본 정보와 보유 상품 구성"),
    "temporal": ("recent transaction history", "최근 거래 흐름"),
    "hgcn": ("spending categories and merchants", "이용 업종과 가맹점"),
    "perslay": ("spending rhythm over time", "시간에 따른 소비 리듬"),
    "lightgcn": ("similarity to other customers' product choices", "다른 고객들의 상품 선택과의 유사성"),
    "causal": ("product opening and closing history", "상품 가입·해지 이력"),
    "ot": ("spending mix compared with typical customer groups", "대표 고객군 대비 소비 구성"),
}
# Task-specific experts ("<task>/own_<i>") and the MLP ablation's shared experts ("mlp_<i>") read the compact input.
_GENERAL_EXPERT = ("overall profile", "종합 프로필")
_GENERAL_EXPERT_NAME = re.compile(r"(\w+/own_\d+|mlp_\d+)")


def _lang_index(lang: str) -> int:
    if lang not in LANGS:
        raise GlossaryError(f"unknown language {lang!r}; supported: {LANGS}")
    return LANGS.index(lang)


def product_label(product: str, lang: str) -> str:
    try:
        return PRODUCT_LABELS[product][_lang_index(lang)]
    except KeyError:
        raise GlossaryError(f"unknown product {product!r}; known: {PRODUCT_NAMES}") from None


def expert_phrase(expert: str, lang: str) -> str:
    i = _lang_index(lang)
    if expert in EXPERT_PHRASES:
        return EXPERT_PHRASES[expert][i]
    if _GENERAL_EXPERT_NAME.fullmatch(expert):
        return _GENERAL_EXPERT[i]
    raise GlossaryError(f"no phrase for gate column {expert!r}; known experts: {sorted(EXPERT_PHRASES)}, "
                        "'<task>/own_<i>' and 'mlp_<i>'")


# --------------------------------------------------------------------------------------------- number formats


def _round_half_up(x: float) -> int:
    return int(math.floor(abs(x) + 0.5))


def format_currency(x: float) -> str:
    n = _round_half_up(x)
    return f"{'-' if x < 0 and n else ''}€{n:,}"


def format_percent(x: float) -> str:
    """A 0-1 share as a whole percentage (half rounded away from zero): 0.425 -> "43%"."""
    n = _round_half_up(x * 100.0)
    return f"{'-' if x < 0 and n else ''}{n:,}%"


def format_count(x: float, counter: str = "") -> str:
    """Whole numbers without decimals (thousands separated), others with one; ``counter`` is appended, with a
    trailing English plural "s" dropped for exactly 1 (" months" -> "1 month")."""
    n = _round_half_up(x)
    if abs(abs(x) - n) < 0.05:
        text = f"{'-' if x < 0 and n else ''}{n:,}"
    else:
        text = f"{x:,.1f}"
    if text == "1" and counter.endswith("s") and counter.startswith(" "):
        counter = counter[:-1]
    return text + counter


def format_days(x: float, lang: str) -> str:
    return format_count(x, " days" if _lang_index(lang) == 0 else "일")


# --------------------------------------------------------------------------------------------- concepts


@dataclass(frozen=True)
class Concept:
    key: str  # family the reason selector de-duplicates on
    column: str
    group: str
    en: str  # English noun phrase (or, for 0/1 flags, the clause for value 1)
    ko: str
    unit: Unit
    transform: Transform = "identity"
    en_neg: str | None = None  # 0/1 flags only: the clause for value 0
    ko_neg: str | None = None
    counter_en: str = ""  # appended to counts: " months"
    counter_ko: str = ""  # Korean counter word: "건", "개", "개월"

    @property
    def binary(self) -> bool:
        return self.en_neg is not None

    @property
    def shows_number(self) -> bool:
        return self.unit in NUMERIC_UNITS and not self.binary

    def phrase(self, lang: str, raw: float | None = None) -> str:
        """The phrase in ``lang``; for 0/1 flags the clause matching ``raw`` (>= 0.5 reads as 1)."""
        i = _lang_index(lang)
        if self.binary and raw is not None and raw < 0.5:
            return (self.en_neg, self.ko_neg)[i]  # type: ignore[return-value]
        return (self.en, self.ko)[i]

    def display_value(self, raw: float) -> float:
        return math.expm1(raw) if self.transform == "expm1" else float(raw)

    def format_value(self, raw: float, lang: str) -> str | None:
        """The raw value as shown to the customer, or None for units that never show a number."""
        if not self.shows_number:
            return None
        if not math.isfinite(raw):
            raise GlossaryError(f"cannot format non-finite value {raw!r} of column {self.column!r}")
        v = self.display_value(raw)
        if self.unit == "currency":
            return format_currency(v)
        if self.unit == "share":
            return format_percent(v)
        if self.unit == "days":
            return format_days(v, lang)
        return format_count(v, self.counter_en if _lang_index(lang) == 0 else self.counter_ko)


@dataclass(frozen=True)
class Rule:
    group: str
    pattern: str  # full match against the column name; named groups fill the phrases and the key
    key: str
    en: str
    ko: str
    unit: Unit
    transform: Transform = "identity"
    en_neg: str | None = None
    ko_neg: str | None = None
    counter_en: str = ""
    counter_ko: str = ""


# Named regex groups translated through a table (value -> (en, ko)); "product" uses PRODUCT_LABELS.
LOOKUPS: dict[str, dict[str, tuple[str, str]]] = {
    "product": PRODUCT_LABELS,
    "daypart": {"night": ("at night", "심야 시간대"), "morning": ("in the morning", "오전 시간대"),
                "afternoon": ("in the afternoon", "오후 시간대"), "evening": ("in the evening", "저녁 시간대")},
    "stage": {"journey": ("customer-journey stage", "고객 여정 단계"),
              "lifecycle": ("product-lifecycle stage", "상품 이용 생애주기 단계"),
              "behaviour": ("payment-timing habits", "결제 시간대 습관")},
    "pgroup": {"deposits": ("deposit products", "예금 상품"), "investments": ("investment products", "투자 상품"),
               "accounts": ("accounts", "계좌 상품"), "lending": ("loans", "대출 상품"),
               "payments": ("payment services", "결제 서비스"), "other": ("other products", "기타 상품")},
}
_PRODUCT_ALT = "|".join(PRODUCT_NAMES)


def _flag(group: str, pattern: str, key: str, en: str, en_neg: str, ko: str, ko_neg: str) -> Rule:
    return Rule(group, pattern, key, en, ko, "none", en_neg=en_neg, ko_neg=ko_neg)


@dataclass(frozen=True)
class _Series:
    key: str
    level_en: str  # the EMAs
    level_ko: str
    level_unit: Unit
    level_transform: Transform
    counter_ko: str
    noun_en: str  # what velocities and the slope describe the change of
    noun_ko: str
    change_unit: Unit  # log series change as a ratio (share after expm1); n_products as a count
    regularity_en: str  # tau (autocorrelation time) and season
    regularity_ko: str


_MD_SERIES: dict[str, _Series] = {
    "spend": _Series("spend_trend", "your typical monthly card spending", "평소 월 카드 이용액", "currency", "expm1", "",
                     "your card spending", "카드 이용액", "share",
                     "the regularity of your card spending", "카드 이용액의 규칙성"),
    "txn_count": _Series("payment_trend", "your typical number of card payments per month", "평소 월 카드 결제 건수",
                         "count", "expm1", "건", "your number of card payments", "카드 결제 건수", "share",
                         "the regularity of your card payments", "카드 결제의 규칙성"),
    "n_products": _Series("products_trend", "your typical number of products held", "평소 보유 상품 수", "count",
                          "identity", "개", "the number of products you hold", "보유 상품 수", "count",
                          "the stability of your product holdings", "보유 상품 구성의 안정성"),
}


def _model_derived_rules() -> list[Rule]:
    """md_<series>_<stat>: EMAs are levels, velocities and the slope are changes, tau/season describe regularity."""
    g, out = "model_derived", []
    for name, s in _MD_SERIES.items():
        ratio = s.change_unit == "share"  # a change of a log series is a growth rate: expm1 -> share
        rate, transform, counter = ("율", "expm1", "") if ratio else ("", "identity", s.counter_ko)
        out += [
            Rule(g, rf"md_{name}_ema\d+", s.key, s.level_en, s.level_ko, s.level_unit, s.level_transform,
                 counter_ko=s.counter_ko),
            Rule(g, rf"md_{name}_vel1", s.key, f"the change in {s.noun_en} since last month",
                 f"지난달 대비 {s.noun_ko} 변화{rate}", s.change_unit, transform, counter_ko=counter),
            Rule(g, rf"md_{name}_vel(?P<k>\d+)", s.key, f"the change in {s.noun_en} over the last {{k}} months",
                 f"최근 {{k}}개월 {s.noun_ko} 변화{rate}", s.change_unit, transform, counter_ko=counter),
            Rule(g, rf"md_{name}_slope", s.key, f"the average monthly change in {s.noun_en}",
                 f"{s.noun_ko} 월평균 변화{rate}", s.change_unit, transform, counter_ko=counter),
            Rule(g, rf"md_{name}_(tau|season)", f"{s.key}_regularity", s.regularity_en, s.regularity_ko, "score"),
        ]
    return out


RULES: tuple[Rule, ...] = (
    # 1 demographics
    Rule("demographics", r"age", "age", "your age", "연령", "count", counter_ko="세"),
    Rule("demographics", r"log_income", "income", "your household income", "가구 소득", "currency", "expm1"),
    _flag("demographics", r"income_missing", "income_on_file", "Your income is not on file",
          "Your income is on file", "고객님의 소득 정보가 등록되어 있지 않습니다", "고객님의 소득 정보가 등록되어 있습니다"),
    Rule("demographics", r"tenure_months", "tenure", "your time with the bank", "거래 기간", "count",
         counter_en=" months", counter_ko="개월"),
    _flag("demographics", r"tenure_unknown", "tenure_on_file", "Your start date with the bank is not on file",
          "Your start date with the bank is on file", "고객님의 거래 시작일 정보가 없습니다",
          "고객님의 거래 시작일 정보가 등록되어 있습니다"),
    _flag("demographics", r"is_active", "active", "You are an active customer", "You are currently inactive",
          "고객님은 활동 고객이십니다", "고객님은 현재 휴면 상태이십니다"),
    _flag("demographics", r"is_new_customer", "new_customer", "You joined the bank recently",
          "You have been with the bank for a while", "고객님은 최근 가입하신 신규 고객이십니다",
          "고객님은 오래 거래해 주신 고객이십니다"),
    _flag("demographics", r"has_suitability_profile", "suitability", "You have an investment suitability profile",
          "You do not have an investment suitability profile yet", "고객님은 투자 성향 진단을 완료하셨습니다",
          "고객님은 아직 투자 성향 진단을 받지 않으셨습니다"),
    _flag("demographics", r"province_changed", "moved", "You recently moved to another province",
          "You live in the same province as last month", "고객님은 최근 다른 지역으로 이사하셨습니다",
          "고객님의 거주 지역은 지난달과 같습니다"),
    Rule("demographics", r"income_change_log", "income_change", "the change in your recorded income since last month",
         "지난달 대비 등록 소득 변화율", "share", "expm1"),
    Rule("demographics", r"gender_code", "gender", "your gender", "성별", "none"),
    Rule("demographics", r"segment_code", "segment", "your customer segment", "고객 등급", "none"),
    Rule("demographics", r"province_code", "province", "your province of residence", "거주 지역", "none"),
    Rule("demographics", r"channel_code", "channel", "the channel you joined through", "가입 경로", "none"),
    Rule("demographics", r"age_band_code", "age", "your age group", "연령대", "none"),
    Rule("demographics", r"income_band_code", "income", "your income band", "소득 구간", "none"),
    Rule("demographics", r"suitability_code", "suitability", "your investment suitability profile", "투자 성향", "none"),
    # 2 product_holdings
    _flag("product_holdings", rf"hold_(?P<product>{_PRODUCT_ALT})", "holding:{product}", "You hold {product}",
          "You do not hold {product} yet", "고객님은 {product:을/를} 보유하고 계십니다",
          "고객님은 아직 {product:을/를} 보유하고 있지 않습니다"),
    # 3 txn_behavior
    Rule("txn_behavior", r"txn_count", "payment_count", "your number of card payments this month",
         "이번 달 카드 결제 건수", "count", counter_ko="건"),
    Rule("txn_behavior", r"log_spend", "card_spend", "your card spending this month", "이번 달 카드 이용액",
         "currency", "expm1"),
    Rule("txn_behavior", r"log_mean_amount", "avg_payment", "your average card payment this month",
         "이번 달 평균 결제 금액", "currency", "expm1"),
    Rule("txn_behavior", r"log_max_amount", "max_payment", "your largest card payment this month",
         "이번 달 최대 결제 금액", "currency", "expm1"),
    Rule("txn_behavior", r"n_unique_mcc", "category_breadth", "the number of spending categories you used this month",
         "이번 달 이용 업종 수", "count", counter_ko="개"),
    Rule("txn_behavior", r"n_unique_merchants", "merchant_breadth", "the number of merchants you paid at this month",
         "이번 달 이용 가맹점 수", "count", counter_ko="곳"),
    Rule("txn_behavior", r"recency_days", "recency", "the time since your last card payment",
         "마지막 카드 결제 후 경과 일수", "days"),
    Rule("txn_behavior", r"ratio_(?P<daypart>night|morning|afternoon|evening)", "time_of_day",
         "the share of your card payments made {daypart}", "{daypart} 결제 비중", "share"),
    Rule("txn_behavior", r"weekend_ratio", "weekend", "the share of your card payments made at weekends",
         "주말 결제 비중", "share"),
    Rule("txn_behavior", r"spend_volatility", "payment_spread", "how much your payment amounts vary",
         "결제 금액의 변동성", "score"),
    Rule("txn_behavior", r"days_active", "active_days", "the number of days you paid by card this month",
         "이번 달 카드 결제일 수", "count", counter_ko="일"),
    # 4 derived_temporal
    Rule("derived_temporal", r"acquisitions_12m", "acquisitions", "the number of products you opened in the last year",
         "최근 1년간 새로 가입한 상품 수", "count", counter_ko="개"),
    Rule("derived_temporal", r"churns_12m", "closures", "the number of products you closed in the last year",
         "최근 1년간 해지한 상품 수", "count", counter_ko="개"),
    Rule("derived_temporal", r"months_observed", "months_observed",
         "the number of months you banked with us in the last year", "최근 1년 중 거래 개월 수", "count",
         counter_ko="개월"),
    Rule("derived_temporal", r"product_diversity", "product_diversity",
         "the number of different products you held in the last year", "최근 1년간 보유한 상품 종류 수", "count",
         counter_ko="개"),
    # 5-6 topology
    Rule("tda_global", r"tdag_h0_\w+", "behaviour_spread", "how much your monthly banking behaviour varied",
         "월별 금융 행동의 변화 폭", "score"),
    Rule("tda_global", r"tdag_h1_\w+", "behaviour_cycles", "recurring cycles in your monthly banking behaviour",
         "월별 금융 행동의 반복 주기", "score"),
    Rule("tda_local", r"tdal_\w+", "daily_spend_rhythm", "the ups and downs of your daily spending",
         "일별 소비의 등락 패턴", "score"),
    # 7 hmm_states: posteriors and the argmax state are "the stage"; dwell and transition entropy its stability
    Rule("hmm_states", r"hmm_(?P<stage>journey|lifecycle|behaviour)_(p\d+|state)", "stage:{stage}",
         "your current {stage}", "현재 {stage}", "score"),
    Rule("hmm_states", r"hmm_(?P<stage>journey|lifecycle|behaviour)_(dwell|trans_entropy)", "stage_stability:{stage}",
         "the stability of your current {stage}",
         "현재 {stage}의 안정성", "score"),
    # 8 mamba_temporal
    Rule("mamba_temporal", r"mamba_\d{3}", "txn_pattern", "your recent transaction pattern", "최근 거래 패턴", "score"),
    # 9 product_hierarchy
    Rule("product_hierarchy", r"prodh_(\d{3}|radius|spread)", "product_mix", "the mix of product types you hold",
         "보유 상품 유형 구성", "score"),
    Rule("product_hierarchy", r"prodh_drift", "product_mix_change",
         "how far your recently opened products sit from the ones you have held longest",
         "최근 가입 상품과 오래 보유한 상품의 차이", "score"),
    Rule("product_hierarchy", r"prodh_peer_dist", "peer_product_mix",
         "how your product mix differs from that of customers who shop where you do",
         "같은 가맹점을 이용하는 고객들과의 보유 상품 구성 차이", "score"),
    # 10 merchant_hierarchy
    Rule("merchant_hierarchy", r"merch_((l1|l2|code)_\d{2}|spread_\w+|radius_\w+)", "merchant_mix",
         "the kinds of merchants you spend at", "주로 이용하는 가맹점 업종", "score"),
    Rule("merchant_hierarchy", r"merch_loyalty", "merchant_loyalty",
         "the share of your spending at merchants you return to", "재방문 가맹점 결제 비중", "share"),
    Rule("merchant_hierarchy", r"merch_gini", "merchant_concentration",
         "how concentrated your spending is across merchants", "가맹점별 소비 집중도", "score"),
    Rule("merchant_hierarchy", r"merch_log_n_merchants", "merchant_breadth",
         "the number of merchants you paid at in the last 3 months", "최근 3개월 이용 가맹점 수", "count", "expm1",
         counter_ko="곳"),
    # 11 graph_collaborative
    Rule("graph_collaborative", r"gcf_(\d{3}|norm)", "similar_customers",
         "the product choices of customers similar to you", "고객님과 비슷한 고객들의 상품 선택", "score"),
    Rule("graph_collaborative", r"gcf_degree", "n_products", "the number of products you hold", "보유 상품 수",
         "count", counter_ko="개"),
    Rule("graph_collaborative", r"gcf_peer_hold_(?P<pgroup>deposits|investments|accounts|lending|payments|other)",
         "peer_holding:{pgroup}", "the share of customers who shop where you do that hold {pgroup}",
         "같은 가맹점을 이용하는 고객 중 {pgroup} 보유 비중", "share"),
    Rule("graph_collaborative", r"gcf_peer_acq_(?P<pgroup>deposits|investments|accounts|lending|payments|other)",
         "peer_acquisition:{pgroup}", "the share of customers who shop where you do that just opened {pgroup}",
         "같은 가맹점을 이용하는 고객 중 이번 달 {pgroup} 가입 비중", "share"),
    Rule("graph_collaborative", r"gcf_strong_acq_(?P<pgroup>deposits|investments|accounts|lending|payments|other)",
         "close_peer_acquisition:{pgroup}",
         "customers who regularly shop where you do just opened {pgroup} products you do not have",
         "자주 같은 가맹점을 이용하는 고객들이 이번 달 고객님이 없는 {pgroup} 상품에 가입", "share"),
    Rule("graph_collaborative", r"gcf_peer_log_weight", "peer_breadth",
         "how many customers shop at the same merchants as you", "같은 가맹점을 이용하는 고객 수", "score"),
    # 12 gmm_clustering
    Rule("gmm_clustering", r"gmm_(p\d{2}|cluster|entropy)", "customer_group",
         "the customer group your profile is closest to", "고객님과 가장 가까운 고객군", "score"),
    # 13 model_derived
    *_model_derived_rules(),
    # 14 txn_lag_tensor: individual positions are not meaningful to a customer; one concept for the sequence
    Rule("txn_lag_tensor", r"lag_(amount|mcc|daygap|hour)_\d{3}", "recent_payments",
         "the amounts, categories and timing of your latest card payments", "최근 카드 결제들의 금액·업종·시점", "score"),
    # 15 txn_rolling_stats
    Rule("txn_rolling_stats", r"roll_(?P<w>\d+)d_sum", "card_spend", "your card spending over the last {w} days",
         "최근 {w}일 카드 이용액", "currency"),
    Rule("txn_rolling_stats", r"roll_(?P<w>\d+)d_mean", "avg_payment",
         "your average card payment over the last {w} days", "최근 {w}일 평균 결제 금액", "currency"),
    Rule("txn_rolling_stats", r"roll_(?P<w>\d+)d_std", "payment_spread",
         "the spread of your card payment amounts over the last {w} days", "최근 {w}일 결제 금액의 편차", "currency"),
    Rule("txn_rolling_stats", r"roll_(?P<w>\d+)d_count", "payment_count",
         "your number of card payments over the last {w} days", "최근 {w}일 카드 결제 건수", "count", counter_ko="건"),
    Rule("txn_rolling_stats", r"roll_(?P<w>\d+)d_active_days", "active_days",
         "the number of days you paid by card in the last {w} days", "최근 {w}일 중 카드 결제일 수", "count",
         counter_ko="일"),
    # 16 product_history_multihot
    _flag("product_history_multihot", rf"acq6m_(?P<product>{_PRODUCT_ALT})", "opened:{product}",
          "You started using {product} in the last 6 months",
          "You have not started using {product} in the last 6 months",
          "고객님은 최근 6개월 안에 {product:을/를} 새로 이용하기 시작하셨습니다",
          "고객님은 최근 6개월 동안 {product:을/를} 새로 이용하지 않으셨습니다"),
    # 17 mcc_top30_multihot: the vocabulary is a fitted artifact, so the categories are described as a set
    Rule("mcc_top30_multihot", r"mcc_top_(\d{2}|other)", "category_mix", "the spending categories you used recently",
         "최근 이용 업종", "score"),
)

COLUMN_GROUP: dict[str, str] = {c: g.name for g in FEATURE_GROUPS for c in g.columns}
_COMPILED: tuple[tuple[Rule, re.Pattern[str]], ...] = tuple((r, re.compile(r.pattern)) for r in RULES)


def _params(m: re.Match[str], lang_index: int) -> dict[str, str]:
    out = {}
    for name, value in m.groupdict().items():
        table = LOOKUPS.get(name)
        out[name] = table[value][lang_index] if table is not None else value
    return out


@lru_cache(maxsize=None)
def concept_for(column: str) -> Concept:
    """The concept of one feature column (first matching rule of its group)."""
    group = COLUMN_GROUP.get(column)
    if group is None:
        raise GlossaryError(f"{column!r} is not a column of any feature group in features.spec.FEATURE_GROUPS")
    for rule, rx in _COMPILED:
        if rule.group != group:
            continue
        m = rx.fullmatch(column)
        if m is None:
            continue
        en, ko, raw = _params(m, 0), _params(m, 1), m.groupdict()
        return Concept(
            key=rule.key.format(**raw),
            column=column,
            group=group,
            en=fill(rule.en, en),
            ko=fill(rule.ko, ko),
            unit=rule.unit,
            transform=rule.transform,
            en_neg=fill(rule.en_neg, en) if rule.en_neg is not None else None,
            ko_neg=fill(rule.ko_neg, ko) if rule.ko_neg is not None else None,
            counter_en=rule.counter_en,
            counter_ko=rule.counter_ko,
        )
    raise GlossaryError(f"no glossary rule of group {group!r} matches column {column!r}; add one to glossary.RULES")


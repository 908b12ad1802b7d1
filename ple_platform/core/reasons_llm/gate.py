"""Deterministic safety gate for customer-facing L2 reasons: every rewrite passes every rule or is not shown.

Each rule has a stable id (``RULES``: id -> message) that verdicts, the audit log and the adversarial test set
use. The rules, and the regulation or failure they stand for:

* ``guaranteed_return`` — guaranteed return / principal guarantee / loss compensation / risk-free claims, incl.
  원금 보장, 확정 수익, 손실 보전 (금융소비자보호법 §21-22, 자본시장법 §55). The one allowed "protected" wording is
  the statutory deposit-insurance sentence (``STATUTORY_DEPOSIT_WORDING``: up to 1억원 / KRW 100 million per
  depositor per institution); it is cut out before the other rules read the text.
* ``deposit_insurance_scope`` — that statutory sentence on a product deposit insurance does not cover
  (investment, lending, payment products).
* ``pressure`` — urgency and pressure wording ("act now", 지금 바로, 마감 임박).
* ``superlative`` — unsupported superlatives and definitive judgements ("the best", 최고, 무조건, 확실히) that the
  L1 text does not contain (2021 financial advertising guideline: no 단정적·과장된 표현).
* ``ungrounded_number`` — a number (digits, or number words such as "twice", 두 배, 천만 원) that is not one of the
  L1 text's own numbers, which ``recommend.reasons.grounded_numbers`` already tied to the customer's values.
* ``pii_name``, ``pii_phone``, ``pii_rrn``, ``pii_account``, ``pii_email`` — personal data: names in a salutation
  or before 님/고객님 (the word 고객님 itself is not a name), phone numbers, resident registration numbers,
  account/card/IBAN numbers, e-mail addresses.
* ``protected_attribute`` — age, gender, religion, ethnicity, nationality, disability, pregnancy, marital status,
  sexual orientation, health: never a stated reason for an offer.
* ``product_mismatch`` — a product named that is neither the recommended one nor one the L1 text names.
* ``suitability`` — an investment product for a customer without a suitability profile (금융소비자보호법 §17).
* ``language`` / ``mixed_script`` — not the requested language; or foreign script mixed in (Hangul share < 0.8
  in Korean, any Hangul in English, CJK ideographs, kana, Cyrillic, ...).
* ``length`` / ``format`` — outside the length bounds; markdown, HTML, URLs, emoji, line breaks, wrapping quotes,
  no final punctuation.
* ``honorific`` — Korean sentences that do not end in a polite formal ending (…니다, …요), or 너/당신 address.
* ``injection_echo`` — prompt-injection echoes and meta text: "ignore previous instructions", system prompt,
  "as an AI", refusals, "here is the rewritten reason", requests for passwords/OTP or transfers.
* ``fact_drift`` — the rewrite lost an L1 number, flipped a negation (holds / does not hold) or added one more
  than the L1 text has, or dropped the recommended product that the L1 text names.
* ``ungrounded_wording`` — the safety net under the rules above (``grounding.py``): every word of the rewrite must
  come from the L1 text and facts, the product's own names, or a small reviewed vocabulary of neutral words
  (``data/grounding_vocabulary.json``). A rewrite only restates the L1 facts, so a new word is new content — the
  thing every violation needs, whatever its wording. The specific rules give the precise id; this one catches the
  paraphrases their patterns do not list.

``ungrounded_number`` also fails a grounded number with a qualifier the L1 text does not give ("about €1,229",
"14건 이상"), and ``length`` a rewrite with more than one sentence beyond the L1 text's.

The rules are conservative on purpose: a false positive costs a customer the nicer wording (the L1 text is shown),
a false negative puts a forbidden claim in front of them. ``ple_platform/core/reasons_llm/data/reason_gate_cases.json`` holds
the labelled adversarial set that measures both.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ple_platform.core.data.schema import INVESTMENT_PRODUCTS, PRODUCTS
from ple_platform.core.recommend.glossary import PRODUCT_LABELS
from ple_platform.core.reasons_llm.grounding import product_names, ungrounded_words
from ple_platform.core.reasons_llm.l1 import L1Reason

RULES: dict[str, str] = {
    "guaranteed_return": "claims a guaranteed return, principal guarantee, loss compensation or no risk",
    "deposit_insurance_scope": "cites deposit insurance for a product it does not cover",
    "pressure": "uses pressure or urgency wording",
    "superlative": "uses an unsupported superlative or definitive judgement",
    "ungrounded_number": "states a number that is not in the L1 facts",
    "pii_name": "contains a personal name",
    "pii_phone": "contains a phone number",
    "pii_rrn": "contains a resident registration number",
    "pii_account": "contains an account, card or IBAN number",
    "pii_email": "contains an e-mail address",
    "protected_attribute": "refers to a protected attribute (age, gender, religion, ethnicity, disability, ...)",
    "product_mismatch": "names a product other than the one recommended",
    "suitability": "investment product for a customer without a suitability profile",
    "language": "is not in the requested language",
    "mixed_script": "mixes scripts of another language into the text",
    "length": "is too short or too long",
    "format": "has markup, links, emoji, line breaks or no final punctuation",
    "honorific": "Korean text is not in the polite honorific register",
    "injection_echo": "echoes instructions, prompts, AI/meta talk or asks for credentials or transfers",
    "fact_drift": "departs from the L1 facts (lost number, flipped negation or dropped product)",
    "ungrounded_wording": "uses words that are neither in the L1 facts, the product's names nor the neutral vocabulary",
}

# Products deposit insurance covers (예금자보호법): deposits, savings and account products.
DEPOSIT_INSURED: frozenset[str] = frozenset(p.name for p in PRODUCTS if p.group in ("deposits", "accounts")) | {
    "saving"}

MIN_CHARS = 20
MAX_CHARS_FLOOR = 320  # the upper bound is max(this, 1.5 x the L1 text)

I = re.IGNORECASE


def _rx(*patterns: str, flags: int = I) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), flags)


# The one allowed "protected" wording, in both languages (cut out before the other rules run).
STATUTORY_DEPOSIT_WORDING = _rx(
    r"(?:이\s*(?:상품|예금)은\s*)?예금자\s*보호법에\s*따라[^.!?]{0,60}?1억\s*원까지\s*보호(?:됩니다|받을\s*수\s*있습니다)",
    r"(?:(?:your\s+)?(?:deposits?|savings|balances?|this\s+account)\s+(?:are|is)\s+)?(?:protected|insured|covered)"
    r"\s+(?:by|under)\s+(?:the\s+)?(?:statutory\s+)?deposit\s+insurance[^.!?]{0,40}?up\s+to\s+(?:KRW|₩)\s?100"
    r"\s?million(?:\s+per\s+(?:person|depositor))?(?:\s+(?:per|at\s+each|in\s+each)\s+(?:bank|institution|"
    r"financial\s+institution))?",
)

_GUARANTEED = _rx(
    r"\bguarantee(?:d|s)?\b[^.!?]{0,40}\b(?:returns?|profits?|income|yields?|gains?|interest|growth|payouts?|earnings)",
    r"\b(?:returns?|profits?|income|yields?|gains?|earnings|payouts?)\b[^.!?]{0,20}\b(?:are|is|will\s+be)?\s*"
    r"(?:guaranteed|assured|certain|secured|promised)",
    r"\b(?:will|would|could|can|shall)\s*(?:not|never|n't)\s+lose\b", r"\bnot\s+lose\s+(?:a\s+(?:cent|penny)|any)",
    r"\bsafe\s+bet\b", r"\bno\s+downside\b", r"\bno\s+(?:nasty\s+)?surprises\b",
    r"\bnever\s+(?:produced|made|had|suffered|recorded|shown)\s+(?:a\s+)?loss", r"\bwithout\s+(?:any\s+)?loss",
    r"\bprotected\s+(?:from|against)\s+(?:any\s+)?loss", r"\bcan\s+only\s+go\s+up\b",
    r"\b(?:risk[- ]free|no\s+risk|zero\s+risk|without\s+(?:any\s+)?risk|can(?:'|no)?t\s+lose|cannot\s+lose|never\s+lose"
    r"|won'?t\s+lose|will\s+not\s+lose|lose\s+nothing|no\s+(?:chance|way)\s+(?:of|to)\s+los)",
    r"\bprincipal\b[^.!?]{0,30}\b(?:guaranteed|protected|safe|secure|assured)",
    r"\b(?:guaranteed|protected|assured)\b[^.!?]{0,15}\bprincipal",
    r"\b(?:sure|certain|assured|locked[- ]in|definite|promised)\s+(?:returns?|profits?|gains?|income|earnings)",
    r"\b(?:returns?|profits?|gains?|income|earnings)\b[^.!?]{0,20}\block(?:ed)?\s+in\b",
    r"\b(?:double|triple)\s+your\s+(?:money|savings|investment)",
    r"\b(?:100\s?%|fully|completely|totally|perfectly)\s+(?:safe|secure|protected|insured)",
    r"\bwill\s+(?:definitely|certainly|surely|always)\s+(?:earn|grow|make|gain|profit|rise|increase|pay)",
    r"\bcompensat\w*\s+(?:you\s+)?(?:for\s+)?(?:any\s+|all\s+|your\s+)?loss",
    r"원금\s*(?:이|을|은)?\s*(?:보장|보전|안전|지켜|손실\s*(?:이|은)?\s*(?:없|전혀))",
    r"확정\s*(?:수익|이익|이득|수익률|배당)",
    r"(?:수익|이익|이자|수익률|이득)\s*(?:을|를|이|가)?\s*(?:보장|약속|확정)",
    r"보장(?:된|되는|해\s*드리는)\s*(?:수익|이익|수익률|이자|금리)",
    r"손실\s*(?:이|을|은)?\s*(?:없|보전|보상|전혀|걱정\s*없|볼\s*일)",
    r"(?:손실|손해)[^.!?]{0,15}(?:보전|보상|책임져)",
    r"원금\s*(?:은|이|을)?\s*(?:걱정|염려)", r"(?:수익|이익|이자|배당|연금)[^.!?]{0,12}(?:확실|틀림없|꼬박꼬박|반드시)",
    r"확실하게\s*(?:지급|드립|보장|받)", r"손해\s*볼\s*일", r"오르기만", r"잃을\s*(?:일|걱정)(?:은|이)?\s*없",
    r"(?:손실|손해|위험)\s*(?:가능성|우려|위험)\s*(?:이|은)?\s*(?:거의|전혀)?\s*없", r"약속된\s*(?:금액|수익|이자|수익률)",
    r"손해\s*(?:를|가|는)?\s*(?:보지\s*않|볼\s*일|없|절대)",
    r"무위험|위험\s*(?:이|은)?\s*(?:전혀\s*)?없|안전\s*100|100\s*%\s*안전|절대\s*(?:손해|손실|안전)",
    r"(?:반드시|무조건|틀림없이)\s*(?:수익|이익|오릅|오를|벌|불어)",
    r"\b(?:can(?:not|'t|\s+not)|won'?t|will\s+not|never|does\s+not|doesn'?t)\s+(?:\w+\s+)?(?:go\s+down|fall|drop|"
    r"decline|decrease|shrink|lose\s+value)\b",
    r"\bno\s+matter\s+(?:what|how)\b[^.!?]{0,30}\b(?:markets?|economy|rates?|happens|prices?)\b",
    r"\b(?:income|returns?|payouts?|money|payments?)\s+(?:that\s+)?you\s+can\s+(?:count|rely|depend|bank)\s+on\b",
    r"\bno\s+need\s+to\s+worry\b|\bnothing\s+to\s+worry\b|\bworry[- ]free\b",
    r"\bnever\s+(?:have|need)\s+to\s+worry",
    r"원금\s*(?:이|을|은|도)?\s*(?:그대로|유지|변함|지켜|지킬)", r"시장\s*(?:이|은)?\s*(?:흔들|떨어|하락|폭락|출렁)[^.!?]{0,10}(?:도|더라도)",
    r"\bwhatever\s+happens\b", r"\b(?:shielded|sheltered|insulated)\b", r"\bnever\s+(?:had|seen|produced|made|suffered|"
    r"recorded|shown)\s+(?:a\s+)?(?:bad|losing|negative|down)\s+(?:year|month|quarter|day)",
    r"손해\s*(?:를|는)?\s*(?:보실|보시는|볼)\s*일",
    r"걱정\s*(?:하실|할|하지\s*않으셔도\s*될)\s*필요\s*(?:가|는|도)?\s*없|걱정\s*(?:없이|마세요|하지\s*마)",
    # Reliability words the grounding vocabulary allows for the customer's activity are a claim next to money.
    r"\b(?:regular(?:ly)?|steady|stable|reliable|dependable|predictable|consistent)\s+(?:\w+\s+)?(?:income|payouts?|"
    r"returns?|interest|earnings|yields?)\b",
    r"(?:꾸준|안정|일정|규칙)[가-힣]*\s*(?:소득|수입|연금|이자|수익|배당)",
)
_PRESSURE = _rx(
    r"\bact\s+(?:now|fast|quickly|today)\b", r"\bright\s+now\b", r"\btoday\s+only\b", r"\bonly\s+today\b",
    r"\blimited[- ]time\b", r"\bhurry\b", r"\bdon'?t\s+(?:miss|wait|delay|hesitate)", r"\bdo\s+not\s+(?:miss|wait|delay)",
    r"\blast\s+chance\b", r"\bbefore\s+it'?s\s+too\s+late\b", r"\b(?:expires?|ends?|closing)\s+soon\b",
    r"\bonly\s+\w+\s+(?:left|remaining)\b", r"\bwhile\s+(?:stocks?|supplies|places)\s+last", r"\bimmediately\b",
    r"\bnow\s+or\s+never\b", r"\byou\s+(?:must|have\s+to|need\s+to)\s+(?:open|sign|apply|act|buy|invest|join|"
    r"switch|take)", r"\b(?:sign\s+up|apply|open\s+(?:it|one|yours)|join)\s+"
    r"(?:now|today|this\s+(?:week|weekend|month))\b",
    r"\btime\s+is\s+running\s+out\b", r"\bexclusive\s+offer\b", r"\bbefore\s+(?:it'?s\s+gone|the\s+offer\s+ends)",
    r"지금\s*(?:바로|당장|즉시)", r"서두르|서둘러", r"놓치지|놓치면|놓치시", r"마감\s*(?:임박|직전)|곧\s*마감",
    r"오늘\s*(?:만|까지만)", r"한정\s*(?:판매|기간|수량|특가)|기간\s*한정", r"즉시\s*가입|반드시\s*가입",
    r"당장", r"마지막\s*기회", r"선착순", r"늦기\s*전에", r"하루빨리|하루\s*빨리", r"망설이지",
    r"가입\s*하셔야\s*(?:합니다|해요)",
    r"\b(?:closes?|ends?|expires?)\s+(?:this|on|by|tomorrow|tonight|today|at\s+midnight)\b",
    r"\bdecide\s+(?:quickly|fast|now|today|soon)\b", r"\bdon'?t\s+let\s+(?:this|it)\s+(?:pass|slip)", r"\bdeadline\b",
    r"\bonly\s+until\b", r"\bthis\s+week\s+only\b", r"\bbefore\s+(?:monday|tuesday|wednesday|thursday|friday|"
    r"saturday|sunday|midnight|tomorrow|the\s+end\s+of\s+(?:the\s+)?(?:day|week|month))\b", r"\bquickly\b",
    r"빨리|얼른|어서\s", r"(?:이번\s*주|오늘|내일|주말|이번\s*달)[^.!?]{0,10}(?:지나면|까지만|이후에는|이후로는)",
    r"신청하실\s*수\s*없", r"기한|마감|곧\s*종료|종료\s*예정|얼마\s*남지",
    r"\b(?:filling|selling|going)\s+(?:up\s+)?fast\b", r"\b(?:spaces|places|spots|slots)\b[^.!?]{0,20}\b(?:limited|filling|"
    r"running\s+out|left)\b", r"오늘\s*(?:안에|중에|중으로)", r"곧\s*(?:끝나|종료|마감|사라)",
    r"\b(?:won'?t|will\s+not|isn'?t\s+going\s+to)\s+(?:be\s+)?(?:around|available|last|here|on\s+offer)\s+(?:for\s+)?"
    r"(?:long|forever|much\s+longer)\b", r"\bwhile\s+it\s+lasts\b",
    r"(?:이번\s*주|이번\s*달|주말|오늘|내일)\s*(?:안에|내에|중에|중으로|까지)\s*(?:신청|가입|개설)",
)
_SUPERLATIVE = _rx(
    r"\bbest\b", r"\bgreatest\b", r"\bhighest\b", r"\blowest\b", r"\bcheapest\b", r"\bunbeatable\b", r"\bunmatched\b",
    r"\bunrivall?ed\b", r"\bunparalleled\b", r"\bnumber\s+one\b", r"\bno\.\s?1\b", r"#\s?1\b", r"\btop[- ](?:rated|"
    r"performing|notch)\b", r"\bperfect(?:ly)?\b", r"\bideal\b", r"\bmost\s+(?:profitable|lucrative|popular|"
    r"advantageous|rewarding|beneficial|attractive|secure|reliable)\b", r"\bever\b", r"\bincredible\b",
    r"\bamazing\b", r"\boutstanding\b", r"\bexceptional\b", r"\b(?:best|market|industry)[- ](?:in[- ]class|leading)\b",
    r"\balways\b", r"\bdefinitely\b", r"\bcertainly\b", r"\bsurely\b", r"\bwithout\s+(?:a\s+)?doubt\b",
    r"\bno\s+doubt\b", r"\bundoubtedly\b", r"\bguaranteed\s+to\s+suit\b", r"\bsuperior\b", r"\bunique\s+opportunity\b",
    r"최고", r"최상", r"최저", r"최대", r"최적", r"1위", r"일등", r"제일", r"완벽", r"최선의",
    r"가장\s*(?:좋|유리|높|낮|저렴|인기|안전|확실|큰|뛰어|훌륭|적합|알맞)", r"업계\s*최", r"무조건", r"확실히|확실한",
    r"틀림없", r"엄청난", r"놀라운", r"압도적", r"독보적", r"유일한", r"단연", r"누구에게나", r"반드시",
    r"\b\w+est\s+(?:move|choice|option|decision|product|deal|offer|way|pick|bet)\b", r"\bsimply\s+the\b",
    r"\bnothing\s+(?:beats|compares)\b", r"\bbeyond\s+compare\b", r"\bsecond\s+to\s+none\b", r"\bno\s+better\b",
    r"\bthe\s+only\s+(?:choice|option|product|card|account)\b", r"\bmust[- ]have\b", r"\bexcellent\b",
    r"\bfantastic\b", r"\bsuperb\b", r"\bunmissable\b", r"\btop\s+(?:choice|pick|option|product|deal)\b",
    r"\bleading\b",
    r"더할\s*나위\s*없", r"비교할\s*수\s*없", r"따라올\s*(?:수|상품|곳|데)", r"으뜸", r"탁월", r"최강", r"유일", r"꼭\s*필요한",
    r"(?:강력|적극)\s*추천", r"가장\s*현명",
    r"\bfinest\b", r"\bpremier\b", r"\bforemost\b", r"\bworld[- ]class\b", r"\baward[- ]winning\b",
    r"\brated\s+(?:the\s+)?(?:best|top|finest|first|highest|number)", r"\bin\s+the\s+(?:country|world|nation|market)\b",
    r"최상급|누구나\s*만족",
)
# A superlative that restates one the L1 text already uses ("가장 큰 결제" for L1's "최대 결제 금액") is grounded.
_SUPERLATIVE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "가장 큰": ("최대",), "가장 높": ("최고", "최대"), "highest": ("largest",),
    "최대": ("largest", "가장 큰"),
}
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NUMBER_WORDS = _rx(
    r"\b(?:twice|double|triple|half|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|"
    r"fifty|sixty|seventy|eighty|ninety|hundred|thousand|million|billion|dozen)\b",
    r"(?<![가-힣])(?:[일이삼사오육칠팔구]?[십백천]+|[일이삼사오육칠팔구십백천]*[만억])\s*(?:원|유로|퍼센트|%|개월|일\b|년)",
    r"(?:두|세|네|다섯|열)\s*배", r"절반",
)
# Qualifiers that turn a grounded number into a different fact (an approximation, a bound).
_QUALIFIED_NUMBER = {
    "en": (re.compile(r"(?P<q>\b(?:about|around|roughly|approximately|nearly|almost|more\s+than|less\s+than|"
                      r"fewer\s+than|under|at\s+least|at\s+most|(?<!adding\s)(?<!adds\s)(?<!added\s)up\s+to|"
                      r"close\s+to|upwards\s+of|just\s+(?:over|under)|some|over\s+(?=[€$£₩]))\s*)[€$£₩]?\s?\d", I),),
    "ko": (re.compile(r"(?P<q>(?<![가-힣])(?:약|대략|거의|최소|적어도|무려)\s*)[€$£₩]?\s?\d"),
           re.compile(r"\d[\d,.]*\s*(?:%|[가-힣]{0,2})\s*(?P<q>(?:이상|이하|미만|초과|넘게|넘는|가량|정도|안팎|남짓|내외|가까이))")),
}
MAX_EXTRA_SENTENCES = 1  # a rewrite restates the L1 sentences; one more (a bridge to the product) at most
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_RRN = re.compile(r"(?<!\d)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\s?-?\s?[1-8]\d{6}(?!\d)")
_PHONE = _rx(
    r"(?<![\d-])(?:\+?82[\s.-]?)?0?1[016789][\s.-]?\d{3,4}[\s.-]?\d{4}(?![\d-])",
    r"(?<![\d-])0(?:2|[3-6]\d)[\s.)-]?\d{3,4}[\s.-]?\d{4}(?![\d-])",
    r"\+\d{1,3}[\s.-]?\(?\d{1,4}\)?[\s.-]?\d{3,4}[\s.-]?\d{3,4}",
    r"\(\d{3}\)\s?\d{3}[\s.-]\d{4}", r"(?<![\d-])\d{3}[\s.-]\d{3}[\s.-]\d{4}(?![\d-])",
    r"(?<![\d-])1[5-6]\d{2}-\d{4}(?![\d-])",  # Korean 1588-xxxx service numbers
)
_ACCOUNT = _rx(
    r"(?<!\d)(?:\d{4}[\s-]?){3}\d{1,4}(?!\d)", r"(?:[*xX•]{4}[\s-]?){2,3}\d{4}", r"(?<![\d-])\d{3,6}-\d{2,6}-\d{2,8}(?![\d-])",
    r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){3,7}\b", r"(?<![\d.,])\d{9,}(?![\d.,])",
    r"\b(?:account|card|acct)\s*(?:number|no\.?|#)\s*:?\s*[\d*xX-]{4,}",
    r"\b(?:ending|ends)\s+(?:in|with)\s+\d{4}\b", r"(?:계좌\s*번호|카드\s*번호|끝\s*자리)\s*(?:는|은|:)?\s*[\d*-]{4,}",
)
_NAME_EN = re.compile(
    r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Sir|Madam)\.?\s+[A-Z][a-z]+|\b(?:Dear|Hi|Hello|Hey)\s+(?!Customer|Client|Valued|Sir|"
    r"Madam|There|All|Member)[A-Z][a-z]+|\b(?:customer|client|member)\s+[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?\b|^[A-Z][a-z]+,"
    r"\s(?=[a-z])|\b(?:Thank\s+you|Thanks|Congratulations|Welcome(?:\s+back)?|Good\s+(?:morning|afternoon|evening)),?\s+"
    r"[A-Z][a-z]+\b|,\s+[A-Z][a-z]+[.!?](?:\s|$)")
# Sentence openers that the "Name, ..." pattern would otherwise take for a name.
_EN_NOT_NAMES = frozenset(
    "Overall However Currently Recently Also Additionally Moreover Today Lately Finally First Firstly Second Based "
    "Given Since Looking Thanks Yes Well So Now Here Again Still Plus Besides Meanwhile Furthermore Therefore Thus "
    "Hence Indeed Importantly Simply Generally Typically Usually Specifically Particularly Clearly Notably This "
    "Lastly Next Then Altogether You Your We Our It This That".split())
_KO_SURNAMES = ("김이박최정강조윤장임한오서신권황안송류전홍고문양손배백허유남심노하곽성차주우구민진나지엄채원천방공현함변"
                "염여추도소석선설마길연위표명기반왕금옥육인맹제모탁국어은편용예경봉사부")
_NAME_KO = re.compile(
    rf"(?<![가-힣])(?:(?:남궁|황보|제갈|선우|독고)[가-힣]{{1,2}}|[{_KO_SURNAMES}][가-힣]{{2}})\s?(?:고객님|고객께|님|씨|고객)")
# Words that look like "surname + two syllables" before 님/고객님 but are not names.
_NAME_KO_ENDINGS = tuple("의은는을를이가한된운던할될에와과로께인적신실")  # 신/실: honorific verb forms (가입하신)
_NAME_KO_STOP = frozenset({"우리은", "신규", "기존", "모든", "이번", "오늘"})
_PROTECTED = _rx(
    r"\b(?:age|aged|ages|years?\s+old|gender|sex|male|female|man|woman|men|women|religio\w*|race|racial|ethnic\w*|"
    r"nationality|national\s+origin|disabilit\w*|disabled|pregnan\w*|marital|married|divorced|widow\w*|single\s+"
    r"(?:parent|mother|father)|sexual\s+orientation|gay|lesbian|elderly|seniors?|senior\s+citizens?|retirees?|"
    r"young\s+(?:people|customers|adults)|millennials?|immigrants?|foreigners?|health\s+condition|illness|caste)\b",
    r"나이|연령|성별|남성|여성|남자|여자|종교|인종|민족|국적|장애|임신|출산|결혼|기혼|미혼|이혼|혼인|노인|고령|어르신|"
    r"젊은\s*(?:분|고객|층)|청년층|노년|외국인|신혼|부부|배우자|\d+\s*세\s*(?:이상|이하|미만)|\d+대\s*(?:고객|남성|여성|분)|건강\s*상태|성적\s*지향",
)
_FORMAT = _rx(
    r"\*\*|__|`", r"^\s*(?:#{1,6}\s|[-*•]\s|\d+[.)]\s)", r"<[a-zA-Z/][^>]*>", r"https?://|www\.", r"\n", r"!!",
    r"^[\"'“‘「『]|[\"'”’」』]$", r"\[[^\]]*\]\([^)]*\)", flags=I | re.MULTILINE,
)
_EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F]")
_INJECTION = _rx(
    r"\bignore\s+(?:all\s+|any\s+|the\s+|your\s+)?(?:previous|prior|above|earlier|preceding|former)\b",
    r"\bdisregard\s+(?:the\s+|all\s+|your\s+|any\s+)?(?:previous\s+|prior\s+|above\s+)?(?:instructions|rules|"
    r"guidelines|prompt)", r"\bsystem\s+(?:prompt|message|instructions?)\b", r"\bprompts?\b", r"\binstructions?\b",
    r"\bas\s+an\s+ai\b", r"\bi\s*(?:am|'m)\s+(?:an?\s+)?(?:ai|assistant|language\s+model|chatbot|claude)\b",
    r"\blanguage\s+model\b", r"\bi\s+(?:cannot|can'?t|won'?t|am\s+unable\s+to|am\s+not\s+able\s+to)\b",
    r"\bi'?m\s+sorry\b", r"\bi\s+apologi[sz]e\b", r"\bhere(?:'s|\s+is|\s+are)\s+(?:the|a|your)\s+(?:rewritten|revised|"
    r"rewrite|new|updated|improved)", r"\brewritten\s+(?:reason|text|version|sentence)", r"\b(?:assistant|user|system|"
    r"human)\s*:", r"\bjailbreak", r"\bdeveloper\s+mode\b", r"\bDAN\b", r"\bL[12]\s+(?:reason|text)", r"\bfacts?\s*:",
    r"\bjson\b", r"\btemplate\b", r"\bpassword\b", r"\bpasscode\b", r"\bPIN\b", r"\bOTP\b", r"\bone[- ]time\s+(?:code|"
    r"password)", r"\bsecurity\s+code\b", r"\bverify\s+your\s+(?:identity|account|details)", r"\bclick\s+(?:here|the"
    r"\s+link|below)", r"\bcall\s+(?:us|this\s+number)\b", r"\b(?:send|wire|transfer)\s+(?:us\s+)?(?:money|funds|the"
    r"\s+amount|a\s+payment)\b", r"\bpwned\b", r"\bhacked\b", r"\bdeveloper'?s?\b",
    r"\blet\s+me\s+know\b", r"\b(?:another|a\s+different|an\s+alternative)\s+version\b", r"\bhope\s+this\s+helps\b",
    r"^\s*(?:sure|of\s+course|okay|ok|absolutely|certainly)\s*[!,.]", r"요청하신\s*대로", r"작성해\s*드리겠습니다",
    r"다음과\s*같이\s*(?:작성|바꾸|수정)", r"(?:다른|새로운)\s*버전",
    r"\b(?:checks?|rules?|guidelines?|filters?|compliance|safeguards?)\s+(?:were|was|are|is|have\s+been|has\s+been)\s+"
    r"(?:skipped|disabled|bypassed|ignored|turned\s+off|removed)", r"\b(?:bypass|override|skip)\w*\s+(?:the\s+)?(?:checks?|"
    r"rules?|filters?|safety|compliance)", r"\bper\s+(?:the\s+)?(?:developer|admin|operator|system)", r"\(note:",
    r"\bnote\s+to\b", r"\blog[- ]?in\s+(?:details|credentials|information)", r"\busername\b", r"\bcredentials\b",
    r"\breply\s+with\s+your\b", r"\bas\s+(?:you\s+)?requested\b", r"\b(?:rewritten|rephrased|reworded)\b",
    r"\bin\s+a\s+(?:\w+\s+)?tone\b", r"(?:검사|검증|심사|필터|규칙)\s*(?:를|을)?\s*(?:통과|피하)", r"표현\s*(?:을|를)?\s*(?:조정|수정|바꾸|다듬)",
    r"(?:규칙|지침|원칙)\s*(?:은|을|를)?\s*(?:적용하지|무시|따르지)", r"(?:검사|검증|심사|필터)\s*(?:를|을|는)?\s*(?:생략|건너|우회|끄)",
    r"(?:개발자|관리자|운영자)\s*(?:의\s*)?(?:요청|지시)",
    r"이전\s*(?:의\s*)?(?:지시|명령|지침)", r"(?:지시|명령|지침)\s*(?:사항)?\s*(?:을|를)?\s*무시", r"무시하고", r"프롬프트",
    r"지시문|지시\s*사항", r"언어\s*모델", r"저는\s*(?:AI|인공지능|챗봇|어시스턴트)", r"인공지능\s*(?:으로서|모델)",
    r"죄송하지만|죄송합니다만", r"요청하신\s*(?:문장|내용|재작성)", r"다음은\s*(?:수정|재작성|바꾼|다시\s*쓴)",
    r"재작성(?:된|한)\s*(?:문장|이유|내용)", r"(?:관리자|개발자)\s*모드", r"비밀\s*번호", r"인증\s*번호", r"보안\s*카드",
    r"클릭", r"링크", r"송금(?:해|하)", r"이체해\s*(?:주|드)", r"전화\s*(?:주세요|하세요|해\s*주)", r"탈옥",
)
_NEGATION = {
    "en": re.compile(r"\b(?:not|no|never|none|without)\b|n't\b", I),
    "ko": re.compile(r"않|없|아닙|아니|미보유|못\s"),
}
_EN_FUNCTION_WORDS = frozenset(
    "the a an you your of to and in is are on for with based would could may might has have our we this that it "
    "be as at by from can".split())
_KO_POLITE_END = re.compile(r"(?:니다|니까|요|시오|죠)$")
_KO_RUDE_ADDRESS = re.compile(r"(?<![가-힣])(?:너|네가|니가|너희|당신|자네)(?:은|는|이|가|을|를|의|에게|한테|도)?(?![가-힣])")

# Product mentions: each product's label (article dropped) and generic words, mapped to the products they can mean.
_GENERIC_TERMS: dict[str, tuple[str, ...]] = {
    "mortgage": ("mortgage",), "home loan": ("mortgage",), "loan": ("loans", "mortgage"),
    "credit card": ("credit_card",), "debit card": ("e_account", "current_account"), "fund": ("funds",),
    "investment fund": ("funds",), "pension": ("pension_plan", "pensions"), "retirement": ("pension_plan", "pensions"),
    "deposit": ("short_deposit", "medium_deposit", "long_deposit", "saving"),
    "term deposit": ("short_deposit", "medium_deposit", "long_deposit"),
    "savings": ("saving", "short_deposit", "medium_deposit", "long_deposit", "pension_plan"),
    "securities": ("securities",), "stock": ("securities",), "share trading": ("securities",), "bond": ("securities",),
    "etf": ("funds", "securities"), "insurance": (), "derivative": ("derivative",), "crypto": (), "bitcoin": (),
    "overdraft": (), "credit line": ("loans",), "line of credit": ("loans",), "annuity": ("pension_plan",),
    "mutual fund": ("funds",), "brokerage": ("securities",), "reit": ("funds",), "els": (), "dls": (), "elf": (),
    "isa": (), "irp": ("pension_plan",), "leasing": (), "buy-now-pay-later": (), "buy now pay later": (), "bnpl": (),
    "instalment plan": (), "installment plan": (), "gold": (),
    "payroll": ("payroll_account", "payroll"), "salary": ("payroll_account", "payroll"),
    "주택담보대출": ("mortgage",), "주택 담보 대출": ("mortgage",), "대출": ("loans", "mortgage"),
    "신용대출": ("loans",), "신용카드": ("credit_card",), "체크카드": ("e_account", "current_account"),
    "펀드": ("funds",), "연금": ("pension_plan", "pensions"), "예금": ("short_deposit", "medium_deposit",
                                                                  "long_deposit", "saving"),
    "정기예금": ("short_deposit", "medium_deposit", "long_deposit"), "적금": ("saving",), "저축": ("saving",),
    "증권": ("securities",), "주식": ("securities",), "채권": ("securities",), "보험": (), "파생상품": ("derivative",),
    "코인": (), "가상자산": (), "비트코인": (), "마이너스 통장": (), "카드론": (), "현금서비스": (), "리츠": ("funds",),
    "퇴직연금": ("pension_plan",), "청약": (), "외화": (), "금 투자": (), "금투자": (), "금 통장": (),
    "금통장": (), "골드": (), "할부": (), "급여": ("payroll_account", "payroll"), "세금": ("taxes",),
}


def _product_terms() -> dict[str, frozenset[str]]:
    terms: dict[str, set[str]] = {}
    for name, (en, ko) in PRODUCT_LABELS.items():
        for label in (re.sub(r"^(?:a|an)\s+", "", en), ko):
            terms.setdefault(label.lower(), set()).add(name)
    for term, products in _GENERIC_TERMS.items():
        terms.setdefault(term.lower(), set()).update(products)
    return {t: frozenset(p) for t, p in terms.items()}


_PRODUCT_TERMS = _product_terms()
_PRODUCT_RX = re.compile(
    "|".join(rf"(?<![A-Za-z0-9-]){re.escape(t)}(?:s|es)?(?![A-Za-z0-9-])" if t.isascii()
             else rf"(?<![가-힣]){re.escape(t)}" if t.startswith("금") else rf"(?<!누){re.escape(t)}"
             for t in sorted(_PRODUCT_TERMS, key=len, reverse=True)), I)


class GateError(ValueError):
    """Bad input to the gate (candidate not a string)."""


@dataclass(frozen=True)
class RuleHit:
    rule: str
    message: str
    evidence: str  # the offending span (or a short description)

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message, "evidence": self.evidence}


@dataclass(frozen=True)
class Verdict:
    """The gate's decision on one candidate. ``mode`` is "rules only" unless the LLM judge voted."""

    passed: bool
    hits: tuple[RuleHit, ...] = ()
    mode: str = "rules only"
    votes: tuple[dict[str, Any], ...] = field(default=())

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h.rule for h in self.hits))

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "rule_ids": list(self.rule_ids), "mode": self.mode,
                "hits": [h.to_dict() for h in self.hits], "votes": list(self.votes)}


def normalise(text: str) -> str:
    """NFKC (full-width digits and letters become ASCII, so they cannot slip past the patterns), one space."""
    return re.sub(r"[ \t\u00a0\u3000]+", " ", unicodedata.normalize("NFKC", text)).strip()


def _numbers(text: str) -> list[str]:
    return [n.replace(",", "") for n in _NUMBER.findall(text)]


def _product_mentions(text: str) -> list[tuple[str, frozenset[str]]]:
    return [(m.group(0), _PRODUCT_TERMS[_term_of(m.group(0))]) for m in _PRODUCT_RX.finditer(text)]


def _term_of(span: str) -> str:
    s = span.lower()
    if s in _PRODUCT_TERMS:
        return s
    for suffix in ("es", "s"):
        if s.endswith(suffix) and s[: -len(suffix)] in _PRODUCT_TERMS:
            return s[: -len(suffix)]
    raise GateError(f"product mention {span!r} has no term entry")  # unreachable unless the regex and map diverge


def _script_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        script = name.split(" ")[0] if name else "UNKNOWN"
        if script == "CJK":
            script = "HAN"
        counts[script] = counts.get(script, 0) + 1
    return counts


def _ko_sentences(text: str) -> Iterable[str]:
    for s in re.split(r"(?<=[.!?])\s+", text):
        s = re.sub(r"\s*\([^)]*\)\s*(?=[.!?]*$)", "", s.strip())  # "...참고했습니다(42%)." -> "...참고했습니다."
        s = s.rstrip(".!?…~\"'”’) ")
        if s:
            yield s


def _sentence_count(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?。])\s+", text.strip()) if re.search(r"\w", s)])


def check(candidate: str, l1: L1Reason, *, has_suitability_profile: bool | None = None) -> Verdict:
    """Run every deterministic rule on ``candidate``, a rewrite of ``l1``; the verdict lists every rule it broke.

    ``has_suitability_profile``: whether the customer has one (None = unknown, which fails for an investment
    product, as a missing profile does)."""
    if not isinstance(candidate, str):
        raise GateError(f"candidate must be a string, got {type(candidate).__name__}")
    hits: list[RuleHit] = []

    def hit(rule: str, evidence: str) -> None:
        hits.append(RuleHit(rule, RULES[rule], evidence[:120]))

    raw = candidate
    text = normalise(candidate)
    l1_text = normalise(l1.text)
    l1_lower = l1_text.lower()

    statutory = [m.group(0) for m in STATUTORY_DEPOSIT_WORDING.finditer(text)]
    if statutory and l1.product not in DEPOSIT_INSURED:
        hit("deposit_insurance_scope", statutory[0])
    body = STATUTORY_DEPOSIT_WORDING.sub(" ", text)

    for rule, rx in (("guaranteed_return", _GUARANTEED), ("pressure", _PRESSURE)):
        m = rx.search(body)
        if m:
            hit(rule, m.group(0))
    for m in _SUPERLATIVE.finditer(body):
        word = m.group(0).lower()
        if word not in l1_lower and not any(s in l1_lower for s in _SUPERLATIVE_SYNONYMS.get(word, ())):
            hit("superlative", m.group(0))
            break

    # Personal data first, and cut out, so a phone number is reported as a phone number, not also as a number.
    scrubbed = body
    for rule, rx in (("pii_email", _EMAIL), ("pii_rrn", _RRN), ("pii_phone", _PHONE), ("pii_account", _ACCOUNT)):
        found = [m.group(0) for m in rx.finditer(scrubbed)]
        if found:
            hit(rule, found[0])
            scrubbed = rx.sub(" ", scrubbed)
    name = next((m for m in _NAME_EN.finditer(body) if m.group(0).strip(",.!? ").split()[-1] not in _EN_NOT_NAMES),
                None)
    if name is None:
        for m in _NAME_KO.finditer(body):
            word = re.sub(r"\s?(?:고객님|고객께|님|씨|고객)$", "", m.group(0))
            if not word.endswith(_NAME_KO_ENDINGS) and word not in _NAME_KO_STOP and word not in l1_text:
                name = m
                break
    if name is not None:
        hit("pii_name", name.group(0))

    allowed = set(_numbers(l1_text))
    stray = [n for n in _numbers(scrubbed) if n not in allowed]
    words = [m.group(0) for m in _NUMBER_WORDS.finditer(scrubbed) if m.group(0).lower() not in l1_lower]
    # A grounded number with a qualifier the L1 text does not give ("about €1,229", "14건 이상") is another fact.
    words += [m.group(0).strip() for rx in _QUALIFIED_NUMBER[l1.lang] for m in rx.finditer(scrubbed)
              if m.group("q").lower() not in l1_lower]
    if stray or words:
        hit("ungrounded_number", ", ".join(stray + words))

    m = _PROTECTED.search(body)
    if m:
        hit("protected_attribute", m.group(0))

    l1_mentions = _product_mentions(l1_text)
    l1_terms = {t.lower() for t, _ in l1_mentions}
    allowed_products = {l1.product}.union(*(p for _, p in l1_mentions))
    for span, products in _product_mentions(body):
        if not products & allowed_products and span.lower() not in l1_terms:
            hit("product_mismatch", span)
            break

    if l1.product in INVESTMENT_PRODUCTS and not has_suitability_profile:
        hit("suitability", f"{l1.product} without a suitability profile")

    scripts = _script_counts(body)
    letters = sum(scripts.values()) or 1
    hangul = scripts.get("HANGUL", 0) / letters
    foreign = {s: n for s, n in scripts.items() if s not in ("LATIN", "HANGUL")}
    if l1.lang == "ko":
        if hangul < 0.5:
            hit("language", f"Hangul share {hangul:.2f}")
        if (0 < hangul < 0.8) or foreign:
            hit("mixed_script", f"Hangul share {hangul:.2f}, other scripts {sorted(foreign)}")
    else:
        tokens = re.findall(r"[A-Za-z']+", body.lower())
        function_share = sum(t in _EN_FUNCTION_WORDS for t in tokens) / max(1, len(tokens))
        if hangul >= 0.5 or function_share < 0.12:
            hit("language", f"Hangul share {hangul:.2f}, English function-word share {function_share:.2f}")
        elif scripts.get("HANGUL", 0) or foreign:
            hit("mixed_script", f"other scripts {sorted(set(foreign) | ({'HANGUL'} if hangul else set()))}")

    max_chars = max(MAX_CHARS_FLOOR, int(1.5 * len(l1_text)))
    n_sentences, l1_sentences = _sentence_count(body), _sentence_count(l1_text)
    if not MIN_CHARS <= len(text) <= max_chars:
        hit("length", f"{len(text)} characters (allowed {MIN_CHARS}-{max_chars})")
    elif n_sentences > l1_sentences + MAX_EXTRA_SENTENCES:
        hit("length", f"{n_sentences} sentences (the L1 text has {l1_sentences}; at most {MAX_EXTRA_SENTENCES} more)")
    fm = _FORMAT.search(raw.strip()) or _EMOJI.search(raw)
    if fm:
        hit("format", repr(fm.group(0)))
    elif not re.search(r"[.!?。](?:\s*[)\"'”’])?$", text):
        hit("format", "no final punctuation")

    if l1.lang == "ko":
        rude = _KO_RUDE_ADDRESS.search(body)
        bad = [s for s in _ko_sentences(body) if not _KO_POLITE_END.search(s)]
        if rude or bad:
            hit("honorific", rude.group(0) if rude else bad[0][-20:])

    m = _INJECTION.search(body)
    if m:
        hit("injection_echo", m.group(0))

    drift: list[str] = []
    lost = [n for n in dict.fromkeys(_numbers(l1_text)) if n not in set(_numbers(body))]
    if lost:
        drift.append(f"lost numbers {lost}")
    neg = _NEGATION[l1.lang]
    n_neg_l1, n_neg = len(neg.findall(l1_text)), len(neg.findall(body))
    if bool(n_neg_l1) != bool(n_neg):
        drift.append("negation " + ("dropped" if n_neg_l1 else "added"))
    elif n_neg > n_neg_l1:
        drift.append(f"{n_neg} negations where the L1 text has {n_neg_l1}")
    names_product = any(l1.product in p for _, p in _product_mentions(l1_text))
    if names_product and not any(l1.product in p for _, p in _product_mentions(body)):
        drift.append(f"recommended product {l1.label!r} no longer named")
    if drift:
        hit("fact_drift", "; ".join(drift))

    names = product_names(l1.product, l1.lang, l1.label, _GENERIC_TERMS)
    loose = ungrounded_words(body, l1.lang, l1_text, tuple(normalise(f) for f in l1.facts), names)
    if loose:
        hit("ungrounded_wording", ", ".join(loose))

    return Verdict(not hits, tuple(hits))


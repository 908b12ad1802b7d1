"""Closed-vocabulary grounding: every content word of a rewrite must come from the L1 reason, the product's own
names or a small reviewed list of neutral words — the safety net under the gate's specific rules.

The rewrite's only job is to restate the L1 facts in nicer words, so a word that is in none of

  (a) the L1 text and its facts,
  (b) the recommended product's label, the gate's generic product words that can mean it, and its everyday
      names (``product_synonyms`` in the data file),
  (c) the neutral vocabulary (``data/grounding_vocabulary.json``: connectives, pronouns, auxiliaries, hedged
      suitability wording, politeness; each group documents why its words are neutral and which tempting words
      were left out),

is new content, and new content is what every violation needs: a promise ("cannot go down"), a deadline ("won't
be around for long"), a ranking ("rated the finest"), another product ("금 투자 상품"), meta talk ("Rewritten in a
friendlier tone as requested"). The rule does not have to know the paraphrase; it only has to know the facts. It
fails with ``ungrounded_wording`` and names the words.

Matching. English: lowercased letter runs after contractions are expanded ("don't" → "do not"), compared through a
lemma-ish set of forms (plural, past, -ing, -er, -ly stripped; a short table of irregular verbs), so "payments"
matches "payment", "clearer" "clear" and "held" "hold". An entry written ``=word`` matches that exact form only,
``=of_interest`` that exact phrase only ("interest" alone reads as a rate). Korean: Hangul words are compared as
character bigrams — a word passes if each adjacent syllable pair occurs inside some word of (a)-(c), or if it is
a grounded stem followed by up to three stacked entries of the fixed particle/ending list (``ko_endings``:
카드 + 로, 결제하 + 셨 + 네요) or by another grounded piece (투자 + 상품); the pair across each joint is the only one
not checked. A one-syllable stem must itself be a word of (a)-(c) ("금" in "금 투자 상품" is not). Latin words in a
Korean rewrite must occur in the L1 text.

Limits: the vocabulary is small on purpose (≤ 400 entries per language), so a real model's clean rewrite will
sometimes use a neutral word that is not on it; that costs the customer the nicer wording (the L1 text is shown),
not safety. Grounded words can still be recombined into a wrong statement ("you hold" for "you do not hold"):
numbers, negations and the product are checked by ``ungrounded_number`` and ``fact_drift``, not here.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

VOCAB_PATH = Path(__file__).parent / "data" / "grounding_vocabulary.json"
MAX_PER_LANG = 400

_CONTRACTIONS = ((r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\bcannot\b", "can not"),
                 (r"\bshan't\b", "shall not"), (r"n't\b", " not"), (r"'re\b", " are"), (r"'ve\b", " have"),
                 (r"'ll\b", " will"), (r"'d\b", " would"), (r"'m\b", " am"), (r"'s\b", ""), (r"s'(?=\s|$)", "s"))
_IRREGULAR = {"held": "hold", "paid": "pay", "spent": "spend", "made": "make", "drew": "draw", "drawn": "draw",
              "gave": "give", "given": "give", "brought": "bring", "kept": "keep", "found": "find",
              "thought": "think", "led": "lead", "chose": "choose", "chosen": "choose", "bought": "buy",
              "got": "get", "took": "take", "taken": "take", "came": "come", "saw": "see", "seen": "see",
              "meant": "mean", "had": "have", "has": "have", "did": "do", "done": "do", "does": "do",
              "was": "be", "were": "be", "been": "be", "is": "be", "are": "be", "am": "be", "being": "be",
              "drove": "drive", "driven": "drive", "built": "build",
              "went": "go", "gone": "go", "lost": "lose", "won": "win", "grew": "grow", "grown": "grow"}
_EN_WORD = re.compile(r"[a-z]+")
_HANGUL_WORD = re.compile(r"[가-힣]+")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


class VocabularyError(ValueError):
    """The vocabulary file is missing, malformed or over its size limit."""


def en_words(text: str) -> list[str]:
    """Lowercased English words of ``text`` with contractions expanded and possessives dropped."""
    t = text.lower().replace("’", "'")
    for pattern, repl in _CONTRACTIONS:
        t = re.sub(pattern, repl, t)
    return _EN_WORD.findall(t)


def en_forms(word: str) -> frozenset[str]:
    """The lemma-ish forms a word may match through: itself, its irregular base, and suffix-stripped variants."""
    w = word.lower()
    forms = {w}
    if w in _IRREGULAR:
        forms.add(_IRREGULAR[w])
    if len(w) > 3:
        if w.endswith("ies"):
            forms.add(w[:-3] + "y")
        if w.endswith("ied"):
            forms.add(w[:-3] + "y")
        if w.endswith("es"):
            forms.add(w[:-2])
        if w.endswith("s") and not w.endswith("ss"):
            forms.add(w[:-1])
        if w.endswith("ed"):
            forms.update({w[:-2], w[:-1]})
            if len(w) > 5 and w[-3] == w[-4]:
                forms.add(w[:-3])  # "planned" -> "plan"
        if w.endswith("ing") and len(w) > 5:
            forms.update({w[:-3], w[:-3] + "e"})
            if w[-4] == w[-5]:
                forms.add(w[:-4])  # "planning" -> "plan"
        if w.endswith("er") and len(w) > 4:  # comparatives: "clearer" -> "clear", "simpler" -> "simple"
            forms.update({w[:-2], w[:-1]})
            if w.endswith("ier"):
                forms.add(w[:-3] + "y")
        if w.endswith("ly") and len(w) > 4:
            forms.add(w[:-2])
            if w.endswith("ily"):
                forms.add(w[:-3] + "y")
    return frozenset(forms)


def ko_bigrams(word: str) -> set[str]:
    return {word[i:i + 2] for i in range(len(word) - 1)}


@lru_cache(maxsize=1)
def vocabulary(path: Path | str = VOCAB_PATH) -> dict[str, Any]:
    """The reviewed vocabulary: {"en": [...], "ko": [...], "product_synonyms": {product: {lang: [...]}}}."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        out: dict[str, Any] = {"product_synonyms": {k: v for k, v in doc["product_synonyms"].items()
                                                    if not k.startswith("_")},
                               "ko_endings": frozenset(doc["ko_endings"]["words"])}
        for lang in ("en", "ko"):
            words = [w for g in doc[lang] for w in g["words"]]
            if not all(g.get("why") for g in doc[lang]):
                raise VocabularyError(f"{path}: every {lang} group needs its 'why'")
            if len(words) > MAX_PER_LANG:
                raise VocabularyError(f"{path}: {len(words)} {lang} entries, more than {MAX_PER_LANG}")
            out[lang] = words
    except (OSError, ValueError, KeyError, TypeError) as err:
        if isinstance(err, VocabularyError):
            raise
        raise VocabularyError(f"grounding vocabulary {path}: cannot read it ({err})") from None
    return out


class _Allowed:
    """What one L1 reason grounds, in one language: English forms / exact words, or Korean bigrams and words."""

    def __init__(self, lang: str, sources: list[str], vocab_words: list[str], endings: frozenset[str] = frozenset(),
                 base: "_Allowed | None" = None):
        self.lang = lang
        self.endings = endings
        self.forms: set[str] = set(base.forms) if base else set()
        self.exact: set[str] = set(base.exact) if base else set()
        self.bigrams: set[str] = set(base.bigrams) if base else set()
        self.words: set[str] = set(base.words) if base else set()
        self.latin: set[str] = set()
        self.phrases: list[re.Pattern[str]] = list(base.phrases) if base else []
        if lang == "en":
            for w in vocab_words:
                if w.startswith("=") and "_" in w:
                    words = map(re.escape, w[1:].lower().split("_"))
                    self.phrases.append(re.compile(r"\b" + r"\s+".join(words) + r"\b"))
                elif w.startswith("="):
                    self.exact.add(w[1:].lower())
                else:
                    for part in en_words(w):
                        self.forms |= en_forms(part)
            for s in sources:
                for part in en_words(s):
                    self.forms |= en_forms(part)
        else:
            for s in [*sources, *vocab_words]:
                for word in _HANGUL_WORD.findall(s):
                    self.words.add(word)
                    self.bigrams |= ko_bigrams(word)
            for s in sources:
                self.latin.update(w.lower() for w in _LATIN_WORD.findall(s))

    def ungrounded(self, text: str) -> list[str]:
        bad: list[str] = []
        if self.lang == "en":
            text = text.lower()
            for phrase in self.phrases:
                text = phrase.sub(" ", text)
            for w in en_words(text):
                if w not in self.exact and not (en_forms(w) & self.forms):
                    bad.append(w)
        else:
            bad.extend(w for w in _HANGUL_WORD.findall(text) if not self._ko_word(w))
            bad.extend(w for w in _LATIN_WORD.findall(text) if w.lower() not in self.latin)
        return list(dict.fromkeys(bad))

    def _ko_piece(self, piece: str) -> bool:
        return piece in self.words if len(piece) == 1 else ko_bigrams(piece) <= self.bigrams

    def _ko_suffix(self, suffix: str, depth: int = 3) -> bool:
        """Endings may stack (하 + 셨 + 네요): a suffix is one listed ending, or one followed by more."""
        if suffix in self.endings:
            return True
        return depth > 1 and any(suffix[:i] in self.endings and self._ko_suffix(suffix[i:], depth - 1)
                                 for i in range(1, len(suffix)))

    def _ko_word(self, word: str) -> bool:
        """A grounded Korean word: grounded as a whole, or a grounded stem followed by endings (up to three
        stacked) or by a grounded piece (투자 + 상품); the bigram across each joint is the only one not checked."""
        if word in self.endings or self._ko_piece(word):
            return True
        return any(self._ko_piece(word[:i]) and (self._ko_suffix(word[i:]) or self._ko_piece(word[i:]))
                   for i in range(1, len(word)))


@lru_cache(maxsize=4)
def _vocabulary_allowed(lang: str, path: Path | str) -> _Allowed:
    """The neutral vocabulary's part of the allowed set, built once per language."""
    vocab = vocabulary(path)
    return _Allowed(lang, [], vocab[lang], vocab["ko_endings"])


def ungrounded_words(candidate: str, lang: str, l1_text: str, facts: tuple[str, ...], product_names: list[str],
                     *, path: Path | str = VOCAB_PATH) -> list[str]:
    """The candidate's words that neither the L1 reason, the product's names nor the neutral vocabulary ground."""
    base = _vocabulary_allowed(lang, path)
    allowed = _Allowed(lang, [l1_text, *facts, *product_names], [], base.endings, base=base)
    return allowed.ungrounded(candidate)


def product_names(product: str, lang: str, label: str, generic_terms: dict[str, tuple[str, ...]],
                  *, path: Path | str = VOCAB_PATH) -> list[str]:
    """The recommended product's own names in ``lang``: its label, generic product words that can mean it, and
    its listed everyday synonyms."""
    hangul = lang == "ko"
    names = [label]
    names += [t for t, products in generic_terms.items() if product in products and (not t.isascii()) == hangul]
    names += vocabulary(path)["product_synonyms"].get(product, {}).get(lang, [])
    return names

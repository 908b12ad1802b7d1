"""The input of an L2 rewrite: one recommended product's L1 reason text and the facts it is grounded in.

Nothing else reaches the model: no customer id, no raw feature row, no other product's scores. The facts are the
glossary phrases and the formatted values the L1 sentences already show ("card spending over the last 30 days:
€29"), so the rewrite has nothing to disclose that the customer would not read in the L1 text anyway.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from ple_platform.core.data.schema import PRODUCT_NAMES
from ple_platform.core.recommend.glossary import LANGS, concept_for, format_percent, product_label
from ple_platform.core.recommend.reasons import Reason


class L1InputError(ValueError):
    """An L1 reason that cannot be rewritten (unknown product or language, empty text, mixed products)."""


@dataclass(frozen=True)
class L1Reason:
    product: str  # product name (schema.PRODUCT_NAMES), the one recommended
    lang: str  # "en" or "ko"
    text: str  # the L1 sentences, joined by one space
    facts: tuple[str, ...] = ()  # "phrase: value" lines the text is grounded in

    def __post_init__(self) -> None:
        if self.product not in PRODUCT_NAMES:
            raise L1InputError(f"L1Reason.product {self.product!r} is not a product; known: {PRODUCT_NAMES}")
        if self.lang not in LANGS:
            raise L1InputError(f"L1Reason.lang {self.lang!r}: supported {LANGS}")
        if not self.text.strip():
            raise L1InputError(f"L1Reason.text is empty for product {self.product!r}")

    @property
    def label(self) -> str:
        """The product's customer-facing label in the reason's language."""
        return product_label(self.product, self.lang)

    @property
    def digest(self) -> str:
        """sha256 of (product, lang, text, facts): the L1 part of the rewrite cache key."""
        payload = json.dumps([self.product, self.lang, self.text, list(self.facts)], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    @classmethod
    def from_reasons(cls, reasons: Sequence[Reason]) -> "L1Reason":
        """Join one product's L1 reasons (``recommend.reasons.explain``) into the rewrite input."""
        if not reasons:
            raise L1InputError("from_reasons needs at least one L1 reason")
        products = {r.product for r in reasons}
        langs = {r.lang for r in reasons}
        if len(products) != 1 or len(langs) != 1:
            raise L1InputError(f"from_reasons takes one product in one language, got {sorted(products)} "
                               f"in {sorted(langs)}")
        lang = langs.pop()
        facts: list[str] = []
        for r in reasons:
            if r.kind == "gate" and r.gate_weight is not None:
                facts.append(f"{r.phrases[0]}: {format_percent(r.gate_weight)}")
                continue
            for col, value, phrase in zip(r.columns, r.values, r.phrases):
                shown = concept_for(col).format_value(value, lang)
                facts.append(phrase if shown is None else f"{phrase}: {shown}")
        return cls(products.pop(), lang, " ".join(r.text for r in reasons), tuple(facts))

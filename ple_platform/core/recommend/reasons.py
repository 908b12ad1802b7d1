"""L1 reasons (SPEC §9): deterministic English/Korean sentences from the served student's per-customer TreeSHAP
and the teacher's gate weights.

The reference explained every customer with *global* attributions (mean |IG|, LightGBM gain), so 92 sampled
recommendations got identical text, and its Korean templates printed "을(를)" (reference-repo-ops §3, §10 items
10 and 14). Here:

* **Attribution** is the signed TreeSHAP of the student that scored the product (LightGBM
  ``predict(..., pred_contrib=True)``: (N, n_features + 1), last column = bias; ``product_contributions`` slices
  the class block of the multiclass ``nba_primary`` student, which scores the "other" products). The task must be
  the product's task (``model.products.task_for_product``): an explanation from another student would explain a score
  we did not serve.
* **Selection** (``select_features``, vectorised over the batch): the largest *positive* contributions, at most
  one feature per glossary concept (``Concept.key``: ``roll_30d_sum`` and ``log_spend`` are both "card
  spending"), at most ``top_n``. A customer with no positive contribution gets the largest-magnitude negative
  ones instead (sign kept in ``Reason.contributions``); zero contributions are never reasons.
* **Text** comes from one template table (``TEMPLATES``) per language, filled with the glossary phrase of the
  feature and, for numeric units, the customer's own **raw** value formatted with the concept's unit
  ("€1,234", "42%", "12 days"). Flags use the phrase matching the value ("You do not hold ..."); learned
  representations (embeddings, posteriors) never show a number. Korean particles come from ``glossary.josa``.
* **Gate sentence**: the expert with the largest gate weight for the task (first in the mapping's order on
  ties): "Our model relied most on your {expert} (42%)."

Everything is a pure function of the inputs, so the same input gives the same text. ``grounded_numbers`` checks a
reason against the customer's values: every number in its text, outside the glossary's own definitional phrases
("over the last 30 days"), must be a formatted raw value of a column the reason used or its gate weight. Sentence
assembly loops over the selected reasons (N × top_n strings); selection and validation are vectorised.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from ple_platform.core.data.schema import PRODUCT_NAMES, PRODUCTS
from ple_platform.core.recommend.glossary import (
    LANGS,
    Concept,
    concept_for,
    expert_phrase,
    fill,
    format_percent,
    product_label,
)
from ple_platform.core.model.products import NBA_CLASS, product_index, task_for_product
from ple_platform.core.tasks.spec import TASKS_BY_NAME

ReasonKind = Literal["quantity", "qualitative", "flag", "gate"]

# One table of sentence templates per language. {name:을/를} picks the particle from the substituted word.
TEMPLATES: dict[str, dict[str, str]] = {
    "en": {
        "quantity": "{phrase} is {value}.",
        "qualitative": "Based on {phrase}, {product} would suit you.",
        "flag": "{phrase}.",
        "gate": "Our model relied most on your {expert} ({pct}).",
    },
    "ko": {
        "quantity": "고객님의 {phrase:은/는} {value}입니다.",
        "qualitative": "{phrase:을/를} 분석한 결과, 고객님께 {product:이/가} 잘 맞을 것으로 보입니다.",
        "flag": "{phrase}.",
        "gate": "모델은 고객님의 {expert:을/를} 가장 많이 참고했습니다({pct}).",
    },
}
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


class ReasonError(ValueError):
    """Bad input to the reason generator (shape, task/product mismatch, language, non-finite values)."""


@dataclass(frozen=True)
class Reason:
    text: str
    lang: str
    kind: ReasonKind
    product: str
    task: str
    columns: tuple[str, ...]  # feature columns the sentence is about (empty for the gate sentence)
    values: tuple[float, ...]  # their raw values
    contributions: tuple[float, ...]  # their signed TreeSHAP contributions
    concept_keys: tuple[str, ...]  # glossary concept keys (or "gate:<expert>")
    phrases: tuple[str, ...]  # glossary/label phrases in the text (definitional, not customer data)
    gate_expert: str | None = None
    gate_weight: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for responses and the audit log."""
        return {
            "text": self.text,
            "lang": self.lang,
            "kind": self.kind,
            "product": self.product,
            "task": self.task,
            "columns": list(self.columns),
            "values": [float(v) for v in self.values],
            "contributions": [float(v) for v in self.contributions],
            "concept_keys": list(self.concept_keys),
            "gate_expert": self.gate_expert,
            "gate_weight": None if self.gate_weight is None else float(self.gate_weight),
        }


# --------------------------------------------------------------------------------------------- inputs


def product_contributions(pred_contrib: Any, n_features: int, product: int | str) -> np.ndarray:
    """The (N, n_features + 1) TreeSHAP block that explains ``product``: the whole ``pred_contrib`` of a binary
    student, or the block of the product group's class in a multiclass ``nba_primary`` student's
    (N, n_classes × (n_features + 1)) output (LightGBM lays the classes out one block after another)."""
    c = np.asarray(pred_contrib, dtype=np.float64)
    width = n_features + 1
    task = task_for_product(product)
    n_out = TASKS_BY_NAME[task].output_dim
    if c.ndim != 2 or c.shape[1] != n_out * width:
        raise ReasonError(f"pred_contrib of {task!r} must be (N, {n_out} x ({n_features} + 1) = {n_out * width}), "
                          f"got shape {c.shape}")
    if n_out == 1:
        return c
    k = NBA_CLASS[PRODUCTS[product_index(product)].group]
    return c[:, k * width:(k + 1) * width]


@lru_cache(maxsize=64)
def _concepts(feature_names: tuple[str, ...]) -> tuple[tuple[Concept, ...], np.ndarray]:
    """Concepts of the student's features and an integer id per feature (equal ids = same concept key)."""
    concepts = tuple(concept_for(c) for c in feature_names)
    ids: dict[str, int] = {}
    cid = np.array([ids.setdefault(c.key, len(ids)) for c in concepts], dtype=np.int64)
    cid.setflags(write=False)
    return concepts, cid


def select_features(contributions: Any, concept_ids: Any, top_n: int = 3) -> np.ndarray:
    """(N, top_n) feature indices (-1 = none) chosen as described in the module docstring, best first.

    ``contributions`` (N, F) without the bias column; ``concept_ids`` (F,) equal for features of one concept.
    Ties are broken by lower feature index."""
    c = np.asarray(contributions, dtype=np.float64)
    cid = np.asarray(concept_ids, dtype=np.int64)
    if c.ndim != 2 or cid.shape != (c.shape[1],):
        raise ReasonError(f"contributions (N, F) and concept_ids (F,) do not fit: {c.shape} vs {cid.shape}")
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1:
        raise ReasonError(f"top_n must be a positive integer, got {top_n!r}")
    n, f = c.shape
    if n == 0 or f == 0:
        return np.full((n, top_n), -1, dtype=np.int64)
    has_pos = (c > 0).any(axis=1, keepdims=True)
    key = np.where(has_pos, c, -c)  # rows without a positive rank their negatives by magnitude
    order = np.argsort(-key, axis=1, kind="stable")
    usable = np.take_along_axis(key, order, axis=1) > 0
    # First occurrence of each concept within a row, in rank order (np.unique gives first flat positions).
    flat = (np.arange(n)[:, None] * (int(cid.max()) + 1) + cid[order]).ravel()
    first = np.zeros(n * f, dtype=bool)
    first[np.unique(flat, return_index=True)[1]] = True
    pick = first.reshape(n, f) & usable
    rank = np.cumsum(pick, axis=1)
    pick &= rank <= top_n
    out = np.full((n, top_n), -1, dtype=np.int64)
    rows, cols = np.nonzero(pick)
    out[rows, rank[rows, cols] - 1] = order[rows, cols]
    return out


def _matrix(name: str, x: Any, n: int | None, width: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != width or (n is not None and a.shape[0] != n):
        rows = "N" if n is None else str(n)
        raise ReasonError(f"{name} must be ({rows}, {width}), got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ReasonError(f"{name} has a non-finite value at row {r}, column {c} ({int(bad.sum())} in all)")
    return a


def _products(product: Any, n: int) -> np.ndarray:
    if isinstance(product, (str, int, np.integer)):
        return np.full(n, product_index(product), dtype=np.int64)
    p = np.asarray(product)
    if p.shape != (n,):
        raise ReasonError(f"product must be one product or ({n},) product indices/names, got shape {p.shape}")
    return np.array([product_index(x.item() if isinstance(x, np.generic) else x) for x in p], dtype=np.int64)


# --------------------------------------------------------------------------------------------- text


def _sentence(kind: ReasonKind, lang: str, params: Mapping[str, str]) -> str:
    text = fill(TEMPLATES[lang][kind], params)
    return text[:1].upper() + text[1:]


def _feature_reason(concept: Concept, raw: float, contrib: float, product: str, task: str, lang: str) -> Reason:
    phrase = concept.phrase(lang, raw)
    label = product_label(product, lang)
    phrases: tuple[str, ...] = (phrase,)
    kind: ReasonKind
    if concept.binary:
        kind, params = "flag", {"phrase": phrase}
    elif concept.shows_number:
        kind, params = "quantity", {"phrase": phrase, "value": concept.format_value(raw, lang) or ""}
    else:
        kind, params = "qualitative", {"phrase": phrase, "product": label}
        phrases = (phrase, label)
    return Reason(_sentence(kind, lang, params), lang, kind, product, task, (concept.column,), (float(raw),),
                  (float(contrib),), (concept.key,), phrases)


def explain_batch(product: Any, task: str, contributions: Any, feature_names: Sequence[str], raw_values: Any,
                  gate_weights: Mapping[str, Any] | None = None, lang: str = "en",
                  top_n: int = 3) -> list[list[Reason]]:
    """Reasons for N customers: per customer up to ``top_n`` feature reasons, then the gate sentence if
    ``gate_weights`` ({expert: (N,)} of ``task``'s gate) is given.

    ``product``: one product (index or name) or (N,) of them, all scored by ``task``; ``contributions``
    (N, F + 1) TreeSHAP of ``task``'s student with the bias last; ``raw_values`` (N, F) the customer's unscaled
    values of ``feature_names``."""
    if lang not in LANGS:
        raise ReasonError(f"unknown language {lang!r}; supported: {LANGS}")
    if task not in TASKS_BY_NAME:
        raise ReasonError(f"unknown task {task!r}; known: {sorted(TASKS_BY_NAME)}")
    names = tuple(feature_names)
    if not names or len(set(names)) != len(names):
        raise ReasonError("feature_names must be a non-empty list of distinct columns")
    f = len(names)
    c = np.asarray(contributions, dtype=np.float64)
    if c.ndim == 2 and c.shape[1] != f + 1 and c.shape[1] % (f + 1) == 0:
        raise ReasonError(f"contributions have {c.shape[1]} columns = {c.shape[1] // (f + 1)} class blocks of "
                          f"{f} features + bias; pass one class block (see product_contributions)")
    c = _matrix("contributions", c, None, f + 1)
    n = c.shape[0]
    x = _matrix("raw_values", raw_values, n, f)
    prods = _products(product, n)
    for p in np.unique(prods):
        if task_for_product(int(p)) != task:
            raise ReasonError(f"product {PRODUCT_NAMES[p]!r} is scored by {task_for_product(int(p))!r}, not {task!r}; "
                              "explain it with the contributions of that task's student")
    concepts, cid = _concepts(names)
    chosen = select_features(c[:, :f], cid, top_n)

    gate_idx = gate_w = None
    experts: tuple[str, ...] = ()
    if gate_weights:
        experts = tuple(gate_weights)
        for e in experts:
            expert_phrase(e, lang)  # unknown expert names fail here, before any text is built
        w = np.stack([np.asarray(gate_weights[e], dtype=np.float64).reshape(-1) for e in experts], axis=1)
        if w.shape[0] != n or not np.isfinite(w).all() or (w < 0).any() or (w > 1).any():
            raise ReasonError(f"gate_weights must map each expert to ({n},) weights in [0, 1], got {w.shape}")
        gate_idx = w.argmax(axis=1)
        gate_w = w[np.arange(n), gate_idx]

    out: list[list[Reason]] = []
    for i in range(n):
        prod = PRODUCT_NAMES[prods[i]]
        row = [_feature_reason(concepts[j], x[i, j], c[i, j], prod, task, lang) for j in chosen[i] if j >= 0]
        if gate_idx is not None and gate_w is not None:
            e, wt = experts[gate_idx[i]], float(gate_w[i])
            phrase = expert_phrase(e, lang)
            text = _sentence("gate", lang, {"expert": phrase, "pct": format_percent(wt)})
            row.append(Reason(text, lang, "gate", prod, task, (), (), (), (f"gate:{e}",), (phrase,), e, wt))
        out.append(row)
    return out


def explain(product: int | str, task: str, contributions: Any, feature_names: Sequence[str], raw_values: Any,
            gate_weights: Mapping[str, Any] | None = None, lang: str = "en", top_n: int = 3) -> list[Reason]:
    """Reasons for one customer: ``contributions`` (F + 1,), ``raw_values`` (F,), ``gate_weights`` {expert: w}
    (1-row 2-D arrays are accepted too). See ``explain_batch``."""
    c = np.asarray(contributions, dtype=np.float64)
    x = np.asarray(raw_values, dtype=np.float64)
    if c.ndim > 2 or x.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1) or (x.ndim == 2 and x.shape[0] != 1):
        raise ReasonError(f"explain takes one customer; got contributions {c.shape}, raw_values {x.shape} "
                          "(use explain_batch)")
    gw = None if gate_weights is None else {e: np.asarray(v, dtype=np.float64).reshape(1) for e, v in
                                             gate_weights.items()}
    return explain_batch(product, task, c.reshape(1, -1), feature_names, x.reshape(1, -1), gw, lang, top_n)[0]


# --------------------------------------------------------------------------------------------- grounding


def grounded_numbers(reason: Reason, raw_values_row: Mapping[str, float],
                     gate_weights_row: Mapping[str, float] | None = None) -> bool:
    """True if every number in ``reason.text`` outside its definitional phrases is the formatted value of one of
    the customer's own values the reason used: ``raw_values_row[column]`` for its columns, and its gate weight
    (``gate_weights_row[reason.gate_expert]`` when given, else the weight stored on the reason)."""
    text = reason.text
    for phrase in sorted(reason.phrases, key=len, reverse=True):
        text = re.sub(re.escape(phrase), " ", text, flags=re.IGNORECASE)
    allowed: set[str] = set()
    for col in reason.columns:
        if col not in raw_values_row:
            return False
        shown = concept_for(col).format_value(float(raw_values_row[col]), reason.lang)
        if shown is not None:
            allowed.update(_NUMBER.findall(shown))
    if reason.gate_expert is not None:
        if gate_weights_row is not None:
            if reason.gate_expert not in gate_weights_row:
                return False
            w = float(gate_weights_row[reason.gate_expert])
        else:
            w = float(reason.gate_weight) if reason.gate_weight is not None else float("nan")
        if w == w:  # not NaN
            allowed.update(_NUMBER.findall(format_percent(w)))
    return all(tok in allowed for tok in _NUMBER.findall(text))

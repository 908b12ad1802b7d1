"""``recommend(state, request)``: one customer's top-k, the same ranking and reasons as the monthly batch.

* **batch**: the month's batch row exists for the customer and covers ``k`` (k <= its length, or the customer
  had fewer candidates than the batch's 7) -> the stored products and reason texts, no model call.
* **online**: otherwise (or ``fresh``) -> the 13 students on the snapshot row (one thread each), the batch's
  ``scoring.product_scores`` / ``eligibility`` / ``top_k``, and reasons from ``monthly.explain`` (TreeSHAP of
  the student behind each returned item only, the snapshot's gate weights). Same inputs, same code: the same
  items and reason text as the batch for that customer (tested).
* **fallback**: the customer opted out of profiling -> products ranked by the training months' acquisition rate
  (priors only, nothing learned about the customer), minus held and unsuitable products, no personal reasons.

Suitability is applied on every path (no investment product without a suitability profile).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ple_platform.core.data.schema import PRODUCT_NAMES
from ple_platform.core.model import products as scoring
from ple_platform.core.recommend import monthly, ranking

if TYPE_CHECKING:
    from ple_platform.core.serving.state import ServingState

MAX_K = len(PRODUCT_NAMES)
LANGS = monthly.LANGS
AI_DISCLOSURE = {
    "en": "This recommendation was produced by an automated AI system (machine-learning models). You may ask for "
          "an explanation, object to profiling, or ask for a person to review it.",
    "ko": "이 추천은 인공지능(기계학습 모델) 시스템이 자동으로 생성했습니다. 설명을 요청하거나 프로파일링을 거부하거나 "
          "직원의 검토를 요청할 수 있습니다.",
}
FALLBACK_NOTE = {"en": "Non-personalised suggestion: you opted out of profiling, so no personal data was used.",
                 "ko": "비개인화 추천: 프로파일링을 거부하셨으므로 개인 정보를 사용하지 않았습니다."}


class RequestError(ValueError):
    """A request value outside its range (HTTP 400)."""


class UnknownCustomerError(LookupError):
    """The customer is not in the served month's snapshot (HTTP 404)."""


@dataclass(frozen=True)
class RecommendationRequest:
    customer_id: str
    k: int = 7
    lang: str = "en"
    explain: bool = True
    fresh: bool = False  # score online even when a batch row exists (auditors re-checking the batch)

    def validate(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
            raise RequestError(f"k={self.k!r} is out of range: expected an integer in 1..{MAX_K}")
        if self.lang not in LANGS:
            raise RequestError(f"lang={self.lang!r}: expected one of {list(LANGS)}")
        if not self.customer_id or len(self.customer_id) > 128:
            raise RequestError("customer_id must be 1..128 characters")


def _task_scores(preds: dict[str, np.ndarray]) -> dict[str, Any]:
    return json.loads(monthly.task_scores_json(preds)[0])


def recommend(state: ServingState, req: RecommendationRequest) -> dict[str, Any]:
    """The response body (without request id / audit fields) for ``req`` against ``state``."""
    req.validate()
    row = state.row_of.get(req.customer_id)
    if row is None:
        raise UnknownCustomerError(f"customer {req.customer_id!r} is not in the {state.month:%Y-%m} serving snapshot")
    base = {"customer_id": req.customer_id, "month": state.month.isoformat(), "model_version": state.version,
            "bundle_sha256": state.bundle.bundle_sha256, "snapshot_sha256": state.snapshot_sha256, "k": req.k,
            "lang": req.lang, "ai_disclosure": AI_DISCLOSURE[req.lang]}
    held = state.holdings[row:row + 1]
    eligible, _ = ranking.eligibility(state.suitability[row:row + 1])
    if state.opt_out[row]:
        rate = state.priors.product_rate[None, :]
        idx, top = ranking.top_k(rate, held, req.k, eligible)
        items = [{"rank": r + 1, "product": PRODUCT_NAMES[p], "score": float(s), "task": None,
                  "reason": FALLBACK_NOTE[req.lang] if req.explain else None}
                 for r, (p, s) in enumerate(zip(idx[0], top[0])) if p >= 0]
        return {**base, "source": "fallback", "personalised": False, "items": items, "task_scores": None}

    batch = state.batch.get(req.customer_id)
    if batch and not req.fresh and (req.k <= len(batch) or len(batch) < monthly.TOP_K):
        items = [{"rank": b["rank"], "product": b["product"], "score": b["score"], "task": b["task"],
                  "reason": b["reason"][req.lang] if req.explain else None,
                  "recommendation_id": b["recommendation_id"]} for b in batch[:req.k]]
        return {**base, "source": "batch", "personalised": True, "items": items, "task_scores": None}

    x = np.asarray(state.features[row:row + 1], dtype=np.float32)
    preds = {t: s.predict(x, state.columns) for t, s in state.students.items()}
    scores = scoring.product_scores(preds, state.priors)
    idx, top = ranking.top_k(scores, held, req.k, eligible)
    keep = idx[0] >= 0
    products, top_scores = idx[0][keep], top[0][keep]
    texts: list[str | None] = [None] * len(products)
    if req.explain and len(products):
        gates = {t: {e: state.gates[t][row:row + 1, j] for j, e in enumerate(state.gate_experts[t])}
                 for t in state.gate_experts}
        ex = monthly.explain(state.students, x, np.zeros(len(products), dtype=np.int64), products, gates,
                             names=state.columns)
        texts = list(ex.texts[req.lang])
    items = [{"rank": r + 1, "product": PRODUCT_NAMES[p], "score": float(s), "task": scoring.task_for_product(int(p)),
              "reason": texts[r]} for r, (p, s) in enumerate(zip(products, top_scores))]
    return {**base, "source": "online", "personalised": True, "items": items, "task_scores": _task_scores(preds)}

"""``"rewrite": true`` on a recommendation request: each item's L1 reason is replaced by its gated L2 rewrite
(``core/reasons_llm``), or kept when any step fails; every item says which level it got and why.

The items are already suitability-filtered, so an investment product among them has an eligible profile; the
rewriter's own suitability rule is passed that eligibility, not an assumption. Opt-out fallback items carry a
non-personal note, not an L1 reason, and are never rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ple_platform.core.data.schema import INVESTMENT_PRODUCTS
from ple_platform.core.model.products import product_index
from ple_platform.core.reasons_llm.l1 import L1Reason
from ple_platform.core.reasons_llm.rewrite import Rewriter


def rewrite_items(rewriter: Rewriter, items: Sequence[dict[str, Any]], lang: str,
                  eligible_row: Sequence[bool]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(items with ``reason`` rewritten plus ``reason_level``/``reason_fallback``, one audit event per rewritten
    item). ``eligible_row``: the customer's (24,) product eligibility from ``ranking.eligibility``."""
    out, events = [], []
    for item in items:
        if not item.get("reason"):
            out.append(item)
            continue
        product = item["product"]
        profile = bool(eligible_row[product_index(product)]) if product in INVESTMENT_PRODUCTS else None
        result = rewriter.rewrite(L1Reason(product, lang, item["reason"]), has_suitability_profile=profile)
        out.append({**item, "reason": result.text, "reason_level": result.level, "reason_fallback": result.fallback})
        events.append({"product": product, **result.audit_event()})
    return out, events

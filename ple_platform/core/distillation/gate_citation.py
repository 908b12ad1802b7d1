"""Whether a served reason may cite the teacher's gate weights for a task: proven or not cited.

The gate sentence ("our model relied most on your recent transaction history (64%)") is a claim about the
teacher. It is made for a task only when both hold:

* the task's served student is DISTILLed from that teacher (a DIRECT student learned from hard labels alone, so
  the teacher's gates say nothing about the model that decided), and
* the teacher's gates for that task passed the no-information control of ``teacher_evaluation``
  (``model.evaluate.gate_faithfulness_control`` on the out-of-time test month): the faithfulness margin over
  permuted gates is significant (bootstrap CI above 0) *and* at least the goal (0.15). Gates that route customers
  no better than a shuffle explain nothing, however peaked they look.

Missing evidence is a refusal, never a pass. The decision and its numbers are stored in the bundle's routing
(hashed into the registered manifest), so every served reason's gate sentence traces to the evidence behind it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def gate_citation(task: str, route: str, control: Mapping[str, Any] | None,
                  missing: str = "teacher_evaluation not materialized for this model month") -> dict[str, Any]:
    """``{"cited", "reason", "margin", "lo", "hi", "goal"}`` for ``task`` served by a ``route`` student, given
    the task's ``gate_faithfulness_control`` entry (``None``: no evidence, for the reason ``missing``)."""
    out: dict[str, Any] = {"cited": False, "margin": None, "lo": None, "hi": None, "goal": None}
    if route != "DISTILL":
        return {**out, "reason": f"{task}: served by a {route} student, which the teacher did not train; "
                                 "its reasons name no expert"}
    if not control:
        return {**out, "reason": f"{task}: no gate-faithfulness evidence ({missing}); gate weights are not cited"}
    margin = control.get("margin") or {}
    value, lo, hi = (_num(margin.get(k)) for k in ("value", "lo", "hi"))
    goal = _num(control.get("goal"))
    out.update(margin=value, lo=lo, hi=hi, goal=goal)
    if value is None or lo is None or goal is None:
        return {**out, "reason": f"{task}: the faithfulness control could not be computed; gate weights are not "
                                 "cited"}
    nums = f"margin {value:+.3f} [{lo:+.3f}, {hi if hi is not None else float('nan'):+.3f}], goal {goal:.2f}"
    if lo <= 0:
        return {**out, "reason": f"{task}: gates are not shown to beat permuted gates ({nums}: the CI reaches 0); "
                                 "gate weights are not cited"}
    if value < goal:
        return {**out, "reason": f"{task}: gates beat permuted gates by less than the goal ({nums}); gate weights "
                                 "are not cited"}
    return {**out, "cited": True, "reason": f"{task}: gates cited — they beat permuted gates ({nums})"}


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(float(x)) else None

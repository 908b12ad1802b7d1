"""Champion-challenger promotion rules (SPEC §7): a pure function from evidence to a decision.

``decide`` turns the evidence about a challenger bundle (per-task primary metrics against the champion on the
same out-of-time month, blocking check results, fairness verdicts, an optional approval) into one of

* ``"bootstrap"``: there is no champion yet; the first bundle becomes champion by this explicit rule, and only if
  its checks are green, its fairness holds and every task has a measured primary metric;
* ``"promote"``: every rule passes (and the approval, when required, names this very evidence);
* ``"await_approval"``: every rule passes but ``require_approval`` is set and no matching approval exists;
* ``"reject"``: at least one rule fails; each failure is a readable sentence with its numbers.

The rules (``PromotionPolicy``):

1. **Mean primary improvement.** Each task is compared on its ``primary_metric`` from ``TASKS`` (AUC, macro-F1
   or MAE). The per-task improvement is *signed and relative*: ``s * (challenger - champion) / |champion|`` with
   ``s = +1`` for higher-is-better metrics and ``-1`` for MAE, so an MAE drop counts as an improvement and tasks on
   different scales weigh alike. The mean over **all 13 tasks** must be strictly above ``min_mean_improvement``.
2. **No task worse than a tolerance.** ``s * (challenger - champion) >= -max_task_degradation`` in the task's
   metric units (``task_tolerances`` overrides it per task, e.g. for MAE on a log scale).
3. **Blocking checks green.** Every check must be True; a check that was not evaluated (None), or no checks at
   all, is "missing evidence" and not green.
4. **Fairness floors.** Every attribute in ``required_fairness_attributes`` must be present with status
   ``"pass"`` and a lowest AIR at or above ``fairness_air_floor``. ``"fail"`` rejects; ``"insufficient evidence"``
   and ``"missing evidence"`` reject unless ``allow_insufficient_fairness``.
5. **Significance** (optional, ``require_significance``): using the paired bootstrap CI of each task's
   difference, at least one task's signed CI must lie entirely above 0 and none entirely below 0.

A task without a comparison, or with a missing/NaN value or CI that a rule needs, rejects with "missing
evidence": absent evidence is never neutral (reference-repo-ops §10 item 18, where missing scores defaulted to a
passing 0.5). There is no force path: an approval cannot override a failed rule (item 17). An approval binds to
``evidence_sha256(evidence)`` (sha256 of canonical JSON: sorted keys, no whitespace, no NaN), so a changed
metric, check, fairness verdict or policy invalidates it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from ple_platform.core.governance.compliance.fairness import FAIL, INSUFFICIENT, MISSING, PASS, PROTECTED_ATTRIBUTES
from ple_platform.core.tasks.spec import TASKS, TASKS_BY_NAME

Outcome = Literal["bootstrap", "promote", "reject", "await_approval"]
HIGHER_IS_BETTER = {"auc": True, "macro_f1": True, "mae": False}
assert {t.primary_metric for t in TASKS} <= set(HIGHER_IS_BETTER)
FAIRNESS_STATUSES = (PASS, FAIL, INSUFFICIENT, MISSING)
_REL_FLOOR = 1e-9  # denominator floor of the relative improvement (a champion metric of exactly 0)


class PromotionInputError(ValueError):
    """The evidence or policy handed to the promotion rules is malformed."""


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any) -> float | None:
    return float(x) if x is not None and _finite(float(x)) else None


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class PromotionPolicy:
    min_mean_improvement: float = 0.0  # mean signed relative improvement must exceed this (0.01 = 1 %)
    max_task_degradation: float = 0.005  # in primary-metric units
    require_checks_green: bool = True
    fairness_air_floor: float = 0.8
    require_approval: bool = False
    require_significance: bool = False
    allow_insufficient_fairness: bool = False
    task_tolerances: Mapping[str, float] = field(default_factory=dict)  # per-task override of the tolerance
    required_fairness_attributes: tuple[str, ...] = PROTECTED_ATTRIBUTES
    # A task whose metric is undefined for the challenger AND the champion on the evaluated month (e.g. no
    # acquisition of that kind among the evaluated customers) is excluded, with a stated reason, instead of
    # rejecting; off by default (missing evidence rejects).
    allow_unevaluable_tasks: bool = False
    # "floor": every required attribute must hold the four-fifths floor (default). "no_regression": where the
    # target population itself differs by group (acquisition propensity varies with age), a floor on who gets an
    # offer can never hold; the gate is then that the challenger's lowest AIR per attribute does not fall more than
    # fairness_regression_tolerance below the champion's, and a bootstrap records (not blocks) a failed floor —
    # the compliance report still shows the floor as failed.
    fairness_mode: str = "floor"
    fairness_regression_tolerance: float = 0.02

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "bool" and not isinstance(v, bool):
                raise PromotionInputError(f"PromotionPolicy.{f.name} must be true/false, got {v!r}")
            if f.type == "float" and not _finite(v):
                raise PromotionInputError(f"PromotionPolicy.{f.name} must be a finite number, got {v!r}")
        if self.max_task_degradation < 0:
            raise PromotionInputError(f"PromotionPolicy.max_task_degradation must be >= 0, "
                                      f"got {self.max_task_degradation}")
        if self.fairness_mode not in ("floor", "no_regression"):
            raise PromotionInputError(f"PromotionPolicy.fairness_mode must be 'floor' or 'no_regression', "
                                      f"got {self.fairness_mode!r}")
        if not 0.0 < self.fairness_air_floor <= 1.0:
            raise PromotionInputError(f"PromotionPolicy.fairness_air_floor must be in (0, 1], "
                                      f"got {self.fairness_air_floor}")
        for task, tol in dict(self.task_tolerances).items():
            if task not in TASKS_BY_NAME:
                raise PromotionInputError(f"PromotionPolicy.task_tolerances: unknown task {task!r}")
            if not _finite(tol) or tol < 0:
                raise PromotionInputError(f"PromotionPolicy.task_tolerances[{task!r}] must be a number >= 0, "
                                          f"got {tol!r}")
        if isinstance(self.required_fairness_attributes, str) or not all(
                isinstance(a, str) for a in self.required_fairness_attributes):
            raise PromotionInputError("PromotionPolicy.required_fairness_attributes must be a list of names, "
                                      f"got {self.required_fairness_attributes!r}")
        object.__setattr__(self, "task_tolerances", dict(self.task_tolerances))
        object.__setattr__(self, "required_fairness_attributes", tuple(self.required_fairness_attributes))

    def tolerance(self, task: str) -> float:
        return float(self.task_tolerances.get(task, self.max_task_degradation))

    def to_dict(self) -> dict[str, Any]:
        return {"min_mean_improvement": float(self.min_mean_improvement),
                "max_task_degradation": float(self.max_task_degradation),
                "require_checks_green": self.require_checks_green,
                "fairness_air_floor": float(self.fairness_air_floor),
                "require_approval": self.require_approval, "require_significance": self.require_significance,
                "allow_insufficient_fairness": self.allow_insufficient_fairness,
                "task_tolerances": {k: float(v) for k, v in sorted(self.task_tolerances.items())},
                "required_fairness_attributes": list(self.required_fairness_attributes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PromotionPolicy:
        """From configuration; unknown keys are an error (a misspelt rule must not be silently ignored)."""
        if not isinstance(d, Mapping):
            raise PromotionInputError(f"promotion policy must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PromotionInputError(f"promotion policy: unknown keys {unknown}; known keys are {sorted(known)}")
        kw = dict(d)
        for f in fields(cls):  # ints are fine for float settings (YAML writes 0 for 0.0)
            if f.type == "float" and f.name in kw and isinstance(kw[f.name], int) and not isinstance(kw[f.name], bool):
                kw[f.name] = float(kw[f.name])
        return cls(**kw)


@dataclass(frozen=True)
class TaskComparison:
    """One task's primary metric: challenger, champion (None without champion) and the paired bootstrap CI of
    ``challenger - champion`` in metric units (raw, not sign-adjusted)."""

    task: str
    metric: str
    higher_is_better: bool
    challenger: float | None
    champion: float | None = None
    diff_ci: tuple[float | None, float | None] | None = None

    def __post_init__(self) -> None:
        values = [("challenger", self.challenger), ("champion", self.champion)]
        if self.diff_ci is not None:
            if len(self.diff_ci) != 2:
                raise PromotionInputError(f"task {self.task!r}: diff_ci must be (lo, hi), got {self.diff_ci!r}")
            values += [("diff_ci lo", self.diff_ci[0]), ("diff_ci hi", self.diff_ci[1])]
        for name, v in values:
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))):
                raise PromotionInputError(f"task {self.task!r}: {name} must be a number or None, got {v!r}")
        if not isinstance(self.higher_is_better, (bool, np.bool_)):
            raise PromotionInputError(f"task {self.task!r}: higher_is_better must be a bool, "
                                      f"got {self.higher_is_better!r}")

    @property
    def sign(self) -> int:
        return 1 if self.higher_is_better else -1

    @property
    def signed_diff(self) -> float | None:
        """``s * (challenger - champion)``: positive = better."""
        c, b = _num(self.challenger), _num(self.champion)
        return None if c is None or b is None else self.sign * (c - b)

    @property
    def relative_improvement(self) -> float | None:
        d, b = self.signed_diff, _num(self.champion)
        return None if d is None or b is None else d / max(abs(b), _REL_FLOOR)

    @property
    def signed_ci(self) -> tuple[float, float] | None:
        if self.diff_ci is None:
            return None
        lo, hi = (_num(v) for v in self.diff_ci)
        if lo is None or hi is None:
            return None
        return (lo, hi) if self.higher_is_better else (-hi, -lo)

    def to_dict(self) -> dict[str, Any]:
        ci = None if self.diff_ci is None else [_num(v) for v in self.diff_ci]
        return {"task": self.task, "metric": self.metric, "higher_is_better": self.higher_is_better,
                "challenger": _num(self.challenger), "champion": _num(self.champion), "diff_ci": ci,
                "signed_diff": self.signed_diff, "relative_improvement": self.relative_improvement}


def comparisons_from_evaluation(challenger: Mapping[str, Mapping[str, Mapping[str, float]]],
                                champion: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
                                diff: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
                                ) -> list[TaskComparison]:
    """``TaskComparison`` of every task in ``TASKS`` from ``model.evaluate`` results: ``evaluate_predictions`` of
    challenger and champion and ``compare_predictions(labels, challenger, champion)`` for the paired CI. A task or
    metric absent from the results becomes a None value (so ``decide`` reports it as missing evidence)."""
    def value(res: Mapping | None, task: str, metric: str, key: str = "value") -> float | None:
        if res is None:
            return None
        v = res.get(task, {}).get(metric, {}).get(key)
        return _num(v) if v is not None else None

    out = []
    for spec in TASKS:
        m = spec.primary_metric
        ci = (value(diff, spec.name, m, "lo"), value(diff, spec.name, m, "hi")) if diff is not None else None
        out.append(TaskComparison(spec.name, m, HIGHER_IS_BETTER[m], value(challenger, spec.name, m),
                                  value(champion, spec.name, m), ci))
    return out


@dataclass(frozen=True)
class Approval:
    """A human approval record: who approved which challenger on which evidence, when."""

    approver: str
    approved_at: str  # ISO-8601 timestamp
    challenger_version: str
    evidence_sha256: str
    note: str = ""

    def __post_init__(self) -> None:
        for name in ("approver", "approved_at", "challenger_version", "evidence_sha256"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise PromotionInputError(f"Approval.{name} must be a non-empty string, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, str]:
        return {"approver": self.approver, "approved_at": self.approved_at,
                "challenger_version": self.challenger_version, "evidence_sha256": self.evidence_sha256,
                "note": self.note}


@dataclass(frozen=True)
class Decision:
    """``reasons``: for a reject every failed rule; otherwise the rules that held (and what is awaited).
    ``evidence``: canonical-JSON-ready record of what was decided on; ``evidence_sha256`` is what an approval
    must name."""

    outcome: Outcome
    reasons: list[str]
    evidence: dict[str, Any]
    evidence_sha256: str
    approval: Approval | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reasons": list(self.reasons), "evidence": self.evidence,
                "evidence_sha256": self.evidence_sha256,
                "approval": None if self.approval is None else self.approval.to_dict()}


def evidence_sha256(evidence: Mapping[str, Any]) -> str:
    """sha256 hex of canonical JSON (sorted keys, compact separators, UTF-8, NaN refused)."""
    try:
        text = json.dumps(evidence, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise PromotionInputError(f"evidence is not canonical JSON: {e}") from e
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------ validation


def _validate_tasks(tasks: Sequence[TaskComparison]) -> dict[str, TaskComparison]:
    by_task: dict[str, TaskComparison] = {}
    for tc in tasks:
        if not isinstance(tc, TaskComparison):
            raise PromotionInputError(f"tasks must be TaskComparison records, got {type(tc).__name__}")
        spec = TASKS_BY_NAME.get(tc.task)
        if spec is None:
            raise PromotionInputError(f"task comparison for unknown task {tc.task!r}")
        if tc.task in by_task:
            raise PromotionInputError(f"task {tc.task!r} is compared twice")
        if tc.metric != spec.primary_metric:
            raise PromotionInputError(f"task {tc.task!r}: compared on {tc.metric!r} but its primary metric is "
                                      f"{spec.primary_metric!r}")
        if tc.higher_is_better != HIGHER_IS_BETTER[spec.primary_metric]:
            raise PromotionInputError(f"task {tc.task!r}: higher_is_better={tc.higher_is_better} contradicts "
                                      f"{spec.primary_metric!r}")
        by_task[tc.task] = tc
    return by_task


def _validate_checks(checks: Mapping[str, Any]) -> dict[str, bool | None]:
    out: dict[str, bool | None] = {}
    for name, v in checks.items():
        if v is not None and not isinstance(v, (bool, np.bool_)):
            raise PromotionInputError(f"check {name!r}: result must be True, False or None (not evaluated), "
                                      f"got {v!r}")
        out[str(name)] = None if v is None else bool(v)
    return dict(sorted(out.items()))


def _validate_fairness(fairness: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for attr, f in fairness.items():
        if not isinstance(f, Mapping) or f.get("status") not in FAIRNESS_STATUSES:
            raise PromotionInputError(f"fairness[{attr!r}]: expected {{'status': one of {list(FAIRNESS_STATUSES)}, "
                                      f"'min_air': number or None}}, got {f!r}")
        min_air = f.get("min_air")
        if min_air is not None and not _finite(min_air):
            raise PromotionInputError(f"fairness[{attr!r}]: min_air must be a finite number or None, got {min_air!r}")
        champ = f.get("champion_min_air")
        if champ is not None and not _finite(champ):
            raise PromotionInputError(f"fairness[{attr!r}]: champion_min_air must be a finite number or None")
        out[str(attr)] = {"status": f["status"], "min_air": None if min_air is None else float(min_air)}
        if champ is not None:
            out[str(attr)]["champion_min_air"] = float(champ)
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------------ rules


def _check_reasons(policy: PromotionPolicy, checks: dict[str, bool | None]) -> tuple[list[str], list[str]]:
    """(failures, passes)."""
    if not policy.require_checks_green:
        return [], ["blocking checks not required by the policy"]
    if not checks:
        return ["no blocking check results were supplied (missing evidence)"], []
    fails = [f"blocking check {n!r} failed" for n, v in checks.items() if v is False]
    fails += [f"blocking check {n!r} was not evaluated (missing evidence)" for n, v in checks.items() if v is None]
    return fails, ([] if fails else [f"all {len(checks)} blocking checks are green"])


def _fairness_reasons(policy: PromotionPolicy, fairness: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    floor = policy.fairness_air_floor
    fails: list[str] = []
    attrs = list(dict.fromkeys([*policy.required_fairness_attributes, *fairness]))
    if not attrs:
        return ["no fairness evidence was supplied (missing evidence)"], []
    held, accepted = [], []
    for attr in attrs:
        f = fairness.get(attr)
        if f is None:
            if not policy.allow_insufficient_fairness:
                fails.append(f"fairness over {attr!r} was not evaluated (missing evidence)")
            else:
                accepted.append(f"fairness over {attr!r} was not evaluated: accepted because the policy sets "
                                "allow_insufficient_fairness")
            continue
        status, min_air = f["status"], f["min_air"]
        air = "n/a" if min_air is None else f"{min_air:.3f}"
        if policy.fairness_mode == "no_regression" and min_air is not None:
            champ = f.get("champion_min_air")
            if champ is None:
                accepted.append(f"fairness over {attr!r}: lowest adverse-impact ratio {air} ({status}); no champion "
                                "to compare with, recorded under the no_regression policy")
            elif min_air < champ - policy.fairness_regression_tolerance:
                fails.append(f"fairness over {attr!r} regressed: lowest adverse-impact ratio {air} vs the "
                             f"champion's {champ:.3f} (tolerance {policy.fairness_regression_tolerance:.3f})")
            else:
                accepted.append(f"fairness over {attr!r} did not regress: lowest adverse-impact ratio {air} vs the "
                                f"champion's {champ:.3f}")
            continue
        if status == FAIL:
            fails.append(f"fairness over {attr!r} failed the four-fifths rule (lowest adverse-impact ratio {air})")
        elif min_air is not None and min_air < floor:
            fails.append(f"fairness over {attr!r}: lowest adverse-impact ratio {air} is below the policy floor "
                         f"{floor:.2f}")
        elif status in (INSUFFICIENT, MISSING):
            if not policy.allow_insufficient_fairness:
                fails.append(f"fairness over {attr!r} has {status} (too few customers per group or no data); "
                             "the floor cannot be shown to hold")
            else:
                accepted.append(f"fairness over {attr!r} has {status}: accepted because the policy sets "
                                "allow_insufficient_fairness")
        elif min_air is None:
            fails.append(f"fairness over {attr!r} reports {status!r} without a lowest adverse-impact ratio "
                         "(missing evidence)")
        else:
            held.append((attr, min_air))
    passes = []
    if not fails and held:
        passes.append(f"fairness held over {', '.join(a for a, _ in held)} (lowest adverse-impact ratio "
                      f"{min(v for _, v in held):.3f} >= floor {floor:.2f})")
    return fails, passes + ([] if fails else accepted)


def _challenger_reasons(by_task: dict[str, TaskComparison], excluded: frozenset[str] = frozenset()) -> list[str]:
    fails = []
    for spec in TASKS:
        if spec.name in excluded:
            continue
        tc = by_task.get(spec.name)
        if tc is None:
            fails.append(f"task {spec.name!r}: no {spec.primary_metric} comparison was supplied (missing evidence)")
        elif _num(tc.challenger) is None:
            fails.append(f"task {spec.name!r}: the challenger's {spec.primary_metric} is missing (missing evidence)")
    return fails


def _metric_reasons(policy: PromotionPolicy, by_task: dict[str, TaskComparison],
                    excluded: frozenset[str] = frozenset()) -> tuple[list[str], list[str], dict[str, Any]]:
    fails = _challenger_reasons(by_task, excluded)
    passes: list[str] = []
    for spec in TASKS:
        tc = by_task.get(spec.name)
        if tc is not None and _num(tc.challenger) is not None and _num(tc.champion) is None:
            fails.append(f"task {spec.name!r}: the champion's {spec.primary_metric} is missing (missing evidence)")
    worst_task, worst, tol_fail = None, math.inf, False
    for spec in TASKS:
        tc = by_task.get(spec.name)
        d = None if tc is None else tc.signed_diff
        if d is None:
            continue
        tol = policy.tolerance(spec.name)
        if d < -tol:
            tol_fail = True
            fails.append(f"task {spec.name!r}: {tc.metric} {'fell' if tc.higher_is_better else 'rose'} from "
                         f"{tc.champion:.4f} to {tc.challenger:.4f} ({tc.challenger - tc.champion:+.4f}), worse than "
                         f"the tolerance of {tol:.4f}")
        if d < worst:
            worst_task, worst = spec.name, d
    rel = [by_task[s.name].relative_improvement for s in TASKS if s.name in by_task]
    rel = [r for s, r in zip([s for s in TASKS if s.name in by_task], rel) if s.name not in excluded]
    complete = len(rel) == len(TASKS) - len(excluded) and all(r is not None for r in rel)
    mean_rel = float(sum(rel) / len(rel)) if complete else None
    summary: dict[str, Any] = {"mean_relative_improvement": mean_rel, "worst_task": worst_task,
                               "worst_signed_diff": None if worst_task is None else worst}
    if mean_rel is not None:
        sentence = (f"mean relative improvement of the primary metrics over {len(rel)} tasks is {mean_rel:+.2%} "
                    f"(required: above {policy.min_mean_improvement:+.2%})")
        (passes if mean_rel > policy.min_mean_improvement else fails).append(sentence)
    if worst_task is not None and not tol_fail:
        passes.append(f"no task is worse than its tolerance (least favourable: {worst_task!r}, signed difference "
                      f"{worst:+.4f})")
    if policy.require_significance:
        sig_fails, sig_pass, better = [], [], []
        for spec in TASKS:
            tc = by_task.get(spec.name)
            ci = None if tc is None else tc.signed_ci
            if ci is None:
                sig_fails.append(f"task {spec.name!r}: no confidence interval of the {spec.primary_metric} difference "
                                 "(missing evidence for the significance rule)")
            elif ci[1] < 0:
                sig_fails.append(f"task {spec.name!r}: significantly worse, CI of the signed {tc.metric} difference "
                                 f"[{ci[0]:+.4f}, {ci[1]:+.4f}] lies below 0")
            elif ci[0] > 0:
                better.append(spec.name)
        if not sig_fails and not better:
            sig_fails.append("no task's CI of the signed primary-metric difference lies above 0: the improvement "
                             "is not significant")
        elif not sig_fails:
            sig_pass.append(f"significant improvement on {len(better)} task(s) ({', '.join(better)}); none "
                            "significantly worse")
        fails += sig_fails
        passes += sig_pass
    return fails, passes, summary


def decide(policy: PromotionPolicy, challenger_version: str, champion_version: str | None,
           tasks: Sequence[TaskComparison], checks: Mapping[str, Any], fairness: Mapping[str, Mapping[str, Any]],
           approval: Approval | None = None) -> Decision:
    """Apply ``policy`` to the evidence about ``challenger_version`` (module docstring)."""
    if not isinstance(policy, PromotionPolicy):
        raise PromotionInputError(f"policy must be a PromotionPolicy, got {type(policy).__name__}")
    if not isinstance(challenger_version, str) or not challenger_version.strip():
        raise PromotionInputError(f"challenger_version must be a non-empty string, got {challenger_version!r}")
    if champion_version is not None and champion_version == challenger_version:
        raise PromotionInputError(f"challenger {challenger_version!r} is already the champion")
    if approval is not None and not isinstance(approval, Approval):
        raise PromotionInputError(f"approval must be an Approval record, got {type(approval).__name__}")
    by_task = _validate_tasks(tasks)
    checks_n, fairness_n = _validate_checks(checks), _validate_fairness(fairness)

    bootstrap = champion_version is None
    excluded = frozenset(
        name for name, tc in by_task.items()
        if policy.allow_unevaluable_tasks and _num(tc.challenger) is None and _num(tc.champion) is None
    )
    check_fails, check_pass = _check_reasons(policy, checks_n)
    fair_fails, fair_pass = _fairness_reasons(policy, fairness_n)
    if bootstrap:
        metric_fails, metric_pass, summary = _challenger_reasons(by_task, excluded), [], {}
        if not metric_fails:
            metric_pass = [f"no champion exists: bootstrap rule (challenger measured on all "
                           f"{len(TASKS) - len(excluded)} evaluable tasks)"]
    else:
        metric_fails, metric_pass, summary = _metric_reasons(policy, by_task, excluded)
    metric_pass += [f"task {t!r} is not evaluable on this month (its metric is undefined for every bundle): "
                    "excluded because the policy sets allow_unevaluable_tasks" for t in sorted(excluded)]

    evidence = {
        "challenger_version": challenger_version, "champion_version": champion_version,
        "policy": policy.to_dict(),
        "tasks": [by_task[s.name].to_dict() for s in TASKS if s.name in by_task],
        "checks": checks_n, "fairness": fairness_n, "summary": summary,
    }
    sha = evidence_sha256(evidence)
    fails = metric_fails + check_fails + fair_fails
    if fails:
        return Decision("reject", fails, evidence, sha, approval)
    passes = metric_pass + check_pass + fair_pass
    success: Outcome = "bootstrap" if bootstrap else "promote"
    if not policy.require_approval:
        return Decision(success, passes, evidence, sha, approval)
    if approval is None:
        return Decision("await_approval", [*passes, f"every rule passes; an approval of evidence {sha[:12]}… for "
                                                    f"{challenger_version!r} is required before {success}"],
                        evidence, sha, None)
    if approval.challenger_version != challenger_version:
        return Decision("await_approval", [*passes, f"approval by {approval.approver!r} is for challenger "
                                                    f"{approval.challenger_version!r}, not {challenger_version!r}"],
                        evidence, sha, approval)
    if approval.evidence_sha256 != sha:
        reason = (f"approval is for different evidence: {approval.approver!r} approved "
                  f"{approval.evidence_sha256[:12]}…, the current evidence is {sha[:12]}…")
        return Decision("await_approval", [*passes, reason], evidence, sha, approval)
    return Decision(success, [*passes, f"approved by {approval.approver!r} at {approval.approved_at} for evidence "
                                       f"{sha[:12]}…"], evidence, sha, approval)

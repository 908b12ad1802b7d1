"""Challenger vs champion on the same out-of-time month (issue: challenger_evaluation).

Both bundles' *students* (what is served, not the teacher — reference item 16) score the challenger's test month
(t-1): for the champion, trained on earlier months, this month is out of time too. Per task: the primary metric
with bootstrap CIs for each bundle and the paired CI of the difference. Fairness: for each acquisition task the
customers a bundle would target (top ``TARGET_FRACTION`` by score) are compared over age band, gender and
province (adverse-impact ratio, statistical parity, equal opportunity against the observed acquisition), and the
deltas challenger − champion of the minimum AIR per attribute are reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ple_platform.core.governance.compliance.fairness import (
    PROTECTED_ATTRIBUTES,
    fairness_report,
    selection_from_scores,
    worst_status,
)
from ple_platform.core.model.evaluate import compare_predictions, evaluate_predictions
from ple_platform.core.tasks.spec import TASKS

ACQUISITION_TASKS = tuple(t.name for t in TASKS if t.name.startswith("will_acquire_"))
TARGET_FRACTION = 0.1  # the share of customers an acquisition campaign would target


def bundle_fairness(preds: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                    groups: Mapping[str, np.ndarray | None], n_boot: int, seed: int,
                    min_group_size: int) -> dict[str, Any]:
    """Per acquisition task the fairness report of the targeted customers, and a per-attribute summary
    (worst status, minimum AIR over the tasks) in the form ``promotion.decide`` consumes."""
    per_task = {}
    for task in ACQUISITION_TASKS:
        if task not in preds:
            continue
        selected = selection_from_scores(np.asarray(preds[task], dtype=float), TARGET_FRACTION)
        per_task[task] = fairness_report(selected, groups, labels.get(task), n_boot=n_boot, seed=seed,
                                         min_group_size=min_group_size)
    summary = {}
    for attr in PROTECTED_ATTRIBUTES:
        rows = [r.summary()[attr] for r in per_task.values() if attr in r.summary()]
        airs = [r["min_air"] for r in rows if r["min_air"] is not None]
        summary[attr] = {"status": worst_status([r["status"] for r in rows]),
                         "min_air": float(min(airs)) if airs else None}
    return {"per_task": {t: r.to_dict() for t, r in per_task.items()}, "summary": summary}


def evaluate_challenger(labels: Mapping[str, np.ndarray], challenger_preds: Mapping[str, np.ndarray],
                        champion_preds: Mapping[str, np.ndarray] | None, groups: Mapping[str, np.ndarray | None],
                        n_boot: int = 200, seed: int = 0, min_group_size: int = 50) -> dict[str, Any]:
    """The evidence the promotion rules read; JSON-ready."""
    out: dict[str, Any] = {
        "n_customers": int(len(next(iter(labels.values())))),
        "challenger": evaluate_predictions(labels, challenger_preds, n_boot=n_boot, seed=seed),
        "fairness": {"challenger": bundle_fairness(challenger_preds, labels, groups, n_boot, seed, min_group_size)},
        "champion": None,
        "difference": None,
    }
    if champion_preds is not None:
        out["champion"] = evaluate_predictions(labels, champion_preds, n_boot=n_boot, seed=seed)
        out["difference"] = compare_predictions(labels, challenger_preds, champion_preds, n_boot=n_boot, seed=seed)
        champ = bundle_fairness(champion_preds, labels, groups, n_boot, seed, min_group_size)
        out["fairness"]["champion"] = champ
        out["fairness"]["air_delta"] = {
            a: (None if v["min_air"] is None or champ["summary"][a]["min_air"] is None
                else v["min_air"] - champ["summary"][a]["min_air"])
            for a, v in out["fairness"]["challenger"]["summary"].items()
        }
    return out

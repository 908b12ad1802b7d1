"""Declarative automation: what materializes by itself when a new month lands (docs/operations.md, automation).

The conditions are evaluated by Dagster's implicit ``default_automation_condition_sensor`` (it targets every asset
that has one). Backfills of past months never cascade through these conditions: they only look at the newest
months, so history is rebuilt by an explicit backfill of the whole selection.
"""

from datetime import timedelta

import dagster as dg

# Features of month t follow their raw inputs: requested when a raw partition they read lands or is corrected,
# once none of those inputs is missing or still running. Newest month only.
FEATURES = dg.AutomationCondition.eager()

# Labels of month t read raw t and t+1, so the month a new raw month completes is the previous one. The window is
# widened from the newest month to the newest two: raw t requests labels t-1 (now measurable) and labels t (stored
# as "labels unavailable" until t+1 lands, and re-requested then). The window counts only whole partitions ending by
# the newest month's end: 62 days covers the two longest consecutive months and never three.
LABELS = dg.AutomationCondition.eager().replace(
    "in_latest_time_window",
    dg.AutomationCondition.in_latest_time_window(lookback_delta=timedelta(days=62)),
).with_label("eager (newest two months)")

# Model chain (teacher, evaluation, distillation, students, bundle, challenger evaluation): each month's model is
# built once, for the newest month, when all its inputs are complete. A later data correction re-materializes
# features but does not retrain by itself: retraining a month is a deliberate launch (GPU time, a new challenger).
# "Complete" means materialized, not merely requested: the automation sensor puts each partition key in its own
# run, so a teacher requested in the same tick as the previous month's labels could start before they are written.
MODEL_CHAIN = (
    dg.AutomationCondition.on_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested())
).with_label("on_missing, after inputs are written")

# Recommendations and reports follow the monthly cycle: a new month is due at most 35 days after the last one,
# warned after 32 (a month plus a two-day margin). Evaluated by the freshness daemon; shown on the asset page.
MONTHLY_OUTPUT_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(days=35), warn_window=timedelta(days=32))

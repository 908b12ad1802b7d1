"""Serving controls as evidence for the compliance report, read from what the server wrote to the audit log.

A control is reported only when its evidence exists (otherwise the report keeps saying "missing evidence"):
``opt_out_supported`` once a non-personalised fallback was served to an opted-out customer,
``kill_switch_available`` / ``kill_switch_engaged`` once the kill switch was operated (its last state), and
``ai_disclosure`` once responses were served, true only if every one carried the disclosure.
"""

from __future__ import annotations

from typing import Any

from ple_platform.core.governance.audit.log import AuditEvent, AuditLog


def serving_control_evidence(audit: AuditLog) -> dict[str, Any]:
    with audit.store.read() as con:
        # Aggregated in SQL: served entries can be millions; only counts leave the database.
        n, fallback, disclosed = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE json_extract_string(payload, '$.source') = 'fallback'), "
            "count(*) FILTER (WHERE json_extract(payload, '$.ai_disclosure')::BOOLEAN) FROM audit_log "
            "WHERE event = ?", [AuditEvent.SERVED.value]).fetchall()[0]
        last_kill = con.execute(
            "SELECT json_extract(payload, '$.on')::BOOLEAN FROM audit_log WHERE event = ? AND "
            "json_extract_string(payload, '$.action') = 'kill_switch' ORDER BY seq DESC LIMIT 1",
            [AuditEvent.SERVING.value]).fetchall()
    out: dict[str, Any] = {}
    if fallback:
        out["opt_out_supported"] = True
    if last_kill:
        out["kill_switch_available"], out["kill_switch_engaged"] = True, bool(last_kill[0][0])
    if n:
        out["ai_disclosure"] = disclosed == n
        out["served_responses"] = int(n)
    return out


def serving_health(audit: AuditLog, month: str) -> dict[str, Any] | None:
    """One serving month's health from the server's audit entries (``month``: the served snapshot's month, ISO):
    responses by source, kill-switch refusals, reloads and failed reloads, rewrite fallbacks and the in-process
    latency when recorded. ``None`` when nothing was served or refused for that month (no evidence, not zero).

    ``requests`` = responses + refusals; ``errors`` = requests that got no recommendation (kill-switch refusals;
    a response withheld because its audit entry failed leaves no entry and is counted only by ``/metrics``)."""
    served_ev, serving_ev = AuditEvent.SERVED.value, AuditEvent.SERVING.value
    with audit.store.read() as con:
        # Aggregated in SQL: only grouped counts leave the database.
        sources = con.execute(
            "SELECT json_extract_string(payload, '$.source') AS s, count(*) FROM audit_log WHERE event = ? AND "
            "json_extract_string(payload, '$.month') = ? GROUP BY s ORDER BY s", [served_ev, month]).fetchall()
        latency = con.execute(
            "SELECT count(l), quantile_cont(l, 0.5), quantile_cont(l, 0.99) FROM (SELECT "
            "TRY_CAST(json_extract(payload, '$.latency_ms') AS DOUBLE) AS l FROM audit_log WHERE event = ? AND "
            "json_extract_string(payload, '$.month') = ?)", [served_ev, month]).fetchall()[0]
        actions = dict(con.execute(
            "SELECT json_extract_string(payload, '$.action') AS a, count(*) FROM audit_log WHERE event = ? AND "
            "json_extract_string(payload, '$.month') = ? GROUP BY a", [serving_ev, month]).fetchall())
        levels = con.execute(
            "SELECT json_extract_string(r, '$.level') AS level, json_extract_string(r, '$.fallback') AS fb, count(*) "
            "FROM (SELECT unnest(CAST(json_extract(payload, '$.reason_rewrites[*]') AS JSON[])) AS r FROM audit_log "
            "WHERE event = ? AND json_extract_string(payload, '$.month') = ?) GROUP BY level, fb",
            [served_ev, month]).fetchall()
    served = sum(int(n) for _, n in sources)
    refused = int(actions.get("refused_kill_switch", 0))
    if not served and not refused:
        return None
    out: dict[str, Any] = {
        "month": month, "requests": served + refused, "served": served, "errors": refused,
        "refused_kill_switch": refused, "sources": {str(s): int(n) for s, n in sources},
        "reloads": int(actions.get("reload", 0)), "reload_failures": int(actions.get("reload_failed", 0)),
        "kill_switch_operations": int(actions.get("kill_switch", 0)),
        "reason_rewrites": {"l2": sum(int(n) for lv, _, n in levels if lv == "L2"),
                            "l1_fallbacks": {str(fb): int(n) for lv, fb, n in levels if lv != "L2"}},
    }
    if latency[0]:
        out["latency_ms"] = {"n": int(latency[0]), "p50": round(float(latency[1]), 3),
                             "p99": round(float(latency[2]), 3)}
    return out


# A month's verdicts: served responses' rewrites, then the batch's entries (params: served, month, batch, month).
_VERDICTS = ("WITH v AS (SELECT unnest(CAST(json_extract(payload, '$.reason_rewrites[*]') AS JSON[])) AS r FROM audit_log "
             "WHERE event = ? AND json_extract_string(payload, '$.month') = ? UNION ALL SELECT CAST(payload AS JSON) "
             "FROM audit_log WHERE event = ? AND json_extract_string(payload, '$.month') = ?) ")


def rewrite_verdicts(audit: AuditLog, month: str) -> dict[str, Any] | None:
    """The safety gate's verdicts of one month, from the audit log: the L2 rewrites of served responses
    (``reason_rewrites`` of ``served_recommendation`` entries of that snapshot month) and of the monthly batch
    (``reason_rewrite`` entries). ``None`` when there were none.

    ``passed``: L2 text shown (``cache_hits`` of them from the cache, ``rules_only`` of them without judge votes);
    ``failed_by_rule``: gate failures per rule id (a failure can name several); ``fallbacks``: every L1 fallback
    by its reason (``gate``, ``no_api_key``, ``timeout`` ...)."""
    served_ev, batch_ev = AuditEvent.SERVED.value, AuditEvent.REASON_REWRITE.value
    with audit.store.read() as con:
        params = [served_ev, month, batch_ev, month]
        groups = con.execute(
            _VERDICTS + "SELECT json_extract_string(r, '$.level') AS level, json_extract_string(r, '$.fallback') AS fb, "
            "count(*), count(*) FILTER (WHERE CAST(json_extract(r, '$.cache_hit') AS BOOLEAN)), "
            "count(*) FILTER (WHERE json_extract_string(r, '$.gate_mode') = 'rules only') "
            "FROM v GROUP BY level, fb", params).fetchall()
        rules = con.execute(
            _VERDICTS + "SELECT rule, count(*) FROM (SELECT unnest(json_extract_string(r, '$.rule_ids[*]')) "
            "AS rule FROM v WHERE json_extract_string(r, '$.fallback') = 'gate') GROUP BY rule ORDER BY rule",
            params).fetchall()
    total = sum(int(n) for _, _, n, _, _ in groups)
    if not total:
        return None
    l2 = [g for g in groups if g[0] == "L2"]
    return {"month": month, "verdicts": total, "passed": sum(int(g[2]) for g in l2),
            "cache_hits": sum(int(g[3]) for g in l2), "rules_only": sum(int(g[4]) for g in l2),
            "failed": sum(int(n) for lv, fb, n, _, _ in groups if fb == "gate"),
            "failed_by_rule": {str(r): int(n) for r, n in rules},
            "fallbacks": {str(fb): int(n) for lv, fb, n, _, _ in groups if lv != "L2"}}

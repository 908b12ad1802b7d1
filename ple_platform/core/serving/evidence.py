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

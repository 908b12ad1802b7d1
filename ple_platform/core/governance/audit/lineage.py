"""Lineage walk (SPEC §8): from a recommendation id or a model version back to the raw data and the runs.

``walk(registry, audit, con, store, ident)`` reads only recorded facts and recomputes what can be recomputed:

    recommendation (warehouse ``governance.recommendations``, or a served request id from its audit entry)
      -> bundle version + sha256 (registry; the sha recorded on the recommendation is compared with the registry's)
      -> students (task, route, sha256; the stored model text is re-hashed against the registry)
      -> teacher (uri, sha256, code_version; the stored checkpoint is re-hashed when present)
      -> train / validation / test months (+ the model month and, for a recommendation, the scored month)
      -> feature-group content hashes (as registered with the bundle)
      -> raw partitions: content hashes of ``raw.customers/holdings/transactions`` for those months, computed now
         (``warehouse.partition_content_hash``) and compared with the hash recorded at ingest when an audit
         ``ingest`` entry carries one (``{"table", "month", "content_hash"}``); otherwise "not recorded"
      -> Dagster run ids: the bundle's ``run_id`` and every ``run_id`` found in audit entries about the version,
         its students and the recommendation batch.

Nothing is inferred: a fact that cannot be found is ``None`` and ``render_text`` says "not recorded". An unknown
identifier raises ``LineageError`` (a ``ValueError``) naming it. Teacher checkpoints are content-addressed
(``teacher_checkpoint_key``: ``teacher/<model month>/<sha16>.pt``), so a registered bundle's checkpoint never
changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

import duckdb

from ple_platform.core.data.schema import RAW_TABLES
from ple_platform.core.distillation.bundle import student_model_key
from ple_platform.core.governance.audit.log import AuditEvent, AuditLog
from ple_platform.core.governance.promotion.registry import ModelBundle, Registry, UnknownVersionError
from ple_platform.core.model.teacher import teacher_checkpoint_key
from ple_platform.core.storage import ArtifactStore, sha256_bytes
from ple_platform.core.warehouse import partition_content_hash

RECOMMENDATIONS_TABLE = "governance.recommendations"


class LineageError(ValueError):
    """The identifier is neither a recommendation id nor a registered model version."""


def _recommendation(con: duckdb.DuckDBPyConnection, rec_id: str) -> dict[str, Any] | None:
    try:
        rows = con.execute(
            f"SELECT recommendation_id, month, customer_id, rank, product, score, task, bundle_version, bundle_sha256 "
            f"FROM {RECOMMENDATIONS_TABLE} WHERE recommendation_id = ?", [rec_id]).fetchall()
    except duckdb.CatalogException:
        return None
    if not rows:
        return None
    r = rows[0]
    return {"recommendation_id": r[0], "month": r[1].isoformat(), "customer_id": r[2], "rank": int(r[3]),
            "product": r[4], "score": float(r[5]), "task": r[6], "bundle_version": r[7], "bundle_sha256": r[8]}


def _served_request(audit: AuditLog, request_id: str) -> dict[str, Any] | None:
    """A response of the recommendation server, from its audit entry (subject ``request/<id>``)."""
    entries = audit.entries(event=AuditEvent.SERVED, subject=f"request/{request_id}")
    if not entries:
        return None
    p = entries[0].payload
    return {"request_id": request_id, "audit_seq": entries[0].seq, "month": p["month"],
            "customer_id": p["customer_id"], "source": p["source"], "items": p["items"],
            "bundle_version": p["version"], "bundle_sha256": p["bundle_sha256"],
            "snapshot_sha256": p["snapshot_sha256"]}


def _stored_sha(store: ArtifactStore | None, key: str) -> str | None:
    if store is None or not store.exists(key):
        return None
    return sha256_bytes(store.get(key))


def _ingest_hashes(audit: AuditLog) -> dict[tuple[str, str], str]:
    """{(table, month ISO): content hash} from audit ``ingest`` entries that record one."""
    out: dict[tuple[str, str], str] = {}
    for e in audit.entries(event=AuditEvent.INGEST):
        p = e.payload
        if isinstance(p.get("table"), str) and p.get("month") and isinstance(p.get("content_hash"), str):
            table = p["table"] if p["table"].startswith("raw.") else f"raw.{p['table']}"
            out[(table, str(p["month"])[:10])] = p["content_hash"]
    return out


def _raw_partitions(con: duckdb.DuckDBPyConnection, audit: AuditLog, months: Mapping[str, list[str]]
                    ) -> list[dict[str, Any]]:
    recorded = _ingest_hashes(audit)
    roles: dict[str, list[str]] = {}
    for role, ms in months.items():
        for m in ms:
            roles.setdefault(m, []).append(role)
    out = []
    for m in sorted(roles):
        for table in RAW_TABLES:
            qualified = f"raw.{table}"
            try:
                (n,) = con.execute(f"SELECT count(*) FROM {qualified} WHERE month = ?",
                                   [date.fromisoformat(m)]).fetchall()[0]
                current = partition_content_hash(con, qualified, date.fromisoformat(m)) if n else None
            except duckdb.CatalogException:
                n, current = 0, None
            rec = recorded.get((qualified, m))
            out.append({"table": qualified, "month": m, "roles": roles[m], "rows": int(n), "content_hash": current,
                        "recorded_hash": rec, "matches_ingest": None if rec is None or current is None
                        else rec == current})
    return out


def _run_ids(audit: AuditLog, bundle: ModelBundle, rec_month: str | None) -> list[dict[str, Any]]:
    subjects = [bundle.version, *(f"student_{t}/{bundle.model_month.isoformat()}" for t in bundle.students)]
    if rec_month is not None:
        subjects.append(f"recommendations/{rec_month}")
    found = [{"source": "registry", "what": "model_bundle", "run_id": bundle.run_id}] if bundle.run_id else []
    for subject in subjects:
        for e in audit.entries(subject=subject):
            rid = e.payload.get("run_id")
            if isinstance(rid, str) and rid:
                found.append({"source": f"audit #{e.seq}", "what": f"{e.event.value} {subject}", "run_id": rid})
            elif isinstance(e.actor, str) and e.actor.startswith("dagster-run:"):
                found.append({"source": f"audit #{e.seq}", "what": f"{e.event.value} {subject}",
                              "run_id": e.actor.split(":", 1)[1]})
    return found


def walk(registry: Registry, audit: AuditLog, con: duckdb.DuckDBPyConnection, store: ArtifactStore | None,
         ident: str) -> dict[str, Any]:
    """The lineage chain of a recommendation id or model version as a JSON-ready dict (module docstring)."""
    if not isinstance(ident, str) or not ident.strip():
        raise LineageError(f"lineage: identifier must be a non-empty string, got {ident!r}")
    ident = ident.strip()
    rec = None
    try:
        bundle = registry.get(ident)
        kind = "model_version"
    except UnknownVersionError:
        rec = _recommendation(con, ident) or _served_request(audit, ident)
        if rec is None:
            raise LineageError(f"lineage: {ident!r} is neither a recommendation id in {RECOMMENDATIONS_TABLE} nor a "
                               "registered model version") from None
        try:
            bundle = registry.get(rec["bundle_version"])
        except UnknownVersionError:
            raise LineageError(f"lineage: recommendation {ident!r} names bundle {rec['bundle_version']!r}, which "
                               "the registry does not know") from None
        kind = "recommendation"
    if rec is not None:
        rec["bundle_sha256_matches_registry"] = rec["bundle_sha256"] == bundle.bundle_sha256

    students = []
    for task, art in sorted(bundle.students.items()):
        stored = _stored_sha(store, student_model_key(bundle.model_month, task, art.sha256))
        students.append({"task": task, "route": getattr(art.route, "value", art.route), "sha256": art.sha256,
                         "uri": art.uri, "stored_sha256_matches": None if stored is None else stored == art.sha256})
    t_stored = _stored_sha(store, teacher_checkpoint_key(bundle.model_month, bundle.teacher_sha256))
    months = {"train": [m.isoformat() for m in bundle.train_months],
              "validation": [bundle.validation_month.isoformat()], "test": [bundle.test_month.isoformat()],
              "model": [bundle.model_month.isoformat()]}
    if rec is not None:
        months["scored"] = [rec["month"]]
    return {
        "ident": ident,
        "kind": kind,
        "recommendation": rec,
        "bundle": {"version": bundle.version, "bundle_sha256": bundle.bundle_sha256,
                   "status": getattr(bundle.status, "value", bundle.status),
                   "model_month": bundle.model_month.isoformat(), "run_id": bundle.run_id},
        "students": students,
        "teacher": {"uri": bundle.teacher_uri, "sha256": bundle.teacher_sha256, "code_version": bundle.code_version,
                    "stored_sha256_matches": None if t_stored is None else t_stored == bundle.teacher_sha256},
        "months": {"train": months["train"], "validation": bundle.validation_month.isoformat(),
                   "test": bundle.test_month.isoformat(), "model": bundle.model_month.isoformat(),
                   "scored": rec["month"] if rec else None},
        "feature_hashes": dict(bundle.feature_hashes),
        "raw_partitions": _raw_partitions(con, audit, months),
        "run_ids": _run_ids(audit, bundle, rec["month"] if rec else None),
    }


def _ok(flag: bool | None) -> str:
    return "not checked (not stored)" if flag is None else "verified" if flag else "MISMATCH"


def render_text(chain: Mapping[str, Any]) -> str:
    """A readable multi-line rendering of ``walk``'s result, one link of the chain per block."""
    lines: list[str] = []
    rec = chain.get("recommendation")
    if rec and "request_id" in rec:
        lines += [f"served request {rec['request_id']} (audit entry {rec['audit_seq']}, source {rec['source']})",
                  f"  customer {rec['customer_id']}  month {rec['month']}  products "
                  + ", ".join(p for p, _ in rec["items"]),
                  f"  bundle sha256 on the response: {_ok(rec.get('bundle_sha256_matches_registry'))}"]
    elif rec:
        lines += [f"recommendation {rec['recommendation_id']}",
                  f"  customer {rec['customer_id']}  month {rec['month']}  rank {rec['rank']}  product {rec['product']}"
                  f"  (task {rec['task']}, score {rec['score']:.4f})",
                  f"  bundle sha256 on the recommendation: {_ok(rec.get('bundle_sha256_matches_registry'))}"]
    b = chain["bundle"]
    lines += [f"model version {b['version']}  [{b['status']}]",
              f"  bundle sha256 {b['bundle_sha256']}", f"  model month {b['model_month']}",
              f"  registered by run {b['run_id'] or 'not recorded'}", "students:"]
    for s in chain["students"]:
        lines.append(f"  {s['task']:<28} {s['route']:<8} sha256 {s['sha256'][:16]}…  stored model "
                     f"{_ok(s['stored_sha256_matches'])}")
    t = chain["teacher"]
    lines += ["teacher:", f"  uri {t['uri']}", f"  sha256 {t['sha256']}  stored checkpoint {_ok(t['stored_sha256_matches'])}",
              f"  code_version {t['code_version']}"]
    m = chain["months"]
    lines += ["months:", f"  train {', '.join(m['train'])}", f"  validation {m['validation']}  test {m['test']}  "
              f"model {m['model']}" + (f"  scored {m['scored']}" if m.get("scored") else "")]
    lines.append("feature-group content hashes (registered with the bundle):")
    lines += [f"  {g:<28} {h}" for g, h in sorted(chain["feature_hashes"].items())] or ["  not recorded"]
    lines.append("raw partitions (content hash now | at ingest):")
    for p in chain["raw_partitions"]:
        rec_h = p["recorded_hash"]
        cmp = "not recorded at ingest" if rec_h is None else ("matches ingest" if p["matches_ingest"]
                                                              else f"DIFFERS from ingest {rec_h[:16]}…")
        lines.append(f"  {p['table']:<18} {p['month']} ({'/'.join(p['roles'])}, {p['rows']} rows) "
                     f"{p['content_hash'] or 'absent'} | {cmp}")
    lines.append("Dagster runs:")
    lines += [f"  {r['run_id']}  ({r['what']}, {r['source']})" for r in chain["run_ids"]] or ["  not recorded"]
    return "\n".join(lines)

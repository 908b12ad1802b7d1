"""The recommendation API (``ple-platform serve``): a thin FastAPI app over ``engine.recommend``.

Endpoints: ``POST /v1/recommendations``, ``GET /v1/model``, ``/healthz``, ``/readyz``, ``/metrics``
(Prometheus text), ``/openapi.json``, ``/ui`` (read-only banker/auditor page), and, with
``Authorization: Bearer $PLE_SERVING_ADMIN_TOKEN``, ``POST /admin/reload`` and ``POST /admin/kill-switch``.

Errors are JSON ``{"error", "detail", "request_id"}``: 422 schema, 400 out of range, 404 unknown customer, 413
body over ``MAX_BODY_BYTES``, 503 no champion / kill switch (with ``Retry-After``) / audit log unavailable; an
unexpected error is a 500 without a traceback.

Every response to ``/v1/recommendations`` (including kill-switch refusals) is audit-logged before it is
returned, through ``AuditBatcher``: requests queue their entry and wait; one writer thread commits everything
queued (up to 256 entries) in one ``append_many`` transaction of the single HMAC chain.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import html
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr

from ple_platform.core.governance.audit.log import AuditEvent, AuditLog
from ple_platform.core.reasons_llm.config import LLMConfig
from ple_platform.core.reasons_llm.rewrite import Rewriter
from ple_platform.core.recommend.ranking import eligibility
from ple_platform.core.serving.engine import RecommendationRequest, RequestError, UnknownCustomerError, recommend
from ple_platform.core.serving.rewrite import rewrite_items
from ple_platform.core.serving.state import NoChampionError, ServingState

MAX_BODY_BYTES = 16 * 1024
ACTOR = "serving"
RETRY_AFTER_S = 30
ADMIN_TOKEN_ENV = "PLE_SERVING_ADMIN_TOKEN"
KILL_SWITCH_ENV = "PLE_SERVING_KILL_SWITCH"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RecommendationBody(BaseModel):
    """A recommendation request. ``k`` is range-checked by the server (400), not the schema."""

    model_config = ConfigDict(extra="forbid")
    customer_id: StrictStr
    k: StrictInt = 7
    lang: Literal["en", "ko"] = "en"
    explain: StrictBool = True
    fresh: StrictBool = False
    rewrite: StrictBool = False  # L2: reasons rewritten by the LLM behind the safety gate, L1 on any failure


class KillSwitchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: StrictBool
    reason: StrictStr = ""


# ------------------------------------------------------------------------------------------ audit group commit


@dataclass
class _Pending:
    item: tuple
    done: threading.Event = field(default_factory=threading.Event)
    seq: int | None = None
    error: BaseException | None = None


class AuditUnavailable(RuntimeError):
    """The audit entry of a response could not be made durable: the response is withheld (fail closed)."""


class AuditBatcher:
    """Group commit of audit entries: ``submit`` blocks until its entry is durable (one writer thread).

    A group is whatever queued while the previous commit ran (up to ``max_batch``), optionally topped up for
    ``max_wait_s``. The default waits 0 s: a lone request commits at once, and under load the commit itself is
    the window in which the next group gathers.

    The writer thread keeps one ``AuditLog.writer()`` session (the governance file attached and its exclusive
    lock held) while entries keep coming, so a group costs one DuckDB commit, not a re-attach and checkpoint.
    It closes the session after ``idle_release_s`` without entries, as soon as another thread of this process
    waits for the store (a reload reading the registry), and after ``max_hold_s`` of continuous load; after the
    last two it stays off the lock for ``yield_s`` (longer than a waiter's poll interval). Other processes
    (Dagster runs, the CLI) therefore wait at most about ``max_hold_s`` for the governance store."""

    def __init__(self, audit: AuditLog, max_batch: int = 256, max_wait_s: float = 0.0,
                 timeout_s: float = 30.0, idle_release_s: float = 0.05, max_hold_s: float = 5.0,
                 yield_s: float = 0.02) -> None:
        self.audit, self.max_batch, self.max_wait_s, self.timeout_s = audit, max_batch, max_wait_s, timeout_s
        self.idle_release_s, self.max_hold_s, self.yield_s = idle_release_s, max_hold_s, yield_s
        self._q: queue.Queue[_Pending | None] = queue.Queue()
        self.transactions = self.entries = self.sessions = 0
        self._thread = threading.Thread(target=self._run, name="audit-group-commit", daemon=True)
        self._thread.start()

    def submit(self, event: AuditEvent, subject: str, payload: dict) -> int:
        p = _Pending((event, subject, payload, ACTOR))
        self._q.put(p)
        if not p.done.wait(self.timeout_s):
            raise AuditUnavailable(f"audit entry not committed within {self.timeout_s:g} s")
        if p.error is not None:
            raise AuditUnavailable(f"audit log unavailable: {p.error}") from p.error
        return int(p.seq)  # type: ignore[arg-type]

    def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """``first`` plus what is queued (bounded by ``max_batch`` and ``max_wait_s``); True once closing."""
        group, deadline = [first], time.monotonic() + self.max_wait_s
        while len(group) < self.max_batch:
            try:
                nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if nxt is None:
                return group, True
            group.append(nxt)
        return group, False

    def _commit(self, writer, group: list[_Pending]) -> bool:
        try:
            entries = writer.append_many([p.item for p in group])
        except BaseException as err:  # noqa: BLE001 - every waiter must be released with the cause
            for p in group:
                p.error = err
                p.done.set()
            return False
        for p, e in zip(group, entries):
            p.seq = e.seq
        self.transactions += 1
        self.entries += len(group)
        for p in group:
            p.done.set()
        return True

    def _run(self) -> None:
        closing = False
        while not closing:
            first = self._q.get()
            if first is None:
                return
            group, closing = self._gather(first)
            yield_lock = False
            try:
                with self.audit.writer() as writer:
                    self.sessions += 1
                    opened = time.monotonic()
                    # A failed commit ends the session: the next group starts from a fresh attachment.
                    while self._commit(writer, group) and not closing:
                        if time.monotonic() - opened > self.max_hold_s or self.audit.store.threads_waiting():
                            yield_lock = True
                            break
                        try:
                            nxt = self._q.get(timeout=self.idle_release_s)
                        except queue.Empty:
                            break
                        if nxt is None:
                            closing = True
                            break
                        group, closing = self._gather(nxt)
            except BaseException as err:  # noqa: BLE001 - opening (lock timeout, broken head) or closing failed
                for p in group:
                    if not p.done.is_set():
                        p.error = err
                        p.done.set()
            if yield_lock:
                time.sleep(self.yield_s)  # let a process or thread waiting for the governance lock in

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)


# ------------------------------------------------------------------------------------------ metrics


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.hist: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def observe(self, source: str, seconds: float) -> None:
        with self._lock:
            h = self.hist.setdefault(source, [0] * (len(_BUCKETS) + 1))
            h[next((i for i, b in enumerate(_BUCKETS) if seconds <= b), len(_BUCKETS))] += 1
            self.sums[source] = self.sums.get(source, 0.0) + seconds

    def text(self) -> str:
        with self._lock:
            lines = ["# TYPE ple_serving_request_seconds histogram"]
            for src, h in sorted(self.hist.items()):
                cum = 0
                for b, c in zip((*_BUCKETS, "+Inf"), h):
                    cum += c
                    lines.append(f'ple_serving_request_seconds_bucket{{source="{src}",le="{b}"}} {cum}')
                lines.append(f'ple_serving_request_seconds_sum{{source="{src}"}} {self.sums[src]:.6f}')
                lines.append(f'ple_serving_request_seconds_count{{source="{src}"}} {cum}')
            lines.append("# TYPE ple_serving_events_total counter")
            for name, c in sorted(self.counts.items()):
                lines.append(f'ple_serving_events_total{{event="{name}"}} {c}')
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ state holder


class StateHolder:
    """The one state reference, replaced whole by ``reload`` (reloads are serialised; requests never wait)."""

    def __init__(self, loader: Callable[[], ServingState], audit: AuditBatcher, metrics: Metrics) -> None:
        self._loader, self._audit, self._metrics = loader, audit, metrics
        self._reload_lock = threading.Lock()
        self.state: ServingState | None = None
        self.last_error: str | None = None
        self.last_reload_at: float | None = None

    def reload(self, trigger: str) -> dict[str, Any]:
        with self._reload_lock:
            old = self.state
            try:
                new = self._loader()
            except Exception as err:  # noqa: BLE001 - any failure keeps the old state; the cause is recorded
                self.last_error = f"{type(err).__name__}: {err}"
                self._metrics.inc("reload_failed")
                self._audit.submit(AuditEvent.SERVING, "serving/reload", {
                    "action": "reload_failed", "trigger": trigger, "error": self.last_error,
                    "serving_version": old.version if old else None, "month": old.month.isoformat() if old else None})
                return {"reloaded": False, "error": self.last_error, "serving_version": old.version if old else None}
            changed = old is None or (old.version, old.snapshot_sha256) != (new.version, new.snapshot_sha256)
            self.state, self.last_error, self.last_reload_at = new, None, time.time()
            self._metrics.inc("reload")
            self._audit.submit(AuditEvent.SERVING, "serving/reload", {
                "action": "reload", "trigger": trigger, "version": new.version,
                "bundle_sha256": new.bundle.bundle_sha256, "snapshot_sha256": new.snapshot_sha256,
                "previous_version": old.version if old else None, "changed": changed,
                "month": new.month.isoformat()})
            return {"reloaded": True, "changed": changed, "serving_version": new.version}


class Watcher:
    """Polls ``fingerprint()`` (registry champion + snapshot pointer) and reloads when it changes."""

    def __init__(self, holder: StateHolder, fingerprint: Callable[[], Any], interval_s: float) -> None:
        self.holder, self.fingerprint, self.interval_s = holder, fingerprint, interval_s
        self._stop = threading.Event()
        self._last = None
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)

    def start(self, initial: Any) -> None:
        self._last = initial
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                fp = self.fingerprint()
            except Exception:  # noqa: BLE001 - a registry hiccup must not kill the watcher; retried next poll
                continue
            if fp != self._last:
                self._last = fp
                self.holder.reload("watcher")

    def stop(self) -> None:
        self._stop.set()


# ------------------------------------------------------------------------------------------ app


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, by Content-Length or while a chunked body streams."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._reject(send)
        if length is not None:
            return await self.app(scope, receive, send)
        # No Content-Length (chunked): read the body here, bounded, and replay it (FastAPI would turn an error
        # raised while it reads the body into a 400).
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                return await self._reject(send)
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send) -> None:
        body = json.dumps({"error": "payload_too_large", "detail": f"request body over {self.max_bytes} bytes",
                           "request_id": None}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _error(status: int, error: str, detail: Any, request_id: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, "request_id": request_id}, status_code=status,
                        headers=headers)


def create_app(loader: Callable[[], ServingState], audit: AuditLog, *, fingerprint: Callable[[], Any] | None = None,
               poll_interval_s: float = 0.0, admin_token: str | None = None,
               kill_switch: bool | None = None) -> FastAPI:
    """The app. ``loader`` builds a verified state (``state.load_state``); ``fingerprint`` (with
    ``poll_interval_s`` > 0) drives the hot-swap watcher. The admin token and initial kill switch default to
    ``$PLE_SERVING_ADMIN_TOKEN`` / ``$PLE_SERVING_KILL_SWITCH``; without a token the admin endpoints are off."""
    token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV) or None
    metrics = Metrics()
    batcher = AuditBatcher(audit)
    holder = StateHolder(loader, batcher, metrics)
    rewriter = Rewriter(LLMConfig.from_env())  # no key: every rewrite falls back to L1 ("no_api_key")
    controls = {"kill_switch": (os.environ.get(KILL_SWITCH_ENV, "0").lower() in ("1", "true", "yes"))
                if kill_switch is None else kill_switch, "kill_reason": ""}
    try:
        holder.state = loader()
    except NoChampionError as err:
        holder.last_error = str(err)  # served as 503 until a reload finds a champion
    watcher = None
    if fingerprint is not None and poll_interval_s > 0:
        watcher = Watcher(holder, fingerprint, poll_interval_s)
        try:
            initial = fingerprint()
        except Exception:  # noqa: BLE001
            initial = None
        watcher.start(initial)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        if watcher is not None:
            watcher.stop()
        batcher.close()

    app = FastAPI(title="ple-platform recommendations", version="1", lifespan=lifespan,
                  description="Top-k product recommendations with reasons (EN/KO) from the champion bundle.")
    app.state.holder, app.state.metrics, app.state.batcher = holder, metrics, batcher

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return _error(422, "invalid_request", detail)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        metrics.inc("internal_error")
        return _error(500, "internal_error", f"{type(exc).__name__} (see the server log)")

    def _admin(request: Request) -> JSONResponse | None:
        if token is None:
            return _error(403, "admin_disabled", f"set {ADMIN_TOKEN_ENV} to enable admin endpoints")
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            return _error(401, "unauthorized", "admin endpoints need Authorization: Bearer <admin token>",
                          headers={"WWW-Authenticate": "Bearer"})
        return None

    @app.post("/v1/recommendations")
    def recommendations(body: RecommendationBody) -> JSONResponse:
        """Top-k products not already held, with reasons; batch row, online scoring or opt-out fallback."""
        t0 = time.perf_counter()
        request_id = uuid.uuid4().hex[:20]
        state = holder.state  # one reference for the whole request: never two versions
        if controls["kill_switch"]:
            metrics.inc("kill_switch_refusal")
            batcher.submit(AuditEvent.SERVING, f"request/{request_id}", {
                "action": "refused_kill_switch", "customer_id": body.customer_id, "reason": controls["kill_reason"],
                "month": state.month.isoformat() if state is not None else None})
            return _error(503, "kill_switch", "recommendations are switched off", request_id,
                          headers={"Retry-After": str(RETRY_AFTER_S)})
        if state is None:
            return _error(503, "no_champion", holder.last_error or "no champion loaded", request_id,
                          headers={"Retry-After": str(RETRY_AFTER_S)})
        req = RecommendationRequest(body.customer_id, body.k, body.lang, body.explain, body.fresh)
        try:
            out = recommend(state, req)
        except RequestError as err:
            return _error(400, "out_of_range", str(err), request_id)
        except UnknownCustomerError as err:
            metrics.inc("unknown_customer")
            return _error(404, "unknown_customer", str(err), request_id)
        out = {"request_id": request_id, **out}
        rewrites: list[dict] = []
        if body.rewrite and out["personalised"]:
            row = state.row_of[req.customer_id]
            eligible, _ = eligibility(state.suitability[row:row + 1])
            out["items"], rewrites = rewrite_items(rewriter, out["items"], req.lang, eligible[0])
        try:
            seq = batcher.submit(AuditEvent.SERVED, f"request/{request_id}", {
                "customer_id": req.customer_id, "source": out["source"], "version": state.version,
                "bundle_sha256": state.bundle.bundle_sha256, "snapshot_sha256": state.snapshot_sha256,
                "month": out["month"], "k": req.k, "lang": req.lang, "ai_disclosure": bool(out["ai_disclosure"]),
                "items": [[i["product"], round(i["score"], 6)] for i in out["items"]],
                "latency_ms": round((time.perf_counter() - t0) * 1e3, 3),  # before the audit commit
                **({"reason_rewrites": rewrites} if rewrites else {})})
        except AuditUnavailable as err:
            metrics.inc("audit_unavailable")
            return _error(503, "audit_unavailable", str(err), request_id, headers={"Retry-After": "5"})
        out["audit_seq"] = seq
        metrics.inc(f"source_{out['source']}")
        metrics.observe(out["source"], time.perf_counter() - t0)
        return JSONResponse(out)

    @app.get("/v1/model")
    def model() -> dict:
        """The served bundle, snapshot and students, the kill switch and the last reload error."""
        s = holder.state
        return {"serving": s.describe() if s else None, "kill_switch": controls["kill_switch"],
                "last_reload_error": holder.last_error, "last_reload_at": holder.last_reload_at}

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: 200 when a verified state is loaded and the kill switch is off, else 503."""
        s = holder.state
        body = {"ready": s is not None and not controls["kill_switch"], "version": s.version if s else None,
                "kill_switch": controls["kill_switch"], "last_reload_error": holder.last_error}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics_text() -> str:
        """Prometheus text: latency histogram per source, event counters, audit group commits."""
        extra = (f"ple_serving_audit_transactions_total {batcher.transactions}\n"
                 f"ple_serving_audit_entries_total {batcher.entries}\n"
                 f"ple_serving_audit_sessions_total {batcher.sessions}\n")
        return metrics.text() + extra

    @app.post("/admin/reload")
    def admin_reload(request: Request) -> JSONResponse:
        """Build and verify the champion's state off the request path, then swap it in (admin token)."""
        denied = _admin(request)
        if denied is not None:
            return denied
        result = holder.reload("admin")
        return JSONResponse(result, status_code=200 if result["reloaded"] else 409)

    @app.post("/admin/kill-switch")
    def admin_kill_switch(body: KillSwitchBody, request: Request) -> JSONResponse:
        """Switch recommendations off (503 + Retry-After) or back on (admin token); recorded in the audit log."""
        denied = _admin(request)
        if denied is not None:
            return denied
        controls["kill_switch"], controls["kill_reason"] = body.on, body.reason
        s = holder.state
        batcher.submit(AuditEvent.SERVING, "serving/kill-switch", {"action": "kill_switch", "on": body.on,
                                                                    "reason": body.reason,
                                                                    "month": s.month.isoformat() if s else None})
        metrics.inc("kill_switch_on" if body.on else "kill_switch_off")
        return JSONResponse({"kill_switch": body.on})

    @app.get("/ui", response_class=HTMLResponse)
    def ui() -> str:
        """Read-only banker/auditor page: look up a customer, see the top-k with EN/KO reasons."""
        return _UI_HTML.replace("{{TITLE}}", html.escape(app.title))

    return app


_UI_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{TITLE}}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:60em}td,th{border-bottom:1px solid #ddd;padding:.3em;
text-align:left;vertical-align:top}.err{color:#a00}</style></head><body>
<h1>Recommendations (read-only)</h1><p id="model">loading model…</p>
<form id="f"><label>Customer <input id="cid" name="cid" required></label>
<label>k <input id="k" type="number" min="1" max="24" value="7"></label>
<label>Language <select id="lang"><option>en</option><option>ko</option></select></label>
<button id="go" type="submit">Look up</button></form>
<p id="meta"></p><table id="items"><thead><tr><th>#</th><th>product</th><th>score</th><th>task</th>
<th>reason</th><th>lineage</th></tr></thead><tbody></tbody></table><p id="disclosure"></p>
<script>
const $ = (id) => document.getElementById(id);
fetch('/v1/model').then(r => r.json()).then(m => { $('model').textContent = m.serving ?
  `model ${m.serving.version} (bundle ${m.serving.bundle_sha256.slice(0,12)}…), month ${m.serving.month}` :
  'no model loaded'; });
$('f').addEventListener('submit', async (e) => {
  e.preventDefault();
  const body = {customer_id: $('cid').value, k: parseInt($('k').value, 10), lang: $('lang').value};
  const r = await fetch('/v1/recommendations', {method: 'POST', headers: {'content-type': 'application/json'},
                                                body: JSON.stringify(body)});
  const j = await r.json(); const tb = $('items').querySelector('tbody'); tb.innerHTML = '';
  if (!r.ok) { $('meta').className = 'err'; $('meta').textContent = `${r.status} ${j.error}: ${j.detail}`; return; }
  $('meta').className = ''; $('meta').textContent = `source ${j.source}, request ${j.request_id}, model ${j.model_version}`;
  for (const it of j.items) {
    const tr = document.createElement('tr');
    const lin = `bundle ${j.model_version} → students (${it.task || 'priors'}) → month ${j.month}` +
                (it.recommendation_id ? ` · batch id ${it.recommendation_id}` : '') + ` · request ${j.request_id}`;
    for (const v of [it.rank, it.product, it.score.toFixed(4), it.task || '', it.reason || '', lin]) {
      const td = document.createElement('td'); td.textContent = v; tr.appendChild(td); }
    tr.className = 'item'; tb.appendChild(tr); }
  $('disclosure').textContent = j.ai_disclosure;
});
</script></body></html>"""

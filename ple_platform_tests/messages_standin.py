"""A local stand-in for the Anthropic Messages API, for tests: a real threaded HTTP server on 127.0.0.1 that the
real ``anthropic`` SDK talks to over the wire (``base_url`` pointed at it, any key), so no test needs an API key or
the internet.

It answers ``POST /v1/messages`` in the wire format the SDK parses: a JSON ``message`` object, or with
``"stream": true`` a ``text/event-stream`` of message_start → content_block_start → ping → content_block_delta* →
content_block_stop → message_delta → message_stop. Replies are scripted per test (``StandIn.script``: a queue of
``Reply`` consumed one per request, then ``StandIn.default``, a ``Reply`` or a function of the request body), so a
test can serve a good rewrite, a guaranteed-return claim, PII, the wrong language, an injection echo, a refusal, a
529 overloaded error or a reply slower than the client's timeout. Every request is recorded (path, headers, JSON
body) in ``StandIn.requests`` so tests can check what the client sent (no customer ids, the prompt version, ...).

The SDK authenticates with ``authorization: Bearer <key>`` or ``x-api-key``; either is accepted, a request with
neither gets the API's 401 ``authentication_error``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
               500: "api_error", 529: "overloaded_error"}


@dataclass(frozen=True)
class Reply:
    """One scripted answer. ``status`` != 200 sends the API's error envelope with ``error_type``; ``delay_s``
    sleeps before anything is written (a slow upstream); ``stop_reason="refusal"`` is the API's refusal."""

    text: str = ""
    status: int = 200
    delay_s: float = 0.0
    stop_reason: str = "end_turn"
    error_type: str | None = None


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class StandIn:
    """The running server: ``url`` is its base URL (``http://127.0.0.1:<port>``)."""

    default: Reply | Callable[[dict[str, Any]], Reply] = field(default_factory=lambda: Reply("OK."))
    script: deque[Reply] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def push(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self.script.extend(replies)

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self.script:
                return self.script.popleft()
        return self.default(body) if callable(self.default) else self.default

    def __enter__(self) -> "StandIn":
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    return self._error(400, "invalid_request_error", "body is not JSON")
                with standin._lock:
                    standin.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                     body))
                if self.path.split("?")[0] != "/v1/messages":
                    return self._error(404, "not_found_error", f"no route {self.path}")
                if not (self.headers.get("x-api-key") or self.headers.get("authorization", "").startswith("Bearer ")):
                    return self._error(401, "authentication_error", "missing API key")
                missing = [k for k in ("model", "max_tokens", "messages") if k not in body]
                if missing:
                    return self._error(400, "invalid_request_error", f"missing fields: {missing}")
                reply = standin._next(body)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                try:
                    if reply.status != 200:
                        return self._error(reply.status, reply.error_type or ERROR_TYPES.get(reply.status, "api_error"),
                                           f"scripted {reply.status}")
                    if body.get("stream"):
                        return self._stream(body, reply)
                    self._json(200, _message(body, reply))
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): nothing to do
                    pass

            def _json(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_standin_{len(standin.requests)}")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, kind: str, message: str) -> None:
                # x-should-retry: false keeps the SDK from retrying a scripted error behind the test's back.
                self._json(status, {"type": "error", "error": {"type": kind, "message": message}},
                           {"x-should-retry": "false"})

            def _stream(self, body: dict[str, Any], reply: Reply) -> None:
                msg = _message(body, reply)
                text = reply.text
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")  # the stream ends when the socket closes
                self.end_headers()
                self.close_connection = True
                start = dict(msg, content=[], stop_reason=None, usage={"input_tokens": msg["usage"]["input_tokens"],
                                                                       "output_tokens": 1})
                events: list[tuple[str, dict[str, Any]]] = [
                    ("message_start", {"type": "message_start", "message": start}),
                    ("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
                    ("ping", {"type": "ping"}),
                ]
                for i in range(0, len(text), 16):  # several deltas, as the real API sends
                    events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                           "delta": {"type": "text_delta", "text": text[i:i + 16]}}))
                events += [
                    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                    ("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                                       "usage": {"output_tokens": msg["usage"]["output_tokens"]}}),
                    ("message_stop", {"type": "message_stop"}),
                ]
                for name, data in events:
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                    self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="messages-standin", daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _message(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    prompt_chars = sum(len(json.dumps(m.get("content", ""))) for m in body.get("messages", []))
    return {
        "id": "msg_standin",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", ""),
        "content": [{"type": "text", "text": reply.text}] if reply.text else [],
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": max(1, prompt_chars // 4), "output_tokens": max(1, len(reply.text) // 4)},
    }

"""Per request: its id, its trace context, its metrics and its one access-log line.

``Observer`` does it for a request (``observed``), once per app: ``ObserveMiddleware`` for every
request of the stack, the fast run path (``api/fast_path.py``) for the runs it takes. It reads
what the handlers left in ``scope["state"]`` (the entity, the upstream, the retries) once the
answer is sent; ``Answering``, the one ``send`` wrapper, adds the request id to the answer.

* ``x-request-id``: the client's when it is a sane token, else a new one; returned on every answer
  and sent upstream.
* W3C ``traceparent``: the upstream gets the client's trace id with this hop's own span id, or a
  new trace when the client sent none (or a malformed one).
* Request headers over ``max_header_bytes`` get 431 here (this pass reads the headers anyway).
* A path with a dot segment (``.``, ``..``, raw or ``%2e``-encoded), an encoded slash (``%2f``,
  ``%5c``) or a NUL (raw or ``%00``) gets 400 here, before any routing: no upstream ever sees it
  (``path_problem``, on the undecoded ``raw_path``).
* An unhandled error becomes AgentOS's JSON answer here, so it carries a request id too.
* Access log: one JSON line per request on stdout (``gateway.logs.AccessLogWriter``): request id,
  method, route, kind, entity, upstream, status, duration, retries. Never bodies or credentials.
* A WebSocket gets the same, once per connection (its duration; its ``close_code`` in the line).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import secrets
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import metrics
from gateway.api.errors import error_response
from gateway.errors import BadRequest, ClientError, HeadersTooLarge
from gateway.api.request_head import RequestHead
from gateway.logs import AccessLogWriter
from gateway.wire.paths import entity_path

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def new_traceparent(incoming: Optional[str], randomness: Optional[str] = None) -> str:
    """The traceparent for the upstream call: the incoming trace continued with a new span id,
    or a new sampled trace. ``randomness``: 48 hex digits to take the ids from."""
    randomness = randomness or secrets.token_hex(24)
    match = _TRACEPARENT.fullmatch(incoming or "")
    trace_id = match.group(1) if match and match.group(1) != "0" * 32 else randomness[:32]
    flags = match.group(3) if match else "01"
    return f"00-{trace_id}-{randomness[32:48]}-{flags}"


def path_problem(raw: bytes) -> Optional[str]:
    """What is wrong with an undecoded request path, or None. Cheap for the common path (no
    ``%``, no ``.``, no NUL: three byte searches)."""
    if b"%" in raw:
        lowered = raw.lower()
        if b"%2f" in lowered or b"%5c" in lowered:
            return "Invalid path: encoded slash"
        if b"%00" in lowered:
            return "Invalid path: NUL"
        if b"%2e" in lowered:
            raw = lowered.replace(b"%2e", b".")
    if b"\x00" in raw:
        return "Invalid path: NUL"
    if b"." in raw and any(part in (b".", b"..") for part in raw.split(b"/")):
        return "Invalid path: dot segment"
    return None


def request_refusal(scope: Scope, head: RequestHead, max_header_bytes: int) -> Optional[ClientError]:
    """What no route may see: headers over ``max_header_bytes`` (431), a path ``path_problem``
    finds (400)."""
    if head.size > max_header_bytes:
        return HeadersTooLarge(f"Request headers larger than {max_header_bytes} bytes")
    problem = path_problem(scope.get("raw_path") or scope["path"].encode())
    return BadRequest(problem) if problem is not None else None


def _route_labels(scope: Scope) -> Tuple[str, str]:
    """(route template, kind) of the matched route; ``unmatched`` for a 404 of the router. A
    door's route (AG-UI, A2A, MCP, the WebSocket) is labelled by its interface: its ``kind`` is
    the door's name."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not template:
        return "unmatched", ""
    door = getattr(route, "door", "")
    return template, door or _kind_of_template(template)


@functools.lru_cache(maxsize=1024)  # route templates: a bounded set
def _kind_of_template(template: str) -> str:
    matched = entity_path(template)
    return matched.kind.name.lower() if matched is not None else ""


def _json_or_null(value: Optional[str]) -> str:
    return "null" if value is None else json.dumps(value)


class Answering:
    """The ``send`` of one observed request: the answer's head gets the request id (and, where
    CORS is on and this layer stands in for it, ``Vary: Origin``); its status and the time of its
    first body byte are kept for the metrics and the access line."""

    __slots__ = ("send", "id_header", "vary_origin", "status", "status_sent", "first_byte")

    def __init__(self, send: Send, request_id: str, vary_origin: bool = False) -> None:
        self.send = send
        self.id_header = (b"x-request-id", request_id.encode())
        self.vary_origin = vary_origin
        self.status = 500
        self.status_sent = False
        self.first_byte: Optional[float] = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status, self.status_sent = message["status"], True
            headers = [*message.get("headers", ()), self.id_header]
            message["headers"] = _vary_origin(headers) if self.vary_origin else headers
        elif self.first_byte is None and kind == "http.response.body":
            self.first_byte = time.perf_counter()
        await self.send(message)


def _vary_origin(headers: List[Tuple[bytes, bytes]]) -> List[Tuple[bytes, bytes]]:
    """``Vary`` with ``Origin`` added, as one header (as Starlette's CORS layer writes it)."""
    varies = [value for name, value in headers if name == b"vary"]
    kept = [header for header in headers if header[0] != b"vary"] if varies else headers
    kept.append((b"vary", b", ".join([*varies, b"Origin"])))
    return kept


class Observer:
    """Observes requests: the metric children looked up once per set of labels
    (``metrics.labelled``), the log line formatted directly and handed to a buffered writer. One per app, shared by the layer
    below and the fast run path."""

    def __init__(self, *, access_log: bool = True, kind: Optional[str] = None) -> None:
        self.kind = kind  # every request's ``kind`` label (the admin listener's: "admin"); None: the route's
        self.access_log = AccessLogWriter.shared() if access_log else None

    async def observed(
        self, scope: Scope, receive: Receive, send: Send, head: RequestHead, handler: Callable[..., Awaitable[None]],
        *args: Any, vary_origin: bool = False,
    ) -> None:  # fmt: skip
        """``handler(scope, receive, answering, *args)`` with the request's id, trace context,
        metrics and access line; an error it raises before answering is AgentOS's 500."""
        started = time.perf_counter()
        state, request_id = _identified(scope, head.request_id, head.traceparent)
        answering = Answering(send, request_id, vary_origin)
        try:
            await handler(scope, receive, answering, *args)
        except Exception as error:
            if answering.status_sent:
                raise  # mid-answer: nothing can be said to the client any more
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            status, body = error_answer(error)
            await _send_json(answering, status, body)
        finally:
            self.record(scope, state, answering.status, started, answering.first_byte, time.perf_counter())

    def record(
        self, scope: Scope, state: Dict[str, Any], status: int, started: float, first_byte: Optional[float], ended: float
    ) -> None:
        route, kind = _route_labels(scope)
        kind = self.kind or kind
        entity: Optional[str] = state.get("entity")
        metrics.labelled(metrics.REQUESTS, kind, entity or metrics.UNKNOWN_ENTITY, route, str(status)).inc()
        metrics.labelled(metrics.REQUEST_DURATION, kind, route).observe(ended - started)
        if first_byte is not None:
            metrics.labelled(metrics.TIME_TO_FIRST_BYTE, kind, route).observe(first_byte - started)
        if self.access_log is not None:
            # Every field but the path is a token the gateway checked or made: no escaping needed.
            self.access_log.write(
                f'{{"request_id":"{state["request_id"]}","method":"{scope.get("method", "GET")}",'
                f'"path":{json.dumps(scope["path"])},"route":"{route}","kind":{_json_or_null(kind or None)},'
                f'"entity":{_json_or_null(entity)},"upstream":{_json_or_null(state.get("upstream"))},'
                f'"retries":{state.get("retries", 0)},"status":{status},{_close_code(state)}'
                f'"duration_ms":{round((ended - started) * 1000, 3)}}}\n'
            )


class ObserveMiddleware:
    """Observes every request that reaches it (``Observer``), and refuses what no route may see:
    headers over ``max_header_bytes`` (431), a path ``path_problem`` finds (400)."""

    def __init__(
        self, app: ASGIApp, *, access_log: bool = True, max_header_bytes: int = 1 << 30, kind: Optional[str] = None,
        observer: Optional[Observer] = None,
    ) -> None:  # fmt: skip
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.observer = observer if observer is not None else Observer(access_log=access_log, kind=kind)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await (self._websocket if scope["type"] == "websocket" else self.app)(scope, receive, send)
            return
        head = RequestHead(scope)
        refusal = request_refusal(scope, head, self.max_header_bytes)
        handler = self.app if refusal is None else error_response(refusal)
        await self.observer.observed(scope, receive, send, head, handler)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket connection (``doors/websocket.py``): a request id and trace context like a
        request's, and its metric and log line once it is over. Its status is the handshake's
        (101 when accepted, 403 when closed before, or the denial's), its first byte the first
        message sent, and the line says how it closed (``close_code``, set by the handler)."""
        started = time.perf_counter()
        head = RequestHead(scope)
        state, request_id = _identified(scope, head.request_id, head.traceparent)
        status = 500  # the server's answer to a handler that fails before the handshake
        first_byte: Optional[float] = None

        async def send_observed(message: Message) -> None:
            nonlocal status, first_byte
            kind = message["type"]
            if kind in ("websocket.accept", "websocket.http.response.start"):
                status = 101 if kind == "websocket.accept" else message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif kind == "websocket.close" and status == 500:
                status = 403
            elif kind == "websocket.send" and first_byte is None:
                first_byte = time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            self.observer.record(scope, state, status, started, first_byte, time.perf_counter())


def _identified(scope: Scope, incoming_id: Optional[str], incoming_trace: Optional[str]) -> Tuple[Dict[str, Any], str]:
    """The request's state with its request id (the client's when well-formed) and traceparent;
    one system call of randomness for the request id, trace id and span id."""
    randomness = os.urandom(24).hex()
    request_id = incoming_id if incoming_id and _REQUEST_ID.fullmatch(incoming_id) else randomness[:32]
    state: Dict[str, Any] = scope.setdefault("state", {})
    state["request_id"] = request_id
    state["traceparent"] = new_traceparent(incoming_trace, randomness)
    return state, request_id


def _close_code(state: Dict[str, Any]) -> str:
    """A WebSocket's close code, as a field of its line; nothing for a request."""
    code = state.get("close_code")
    return "" if code is None else f'"close_code":{int(code)},'


async def _send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_answer(error: Exception) -> Tuple[int, bytes]:
    """AgentOS's answer to an unhandled error: an agno error carrying a 4xx status is the caller's
    and says so; anything else (or a status that is no error's) is a 500 naming only the type,
    since the message may carry internals (SQL, hosts); agno's ``error_id`` and ``error_type``
    when the error has them."""
    status = getattr(error, "status_code", 500)
    if not isinstance(status, int) or not 400 <= status < 600:
        status = 500
    body: Dict[str, Any] = {"detail": str(error) if status < 500 else f"Internal server error ({type(error).__name__})"}
    error_id = getattr(error, "error_id", None)
    if error_id:
        body["error_id"] = error_id
        body["error_type"] = getattr(error, "error_type", None) or getattr(error, "type", None)
    return status, json.dumps(body).encode()

"""Per request: its id, its trace context, its metrics and its one access-log line.

A pure ASGI middleware (no per-request dependency injection): it reads what the routes left in
``scope["state"]`` (the entity, the upstream, the retries) once the answer is sent.

* ``x-request-id``: the client's when it is a sane token, else a new one; returned on every answer
  and sent upstream.
* W3C ``traceparent``: the upstream gets the client's trace id with this hop's own span id, or a
  new trace when the client sent none (or a malformed one).
* An unhandled error becomes AgentOS's JSON answer here, so it carries a request id too.
* Access log: one JSON line per request on the ``agentos_gateway.access`` logger: request id,
  method, route, kind, entity, upstream, status, duration, retries. Never bodies or credentials.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from typing import Any, Dict, Optional, Tuple

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import metrics

access_logger = logging.getLogger("agentos_gateway.access")
logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_KINDS = {"agents": "agent", "teams": "team", "workflows": "workflow"}


def new_traceparent(incoming: Optional[str]) -> str:
    """The traceparent for the upstream call: the incoming trace continued with a new span id,
    or a new sampled trace."""
    match = _TRACEPARENT.fullmatch(incoming or "")
    trace_id = match.group(1) if match and match.group(1) != "0" * 32 else secrets.token_hex(16)
    flags = match.group(3) if match else "01"
    return f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"


def _route_labels(scope: Scope) -> Tuple[str, str]:
    """(route template, kind) of the matched route; ``unmatched`` for a 404 of the router."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not template:
        return "unmatched", ""
    parts = template.split("/")
    kind = _KINDS.get(parts[2] if len(parts) > 2 and parts[1] == "v1" else parts[1] if len(parts) > 1 else "", "")
    return template, kind


class ObserveMiddleware:
    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = _headers_of(scope)
        incoming_id = headers.get("x-request-id", "")
        request_id = incoming_id if _REQUEST_ID.fullmatch(incoming_id) else secrets.token_hex(16)
        state: Dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["traceparent"] = new_traceparent(headers.get("traceparent"))
        status = 500
        status_sent = False
        first_byte: Optional[float] = None
        id_header = (b"x-request-id", request_id.encode())

        async def send_observed(message: Message) -> None:
            nonlocal status, status_sent, first_byte
            if message["type"] == "http.response.start":
                status, status_sent = message["status"], True
                message["headers"] = [*message.get("headers", []), id_header]
            elif first_byte is None and message["type"] == "http.response.body":
                first_byte = time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception as error:
            if status_sent:
                raise  # mid-answer: nothing can be said to the client any more
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            status, body = error_answer(error)
            await send_observed(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send_observed({"type": "http.response.body", "body": body})
        finally:
            ended = time.perf_counter()
            route, kind = _route_labels(scope)
            entity = state.get("entity") or metrics.UNKNOWN_ENTITY
            metrics.REQUESTS.labels(kind, entity, route, str(status)).inc()
            metrics.REQUEST_DURATION.labels(kind, route).observe(ended - started)
            if first_byte is not None:
                metrics.TIME_TO_FIRST_BYTE.labels(kind, route).observe(first_byte - started)
            if self.access_log:
                access_logger.info(
                    json.dumps(
                        {
                            "request_id": request_id,
                            "method": scope["method"],
                            "path": scope["path"],
                            "route": route,
                            "kind": kind or None,
                            "entity": state.get("entity"),
                            "upstream": state.get("upstream"),
                            "retries": state.get("retries", 0),
                            "status": status,
                            "duration_ms": round((ended - started) * 1000, 3),
                        },
                        separators=(",", ":"),
                    )
                )


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


def _headers_of(scope: Scope) -> Dict[str, str]:
    wanted = (b"x-request-id", b"traceparent")
    return {name.decode(): value.decode("latin-1") for name, value in scope["headers"] if name in wanted}

"""The run routes of upstream entities as a lean ASGI handler, ahead of the framework's routing.

``POST /v1/{kind}/{id}/run`` (JSON) and ``POST /{kind}/{id}/runs`` (urlencoded form) for an id an
upstream serves are most of a gateway's traffic; routing them through FastAPI's router and
dependency injection cost about a third of a request's CPU. Here they are found by the one path
reader (``gateway.wire.paths``), read, prepared by ``api/run_prep.py`` and forwarded exactly as
the routes prepare and forward them.

Only well-formed requests take this path. Anything else (a local entity, multipart, a body the
checks refuse) goes on to the routes with its body replayed, so every error is answered in one
place, the same way; what the gateway itself refuses whatever the route (an id over the cap, a
form Starlette refuses) is answered here by ``error_response``. A form is read by
``gateway.wire.form``, as the routes and AgentOS read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.body_reader import INCOMPLETE
from gateway.api.errors import error_response
from gateway.api import run_prep
from gateway.api.forwarding import Forwarder
from gateway.api.limits import Limiter
from gateway.api.run_prep import PreparedRun
from gateway.api.runs import JSON_OBJECT_FIELDS
from gateway.api.schemas import RunRequest
from gateway.errors import BadRequest, Busy, ClientError, IncompleteBody
from gateway.routing import Directory, Remote
from gateway.wire import form
from gateway.wire.kinds import EntityKind, is_valid_entity_id
from gateway.wire.paths import entity_path


@dataclass(frozen=True)
class _RouteTemplate:
    path_format: str


_ROUTE_TEMPLATES = {
    (is_v1, kind): _RouteTemplate(f"/v1/{kind.path}/{{entity_id}}/run" if is_v1 else f"/{kind.path}/{{entity_id}}/runs")
    for is_v1 in (True, False)
    for kind in EntityKind
}


class FastRunPath:
    def __init__(self, app: ASGIApp, *, directory: Directory, forwarder: Optional[Forwarder], limiter: Limiter) -> None:
        self.app = app
        self.directory = directory
        self.forwarder = forwarder
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = entity_path(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if matched is None or not matched.is_run or self.forwarder is None:
            await self.app(scope, receive, send)
            return
        is_v1, kind, entity_id = matched.v1, matched.kind, matched.entity_id
        target = self.directory.resolve(kind, entity_id) if is_valid_entity_id(entity_id) else None
        content_type = _header(scope, b"content-type")
        if not isinstance(target, Remote) or not (is_v1 or form.media_type(content_type) == form.URLENCODED):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["entity"] = entity_id
        scope["route"] = _ROUTE_TEMPLATES[(is_v1, kind)]  # the same labels as the routes' own
        try:
            body = await _read_body(receive)
        except ClientError as error:  # too large, incomplete, too slow: never forwarded
            await error_response(error)(scope, receive, send)
            return
        replay = _replaying(body, receive)
        try:
            prepared = _prepare_v1(kind, entity_id, body) if is_v1 else _prepare_form(kind, entity_id, body, content_type)
        except BadRequest as refused:  # an id too long, a form Starlette refuses: no upstream sees it
            await error_response(refused)(scope, replay, send)
            return
        if prepared is None:  # the routes answer it, as they answer every malformed request
            await self.app(scope, replay, send)
            return
        try:
            release = self.limiter.acquire(prepared.stream)
        except Busy as busy:
            await error_response(busy)(scope, replay, send)
            return
        try:
            response = await run_prep.forward(self.forwarder, Request(scope, replay), target.upstreams, prepared)
            await response(scope, replay, send)
        finally:
            release()


def _prepare_v1(kind: EntityKind, entity_id: str, body: bytes) -> Optional[PreparedRun]:
    try:
        request = RunRequest.model_validate_json(body)
    except (ValidationError, ValueError):
        return None
    return run_prep.from_v1(kind, entity_id, request)


_WANTED_FIELDS = frozenset({"message", "stream", "background", "session_id", "run_id", *JSON_OBJECT_FIELDS})


def _prepare_form(kind: EntityKind, entity_id: str, body: bytes, content_type: str) -> Optional[PreparedRun]:
    fields = form.last_values(body, _WANTED_FIELDS)
    stream = form.read_bool(fields.get("stream"), True)
    if stream is None or "message" not in fields or any(name in fields for name in JSON_OBJECT_FIELDS):
        return None  # the routes check these (fields AgentOS would fail on with a 500)
    return run_prep.from_form(
        kind, entity_id, body, content_type, session_id=fields.get("session_id") or None,
        run_id=fields.get("run_id") or None, stream=stream, background=run_prep.is_background(fields.get("background")),
    )  # fmt: skip


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


async def _read_body(receive: Receive) -> bytes:
    """The whole body. The body reader ahead (``api/body_reader.py``) raises first; a disconnect
    is refused here too, so a body cut short can never be taken for a whole one."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise IncompleteBody(INCOMPLETE)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands out the body read already, then what the client sends next (its
    disconnect)."""
    pending: Dict[str, Any] = {"message": {"type": "http.request", "body": body, "more_body": False}}

    async def replay() -> Message:
        message = pending.pop("message", None)
        return message if message is not None else await receive()

    return replay

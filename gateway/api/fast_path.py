"""The run routes of upstream entities as a lean ASGI handler, ahead of the framework's routing.

``POST /v1/{kind}/{id}/run`` (JSON) and ``POST /{kind}/{id}/runs`` (urlencoded form) for an id an
upstream serves are most of a gateway's traffic; routing them through FastAPI's router and
dependency injection cost about a third of a request's CPU. Here they are matched by splitting
the path, read, and forwarded by the same ``Forwarder`` the routes use.

Only well-formed requests take this path. Anything else (a local entity, multipart, a body the
checks refuse) goes on to the routes with its body replayed, so every error is answered in one
place, the same way; what the gateway itself refuses whatever the route (an id over the cap, a
form Starlette refuses) is answered here by ``error_response``. A form is read by
``gateway.wire.form``, as the routes and AgentOS read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.body_reader import INCOMPLETE
from gateway.api.errors import error_response
from gateway.api.forwarding import Forwarder, RunInfo, form_body, new_session, new_uuid, with_form_fields
from gateway.api.limits import Limiter
from gateway.api.runs import JSON_OBJECT_FIELDS, is_background
from gateway.api.schemas import RunRequest
from gateway.errors import BadRequest, Busy, ClientError, IncompleteBody
from gateway.sender import Outgoing
from gateway.routing import Directory, Remote
from gateway.wire import form
from gateway.wire.encoding import v1_json_to_form
from gateway.wire.ids import check_id
from gateway.wire.kinds import EntityKind, is_valid_entity_id


@dataclass(frozen=True)
class _RouteTemplate:
    path_format: str


_ROUTE_TEMPLATES = {
    (is_v1, kind): _RouteTemplate(f"/v1/{kind.path}/{{entity_id}}/run" if is_v1 else f"/{kind.path}/{{entity_id}}/runs")
    for is_v1 in (True, False)
    for kind in EntityKind
}


def match_run_path(path: str) -> Optional[Tuple[bool, EntityKind, str]]:
    """(is v1, kind, id) of a run route's path, by splitting: no regex, no router."""
    parts = path.split("/")
    if len(parts) == 5 and parts[1] == "v1" and parts[4] == "run":
        kind = EntityKind.from_path(parts[2])
        return (True, kind, parts[3]) if kind is not None else None
    if len(parts) == 4 and parts[3] == "runs":
        kind = EntityKind.from_path(parts[1])
        return (False, kind, parts[2]) if kind is not None else None
    return None


class FastRunPath:
    def __init__(self, app: ASGIApp, *, directory: Directory, forwarder: Optional[Forwarder], limiter: Limiter) -> None:
        self.app = app
        self.directory = directory
        self.forwarder = forwarder
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = match_run_path(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if matched is None or self.forwarder is None:
            await self.app(scope, receive, send)
            return
        is_v1, kind, entity_id = matched
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
            prepared = _prepare_v1(body) if is_v1 else _prepare_form(body, content_type)
        except BadRequest as refused:  # an id too long, a form Starlette refuses: no upstream sees it
            await error_response(refused)(scope, replay, send)
            return
        if prepared is None:  # the routes answer it, as they answer every malformed request
            await self.app(scope, replay, send)
            return
        outgoing_body, session_id, session_is_new, run_id, stream, background = prepared
        outgoing = Outgoing(
            "POST",
            f"/{kind.path}/{entity_id}/runs",
            headers={"Content-Type": content_type if not is_v1 else form.URLENCODED},
            body=outgoing_body,
            expects_stream=stream,
        )
        try:
            release = self.limiter.acquire(stream)
        except Busy as busy:
            await error_response(busy)(scope, replay, send)
            return
        try:
            request = Request(scope, replay)
            choice = self.forwarder.choose(target.upstreams, session_id, session_is_new=session_is_new)
            run = RunInfo(kind, entity_id, run_id, session_id, background=background)
            response = await self.forwarder.forward(request, choice, outgoing, run=run)
            await response(scope, replay, send)
        finally:
            release()


def _prepare_v1(body: bytes) -> Optional[Tuple[bytes, str, bool, str, bool, bool]]:
    try:
        request = RunRequest.model_validate_json(body)
    except (ValidationError, ValueError):
        return None
    check_id("session_id", request.session_id)
    check_id("run_id", request.run_id)
    data = request.model_dump(exclude_none=True)
    session_id, session_is_new = new_session(data.get("session_id"))
    run_id = data.get("run_id") or new_uuid()
    data.update(session_id=session_id, run_id=run_id)
    return form_body(v1_json_to_form(data)), session_id, session_is_new, run_id, request.stream, bool(request.background)


_WANTED_FIELDS = frozenset({"message", "stream", "background", "session_id", "run_id", *JSON_OBJECT_FIELDS})


def _prepare_form(body: bytes, content_type: str) -> Optional[Tuple[bytes, str, bool, str, bool, bool]]:
    fields = form.last_values(body, _WANTED_FIELDS)
    stream = form.read_bool(fields.get("stream"), True)
    if stream is None or "message" not in fields or any(name in fields for name in JSON_OBJECT_FIELDS):
        return None  # the routes check these (fields AgentOS would fail on with a 500)
    check_id("session_id", fields.get("session_id"))
    check_id("run_id", fields.get("run_id"))
    added: Dict[str, str] = {}
    session_id, session_is_new = new_session(fields.get("session_id") or None)
    if session_is_new:
        added["session_id"] = session_id
    run_id = fields.get("run_id") or added.setdefault("run_id", new_uuid())
    background = is_background(fields.get("background"))
    return with_form_fields(body, content_type, added), session_id, session_is_new, run_id, stream, background


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

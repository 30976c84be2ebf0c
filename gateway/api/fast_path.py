"""Run requests for upstream entities, in one ASGI callable ahead of the framework's whole stack.

``POST /v1/{kind}/{id}/run`` (JSON) and ``POST /{kind}/{id}/runs`` (urlencoded form) for an id an
upstream serves are most of a gateway's traffic. The layers every other request passes through
(observe, body reader, CORS, auth: ``api/app.py``), and FastAPI's routing and dependency injection
below them, cost more than forwarding the run itself; so a well-formed run is taken here whole.
The layers' work is not copied: it is called, once each, from here:

* one pass over the headers (``RequestHead``), shared by all of them;
* the observer's request id, trace context, metrics and access line (``Observer.observed``);
* the key check (``Keyring.check``), the body read within its limits (``BodyLimits``);
* the run prepared (``api/run_prep.py``) and forwarded exactly as the routes prepare and forward it;
* the answer sent once through one ``send`` (``Answering``), no layer wrapping it again.

What a layer would refuse or answer differently is left to the layers, untouched: headers too
large, a path with dot segments, a declared body over the limit, a browser's CORS request, a
local entity, multipart, an id not well-formed. A request this path took whose body the routes
must answer (JSON they refuse, a form's fields AgentOS would fail on) goes on to the routes below
the layers with its body replayed, so every error is answered in one place, the same way; what
the gateway itself refuses whatever the route (an id over the cap, a form Starlette refuses, no
run slot) is answered here by ``error_response``. A form is read by ``gateway.wire.form``, as the
routes and AgentOS read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api import run_prep
from gateway.api.admin_listener import came_to_admin_port
from gateway.api.auth import Keyring
from gateway.api.body_reader import BodyLimits
from gateway.api.errors import error_response
from gateway.api.forwarding import Forwarder
from gateway.api.limits import Limiter
from gateway.api.observe import Observer, request_refusal
from gateway.api.request_head import RequestHead
from gateway.api.run_prep import PreparedRun
from gateway.api.runs import JSON_OBJECT_FIELDS
from gateway.api.schemas import RunRequest
from gateway.errors import BadRequest, Busy, ClientError
from gateway.routing import Directory, Remote
from gateway.wire import form
from gateway.wire.kinds import EntityKind, is_valid_entity_id
from gateway.wire.paths import EntityPath, entity_path


@dataclass(frozen=True)
class _RouteTemplate:
    path_format: str


_ROUTE_TEMPLATES = {
    (is_v1, kind): _RouteTemplate(f"/v1/{kind.path}/{{entity_id}}/run" if is_v1 else f"/{kind.path}/{{entity_id}}/runs")
    for is_v1 in (True, False)
    for kind in EntityKind
}


class FastRunPath:
    def __init__(
        self, app: ASGIApp, *, routes: Callable[[], ASGIApp], directory: Directory, forwarder: Optional[Forwarder],
        limiter: Limiter, observer: Observer, keyring: Keyring, body_limits: BodyLimits, max_header_bytes: int,
        cors: bool, admin_port: int = 0,
    ) -> None:  # fmt: skip
        self.app = app
        self.routes = routes  # the app below the client-facing layers (``GatewayApp.below_auth``)
        self.directory = directory
        self.forwarder = forwarder
        self.limiter = limiter
        self.observer = observer
        self.keyring = keyring
        self.body_limits = body_limits
        self.max_header_bytes = max_header_bytes
        self.cors = cors  # CORS is on: answers get ``Vary: Origin``, and a browser's request goes to its layer
        self.admin_port = admin_port  # what came in there is the admin app's

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = (
            entity_path(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST" and self.forwarder is not None
            else None
        )
        if matched is None or not matched.is_run:
            await self.app(scope, receive, send)
            return
        head = RequestHead(scope)
        target = self._target(scope, matched, head)
        if target is None:
            await self.app(scope, receive, send)
            return
        await self.observer.observed(scope, receive, send, head, self._run, matched, target, head, vary_origin=self.cors)

    def _target(self, scope: Scope, matched: EntityPath, head: RequestHead) -> Optional[Remote]:
        """The upstream entity of a run this path takes; None leaves the request to the layers."""
        if (
            (head.origin and self.cors)
            or came_to_admin_port(scope, self.admin_port)
            or head.content_length > self.body_limits.max_bytes
            or not (matched.v1 or form.media_type(head.content_type) == form.URLENCODED)
            or not is_valid_entity_id(matched.entity_id)
            or request_refusal(scope, head, self.max_header_bytes) is not None
        ):
            return None
        target = self.directory.resolve(matched.kind, matched.entity_id)
        return target if isinstance(target, Remote) else None

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, matched: EntityPath, target: Remote, head: RequestHead
    ) -> None:
        if self.keyring.keys:
            refusal = self.keyring.check(scope, scope["path"], head.authorization)
            if refusal is not None:
                await error_response(refusal)(scope, receive, send)
                return
        kind, entity_id = matched.kind, matched.entity_id
        scope["state"]["entity"] = entity_id
        scope["route"] = _ROUTE_TEMPLATES[(matched.v1, kind)]  # the same labels as the routes' own
        try:
            body = await self.body_limits.read_whole(receive)
        except ClientError as error:  # too large, incomplete, too slow: never forwarded
            await error_response(error)(scope, receive, send)
            return
        replay = _Replay(body, receive)
        try:
            prepared = (
                _prepare_v1(kind, entity_id, body) if matched.v1 else _prepare_form(kind, entity_id, body, head.content_type)
            )
        except BadRequest as refused:  # an id too long, a form Starlette refuses: no upstream sees it
            await error_response(refused)(scope, replay, send)
            return
        if prepared is None:  # the routes answer it, as they answer every malformed request
            await self.routes()(scope, replay, send)
            return
        try:
            release = self.limiter.acquire(prepared.stream)
        except Busy as busy:
            await error_response(busy)(scope, replay, send)
            return
        try:
            assert self.forwarder is not None
            response = await run_prep.forward(self.forwarder, Request(scope, replay), target.upstreams, prepared)
            await response(scope, replay, send)
        finally:
            release()


class _Replay:
    """A receive that hands out the body read already, then what the client sends next (its
    disconnect)."""

    __slots__ = ("message", "receive")

    def __init__(self, body: bytes, receive: Receive) -> None:
        self.message: Optional[Message] = {"type": "http.request", "body": body, "more_body": False}
        self.receive = receive

    async def __call__(self) -> Message:
        message, self.message = self.message, None
        return message if message is not None else await self.receive()


def _prepare_v1(kind: EntityKind, entity_id: str, body: bytes) -> Optional[PreparedRun]:
    try:
        request = RunRequest.model_validate_json(body)
    except (ValidationError, ValueError):
        return None
    return run_prep.from_v1(kind, entity_id, request)


_JSON_OBJECT_FIELDS = frozenset(JSON_OBJECT_FIELDS)
_WANTED_FIELDS = frozenset({"message", "stream", "background", "session_id", "run_id", *JSON_OBJECT_FIELDS})


def _prepare_form(kind: EntityKind, entity_id: str, body: bytes, content_type: str) -> Optional[PreparedRun]:
    fields = form.last_values(body, _WANTED_FIELDS)
    stream = form.read_bool(fields.get("stream"), True)
    if stream is None or "message" not in fields or not _JSON_OBJECT_FIELDS.isdisjoint(fields):
        return None  # the routes check these (fields AgentOS would fail on with a 500)
    return run_prep.from_form(
        kind, entity_id, body, content_type, session_id=fields.get("session_id") or None,
        run_id=fields.get("run_id") or None, stream=stream, background=run_prep.is_background(fields.get("background")),
    )  # fmt: skip

"""The workflow WebSocket (``/workflows/ws``): AgentOS's one WebSocket, each connection relayed to
the upstream its workflow session lives on.

AgentOS's protocol on it (agno's ``get_websocket_router``): the client sends JSON actions
(``ping``, ``authenticate``, ``start-workflow``, ``reconnect``, ``continue-workflow``); the server
answers with JSON events (``connected`` first, ``pong``, ``authenticated``, ``error``...) and sends
a run's events as SSE-formatted text frames (``event: X\\ndata: {...}``). Runs, and the buffers a
``reconnect`` replays, live in the upstream process that runs them.

**The upstream is chosen at the first message that names a run** (``start-workflow``,
``reconnect``, ``continue-workflow``): its ``session_id`` is hashed over the upstreams serving its
``workflow_id``, exactly as a REST run of that session is (``affinity.mode``), so a session started
here and continued over REST (or the other way) stays on one upstream. A ``start-workflow`` without
a session gets one from the gateway (a uuid4, written into the message, as AgentOS would make
one), so its next turn comes back. Before that message the gateway answers ``ping`` and
``authenticate`` itself, with AgentOS's own events: nothing is buffered and no upstream connection
is held for a client that has not asked for a run yet, and the session, not the order the client
happened to send its control messages in, decides the upstream. Anything else (an unknown action,
a text that is not JSON) goes on to an upstream chosen by power of two choices, which answers it as
AgentOS does. With ``forward_authorization`` an ``authenticate`` is the upstream's to judge (agno's
JWT): it commits the connection the same way. The connection then stays on that upstream: later
runs on it go there too, as they would on one AgentOS.

**Keys.** With client keys configured, a key in the upgrade's ``Authorization`` header (refused
with 401 before the handshake when it is wrong), or in an ``authenticate`` message (browsers cannot
set headers on a WebSocket): the gateway's key, never sent upstream; each upstream gets its own key
(``api_key``), in the upgrade's header and, when it asks for one, in an ``authenticate`` of the
gateway's. Each run action is checked against
the key's scopes as ``POST /workflows/{id}/runs`` (agno's ``workflows:run``): a refusal is AgentOS's
``error`` event, and nothing reaches an upstream. A limited key may use no action the gateway does
not know.

**The relay.** Text both ways as it comes, one message at a time: each side is read only when the
other has taken the last message (uvicorn stops reading the client while a message waits; aiohttp
stops reading the upstream past its buffer), so nothing queues without bound. Close codes pass on;
either side closing closes the other. A binary message from the client closes with 1003, a message
over ``doors.websocket_max_message_bytes`` with 1009 (uvicorn's own limit is set from it too), an
upstream that drops the connection with 1014 (bad gateway) and a reason, one that cannot be reached
with 1013 (try again later), and a client that sends nothing (or no key, when one is needed)
within ``doors.websocket_first_message_s`` with 1008. An upstream is pinged every 20 s, so one
that vanished without closing its connections is found too. The connection holds a stream slot (``api/limits.py``) while open:
none free, 1013. Metrics and the access line (``api/observe.py``) label it ``/workflows/ws``, kind
``websocket``, with its upstream and close code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import aiohttp
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.auth import Keyring, bearer_token
from gateway.api.request_head import request_header
from gateway.api.errors import error_response
from gateway.api.forwarding import Forwarder, new_uuid
from gateway.api.limits import Limiter
from gateway.balancing import Outcome
from gateway.doors.http import json_object
from gateway.doors.membership import WEBSOCKET_PATH, Door
from gateway.errors import BadRequest, Busy, GatewayError, Unauthorized
from gateway.local import LocalEntity
from gateway.pool import Flight, Upstream
from gateway.routing import Directory, Remote
from gateway.wire.ids import check_id
from gateway.wire.kinds import EntityKind, is_valid_entity_id

# Close codes (RFC 6455 and IANA's registry).
NORMAL, GOING_AWAY, UNSUPPORTED_DATA, POLICY_VIOLATION, TOO_BIG = 1000, 1001, 1003, 1008, 1009
TRY_AGAIN_LATER, BAD_GATEWAY = 1013, 1014
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

RUN_ACTIONS = frozenset({"start-workflow", "reconnect", "continue-workflow"})
KNOWN_ACTIONS = RUN_ACTIONS | {"ping", "authenticate"}
# AgentOS's refusal of each run action to a token without the workflow's run scope.
_REFUSALS = {
    "start-workflow": "Insufficient permissions to run this workflow",
    "reconnect": "Insufficient permissions to reconnect to this workflow",
    "continue-workflow": "Insufficient permissions to continue this workflow",
}
MAX_AUTH_FAILURES = 5  # AgentOS's own bound on a public socket's attempts
HEARTBEAT_S = 20.0  # a ping to the upstream this often: one that vanished without a FIN is found
CLOSE_TIMEOUT_S = 2.0  # for the upstream's answer to the gateway's close
UPSTREAM_MESSAGE_FLOOR = 16 * 1024 * 1024  # run events carry whole outputs: at least uvicorn's default
MAX_REASON_BYTES = 123  # a close frame's reason


@dataclass(frozen=True)
class _DoorRoute:
    """What ``api/observe.py`` labels the connection's metrics and log line by."""

    path: str
    door: str


ROUTE = _DoorRoute(WEBSOCKET_PATH, Door.WEBSOCKET.value)


class _Closing(Exception):
    """The connection ends: the client is sent ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class _ClientLeft(Exception):
    """The client closed the connection (or it was lost) with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class WebSocketDoor:
    """The ASGI layer that takes ``/workflows/ws`` connections; everything else goes on."""

    def __init__(
        self, app: ASGIApp, *, directory: Directory, forwarder: Optional[Forwarder], limiter: Limiter, keyring: Keyring
    ) -> None:
        self.app = app
        self.directory = directory
        self.forwarder = forwarder
        self.limiter = limiter
        self.keyring = keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or scope["path"] != WEBSOCKET_PATH or self.forwarder is None:
            await self.app(scope, receive, send)
            return
        await _Connection(self, self.forwarder, scope, receive, send).serve()


class _Connection:
    """One client connection, from its handshake to its close."""

    def __init__(self, door: WebSocketDoor, fwd: Forwarder, scope: Scope, receive: Receive, send: Send) -> None:
        self.door, self.fwd, self.scope, self.receive, self._send = door, fwd, scope, receive, send
        self.settings = fwd.settings
        self.state: Dict[str, Any] = scope.setdefault("state", {})
        self.needs_key = bool(door.keyring.keys)
        self.key_digest: Optional[bytes] = None  # the client's key, looked up again for each run
        self.auth_failures = 0
        self.send_lock = asyncio.Lock()  # the two directions may both answer the client
        self.upstream: Optional[Upstream] = None
        self.upstream_ws: Optional[aiohttp.ClientWebSocketResponse] = None
        self.flight: Optional[Flight] = None

    # -- the connection's life ---------------------------------------------------------------------

    async def serve(self) -> None:
        self.scope["route"] = ROUTE
        if (await self.receive())["type"] != "websocket.connect":  # ASGI's first message: the handshake
            return
        token = bearer_token(request_header(self.scope, b"authorization"))
        if self.needs_key and token is not None:
            refusal = self._login(token)
            if refusal is not None:
                await self._deny(refusal)
                return
        try:
            release = self.door.limiter.acquire(True, holds_run=False)  # a connection, not one run
        except Busy as busy:
            await self._send({"type": "websocket.accept"})
            await self._close_client(TRY_AGAIN_LATER, busy.detail)
            return
        try:
            await self._run()
        finally:
            await self._close_upstream(GOING_AWAY, "")  # when cancelled (the server stopping) mid-way
            release()
            if self.flight is not None:
                # An upstream that took the connection answered; how the connection ends is the
                # protocol's (AgentOS drops one on a text that is not JSON: a client could
                # otherwise eject an upstream), and a dead process is the probes' to find.
                self.flight.finish(Outcome.SUCCESS if self.upstream is not None else None)

    async def _run(self) -> None:
        try:
            await self._send({"type": "websocket.accept"})
            requires_auth = self.needs_key and self.key_digest is None
            hello = "Connected to AgentOS. Please authenticate to continue." if requires_auth else "Connected to AgentOS."
            await self._send_json({"event": "connected", "message": hello, "requires_auth": requires_auth})
            first = await self._lobby()
            await self._relay(first)
        except _Closing as closing:
            await self._close_client(closing.code, closing.reason)
            await self._close_upstream(GOING_AWAY, "")  # when it is not the upstream that closed
        except _ClientLeft as left:
            self.state["close_code"] = left.code
            await self._close_upstream(left.code if left.code in _SENDABLE else GOING_AWAY, left.reason)
        except OSError:  # the client's transport is gone (uvicorn's ClientDisconnected)
            self.state.setdefault("close_code", 1006)
            await self._close_upstream(GOING_AWAY, "")

    async def _lobby(self) -> str:
        """Until the first message an upstream must see: ``ping`` and ``authenticate`` answered
        here. Returns that message's text, as it goes upstream. Bounded in time: the first
        message, and a key when one is needed, within ``doors.websocket_first_message_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.doors.websocket_first_message_s
        first = True
        while True:
            waiting = first or (self.needs_key and self.key_digest is None)
            text = await self._next_text(max(0.0, deadline - loop.time()) if waiting else None)
            first = False
            message = json_object(text)
            action = message.get("action") if message is not None else None
            if action == "authenticate":
                if not await self._authenticate(message) or not self.settings.forward_authorization:
                    continue
                await self._connect(None, None)  # the upstream judges the token (agno's JWT)
                return text
            if self.needs_key and self.key_digest is None:
                await self._send_json(_AUTH_REQUIRED)
                continue
            if action == "ping":
                await self._send_json({"event": "pong"})
                continue
            checked = await self._checked(text, message)
            if checked is None:
                continue
            text, workflow_id, session_id = checked
            await self._connect(workflow_id, session_id)
            return text

    async def _relay(self, first: str) -> None:
        """The first message upstream, then both directions until one side closes."""
        await self._to_upstream(first)
        pumps = [asyncio.ensure_future(self._client_to_upstream()), asyncio.ensure_future(self._upstream_to_client())]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        for pump in done:
            pump.result()  # how it ended: _Closing or _ClientLeft

    async def _client_to_upstream(self) -> None:
        while True:
            text = await self._next_text(None)
            message = json_object(text)
            action = message.get("action") if message is not None else None
            if action == "authenticate":  # answered here; the upstream's own with forward_authorization
                if not await self._authenticate(message) or not self.settings.forward_authorization:
                    continue
            else:
                checked = await self._checked(text, message)
                if checked is None:
                    continue
                text = checked[0]
            await self._to_upstream(text)

    async def _upstream_to_client(self) -> None:
        ws = self.upstream_ws
        assert ws is not None and self.upstream is not None
        name = self.upstream.name
        while True:
            received = await ws.receive()
            if received.type is aiohttp.WSMsgType.TEXT:
                await self._send_client({"type": "websocket.send", "text": received.data})
            elif received.type is aiohttp.WSMsgType.BINARY:
                await self._send_client({"type": "websocket.send", "bytes": received.data})
            elif received.type is aiohttp.WSMsgType.CLOSE:  # its own close, passed on
                code = received.data if received.data in _SENDABLE or 3000 <= received.data < 5000 else NORMAL
                raise _Closing(code, received.extra or "")
            elif received.type is aiohttp.WSMsgType.ERROR and getattr(received.data, "code", None) == TOO_BIG:
                raise _Closing(TOO_BIG, f"Upstream {name}: a message over the gateway's limit")
            else:  # CLOSED, ERROR: the connection was lost without a close
                raise _Closing(BAD_GATEWAY, f"Upstream {name} closed the connection")

    # -- the client's side -------------------------------------------------------------------------

    async def _next_text(self, timeout: Optional[float]) -> str:
        """The client's next text message (``timeout``: None waits as long as it takes)."""
        try:
            async with asyncio.timeout(timeout):
                message: Message = await self.receive()
        except TimeoutError:
            raise _Closing(POLICY_VIOLATION, f"No message within {self.settings.doors.websocket_first_message_s:g} s") from None
        if message["type"] == "websocket.disconnect":
            raise _ClientLeft(message.get("code") or 1005, message.get("reason") or "")
        text = message.get("text")
        if text is None:
            raise _Closing(UNSUPPORTED_DATA, "Unsupported data: AgentOS's WebSocket takes text messages")
        limit = self.settings.doors.websocket_max_message_bytes
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit):
            raise _Closing(TOO_BIG, f"Message too big: the limit is {limit} bytes")
        return text

    async def _send_client(self, message: Message) -> None:
        async with self.send_lock:
            await self._send(message)

    async def _send_json(self, event: Dict[str, Any]) -> None:
        await self._send_client({"type": "websocket.send", "text": json.dumps(event)})

    async def _close_client(self, code: int, reason: str) -> None:
        self.state["close_code"] = code
        with contextlib.suppress(OSError, RuntimeError):  # the client may be gone already
            await self._send_client({"type": "websocket.close", "code": code, "reason": _reason(reason)})

    async def _deny(self, error: GatewayError) -> None:
        """Refused before the handshake: the gateway's JSON answer where the server can send one
        (ASGI's denial response), else the server's plain 403."""
        if "websocket.http.response" not in self.scope.get("extensions", {}):
            await self._send({"type": "websocket.close", "code": POLICY_VIOLATION})
            return
        response = error_response(error)
        await self._send({"type": "websocket.http.response.start", "status": response.status_code, "headers": response.raw_headers})
        await self._send({"type": "websocket.http.response.body", "body": bytes(response.body)})

    # -- keys and scopes ---------------------------------------------------------------------------

    def _login(self, token: bytes) -> Optional[GatewayError]:
        key = self.door.keyring.find(token)
        if key is None:
            return Unauthorized("Invalid authentication token")
        self.key_digest = key.digest
        self.state["api_key"] = key.name
        return None

    async def _authenticate(self, message: Dict[str, Any]) -> bool:
        """An ``authenticate`` action, answered as AgentOS answers it; with client keys its token
        is one of them. True when it passed."""
        token = message.get("token")
        if not isinstance(token, str) or not token:
            await self._send_json({"event": "auth_error", "error": "Token is required"})
            return False
        if self.needs_key and self._login(token.encode()) is not None:
            self.auth_failures += 1
            if self.auth_failures >= MAX_AUTH_FAILURES:
                raise _Closing(POLICY_VIOLATION, "Too many failed authentication attempts")
            await self._send_json({"event": "auth_error", "error": "Invalid token"})
            return False
        if not self.settings.forward_authorization:  # else the upstream answers it
            await self._send_json({"event": "authenticated", "message": "Authentication successful. You can now send commands."})
        return True

    async def _checked(self, text: str, message: Optional[Dict[str, Any]]) -> Optional[Tuple[str, Optional[str], Optional[str]]]:
        """(text to send, workflow id, session id) of a client message the key may send, a
        ``start-workflow``'s session named; None when it was refused here (the client has been
        told)."""
        key = None
        if self.needs_key:
            key = self.door.keyring.keys.get(self.key_digest or b"")
            if key is None:  # gone with a reload
                self.key_digest = None
                await self._send_json(_AUTH_REQUIRED)
                return None
        action = message.get("action") if message is not None else None
        if action not in RUN_ACTIONS:
            if message is not None and key is not None and not key.grants.admin and action not in KNOWN_ACTIONS:
                await self._send_json({"event": "error", "error": f"Key {key.name!r} may not use this action"})
                return None
            return text, None, None
        assert message is not None
        workflow_id = message.get("workflow_id")
        workflow_id = workflow_id if isinstance(workflow_id, str) and workflow_id else None
        if key is not None and not key.grants.admin:
            if workflow_id is None or key.grants.refusal("POST", f"/workflows/{workflow_id}/runs") is not None:
                await self._send_json({"event": "error", "error": _REFUSALS[action]})
                return None
        if key is not None and key.bucket is not None and key.bucket.take():
            await self._send_json({"event": "error", "error": "Too many requests"})
            return None
        session_id = message.get("session_id")
        if action == "start-workflow" and session_id in (None, ""):
            session_id = message["session_id"] = new_uuid()  # named here, so its next turn comes back
            text = json.dumps(message)
        session_id = session_id if isinstance(session_id, str) and session_id else None
        try:
            check_id("session_id", session_id)
        except BadRequest as error:
            await self._send_json({"event": "error", "error": error.detail})
            return None
        return text, workflow_id, session_id

    # -- the upstream's side -----------------------------------------------------------------------

    def _upstreams(self, workflow_id: Optional[str]) -> List[Upstream]:
        """Those serving the workflow (as its REST runs are routed); else every one with the door."""
        if workflow_id is not None and is_valid_entity_id(workflow_id):
            target = self.door.directory.resolve(EntityKind.WORKFLOW, workflow_id)
            if isinstance(target, LocalEntity):
                self.state["entity"] = workflow_id
                return self.door.directory.local_data()
            if isinstance(target, Remote):
                self.state["entity"] = workflow_id
                return target.upstreams
        return self.fwd.pool.serving_door(Door.WEBSOCKET, WEBSOCKET_PATH)

    async def _connect(self, workflow_id: Optional[str], session_id: Optional[str]) -> None:
        """The upstream connection: the session's upstream, or the next of its order when one
        cannot be reached (nothing was sent to it yet), at most ``retry.max_attempts`` of them."""
        order = self.fwd.order(self.fwd.choose(self._upstreams(workflow_id), session_id))
        if not order:
            raise _Closing(TRY_AGAIN_LATER, "No upstream available")
        self.flight = flight = self.fwd.pool.flight()
        failure = ""
        for attempt, upstream in enumerate(order[: self.settings.retry.max_attempts]):
            if attempt:
                if not self.fwd.pool.may_retry():
                    break
                flight.mark_retry()
            flight.on(upstream)
            try:
                self.upstream_ws = await self._open(upstream)
            except _UpstreamRefused as refused:
                self.fwd.pool.record(upstream, refused.outcome)
                failure = f"Upstream {upstream.name}: {refused}"
                continue
            self.upstream = upstream
            self.state["upstream"] = upstream.name
            self.state["retries"] = attempt
            return
        raise _Closing(TRY_AGAIN_LATER, failure or "No upstream available")

    async def _open(self, upstream: Upstream) -> aiohttp.ClientWebSocketResponse:
        """The upstream's WebSocket, past its ``connected`` event and, when it asks for a key,
        authenticated with the upstream's own (the client's token is never sent, unless
        ``forward_authorization``)."""
        # The request id and trace context api/observe.py gave the connection.
        headers = {header: self.state[name] for name, header in (("request_id", "x-request-id"), ("traceparent", "traceparent")) if name in self.state}
        if self.settings.forward_authorization:
            authorization = request_header(self.scope, b"authorization")
            if authorization:
                headers["Authorization"] = authorization.decode("latin-1")
        else:
            headers.update(upstream.auth_headers)  # an AgentOS's security key guards its upgrade too
        limit = max(self.settings.doors.websocket_max_message_bytes, UPSTREAM_MESSAGE_FLOOR)
        ws: Optional[aiohttp.ClientWebSocketResponse] = None
        try:
            async with asyncio.timeout(self.settings.timeouts.first_byte_s):
                ws = await upstream.client().ws_connect(
                    upstream.base_url + WEBSOCKET_PATH, headers=headers, heartbeat=HEARTBEAT_S, max_msg_size=limit,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S),
                )  # fmt: skip
                hello = await _event(ws)
                if hello.get("requires_auth") and upstream.config.api_key and not self.settings.forward_authorization:
                    await ws.send_str(json.dumps({"action": "authenticate", "token": upstream.config.api_key}))
                    if (await _event(ws)).get("event") != "authenticated":
                        raise _UpstreamRefused("it refused the gateway's key", Outcome.SUCCESS)
            return ws
        except BaseException as error:
            if ws is not None:
                await ws.close()
            if isinstance(error, _UpstreamRefused):
                raise
            if isinstance(error, TimeoutError):
                raise _UpstreamRefused("no WebSocket handshake in time", Outcome.TIMEOUT) from None
            if isinstance(error, aiohttp.WSServerHandshakeError):
                raise _UpstreamRefused(f"handshake answered {error.status}", Outcome.of_status(error.status)) from None
            if isinstance(error, aiohttp.ClientConnectorError):
                raise _UpstreamRefused(f"cannot connect: {error.os_error}", Outcome.CONNECT_ERROR) from None
            if isinstance(error, (aiohttp.ClientError, OSError)):
                raise _UpstreamRefused(f"connection lost: {type(error).__name__}", Outcome.RESET) from None
            raise

    async def _to_upstream(self, text: str) -> None:
        ws = self.upstream_ws
        assert ws is not None and self.upstream is not None
        try:
            await ws.send_str(text)
        except (aiohttp.ClientError, OSError):  # lost: the other direction says how
            raise _Closing(BAD_GATEWAY, f"Upstream {self.upstream.name} closed the connection") from None

    async def _close_upstream(self, code: int, reason: str) -> None:
        ws = self.upstream_ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):  # best effort: bounded by ws_close
                await ws.close(code=code, message=_reason(reason).encode())


class _UpstreamRefused(Exception):
    def __init__(self, detail: str, outcome: Outcome) -> None:
        super().__init__(detail)
        self.outcome = outcome


_AUTH_REQUIRED = {"event": "auth_required", "error": "Authentication required. Send authenticate action with valid bearer token."}


async def _event(ws: aiohttp.ClientWebSocketResponse) -> Dict[str, Any]:
    """The upstream's next message as a JSON event (an empty dict when it is none)."""
    received = await ws.receive()
    if received.type is not aiohttp.WSMsgType.TEXT:
        raise _UpstreamRefused(f"closed the connection ({received.type.name})", Outcome.RESET)
    return json_object(received.data) or {}


def _reason(reason: str) -> str:
    """A close reason within the frame's 123 bytes."""
    encoded = reason.encode()
    return reason if len(encoded) <= MAX_REASON_BYTES else encoded[:MAX_REASON_BYTES].decode(errors="ignore")

"""MCP (streamable HTTP: ``POST``, ``GET``, ``DELETE <path>``): a session stays on the upstream
that issued it; a conversation's runs on one upstream.

AgentOS serves MCP with fastmcp. Two eras of the protocol reach it:

* **Sessions** (the ``initialize`` handshake, ``Client(mode="legacy")``): the ``initialize``
  answer carries an ``Mcp-Session-Id`` header and every later request of the session (``POST``,
  ``GET``: the server's own SSE stream, ``DELETE``: the end) carries it back. The session lives
  in that upstream's memory: another answers 404 ``Session not found`` and the client starts
  over. The gateway learns each id from the ``initialize`` answer (``mcp_sessions.McpSessions``,
  bounded, expiring) and sends the session's requests there only.
* **No session** (a stateless server, ``MCPConfig(stateless=True)``, or the sessionless 2026
  protocol fastmcp's client speaks by default): nothing to keep but the conversation. A
  ``tools/call`` goes by its ``session_id`` argument (the agno session its run continues), hashed
  as a run's session is, so a conversation's runs share an upstream. A ``run_agent``, ``run_team``
  or ``run_workflow`` without one starts a conversation: the gateway names it (a uuid4, as the
  upstream would: each such call is a new session there), so the result's ``session_id`` hashes
  to the same place when the client continues it.

The rule follows what the upstream answered, never a setting: a request with an
``Mcp-Session-Id`` is of a session; one without is sessionless (a stateful upstream answers a
sessionless ``tools/call`` 400 wherever it goes). Everything else without a session
(``initialize``, ``server/discover``, the lists) goes by rendezvous on the client: its key's name,
else its address, so a client that starts over lands where it was.

An id this gateway does not know (another replica learned it, or it expired here) is read back:
a JSON-RPC ``ping`` carrying it to every upstream of the door at once, bounded by
``READ_BACK_TIMEOUT_S``; the one that answers 200 and echoes the id holds the session (a stateless
upstream answers 200 without the header: the request is then sessionless). Nobody: the upstream's
own 404, which makes the client start over. An owner that refuses connections has lost its
sessions with its process: 404 too, and the record goes. A ``DELETE`` ends the record.

Keys: agno gates MCP per tool (``_require_tool_scopes``: the REST route each tool is equivalent
to); the gateway asks the key's ``Grants`` the same question before forwarding a ``tools/call``
(``tool_route``), and refuses with a JSON-RPC error (403). A tool the gateway cannot map
(custom tools, components published as their own tool) is refused to a limited key.

Limits (``within_slot``): a ``tools/call`` that runs takes a run slot, the ``GET`` stream a stream
slot; the rest none. Errors speak JSON-RPC: a body that is no JSON object is answered here
(-32700 / -32600, 400, never forwarded); an upstream that fails is a -32603 error with the
request's id, as the answer or as the last SSE event of a stream cut short.
"""

from __future__ import annotations

import asyncio
import json
import re
import weakref
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.forwarding import Forwarder, new_uuid
from gateway.api.limits import Limiter
from gateway.api.route_table import Match
from gateway.balancing import Affinity, Choice, Outcome
from gateway.doors.http import outgoing_for, text_at, upstream_path
from gateway.doors.mcp_sessions import McpSessions
from gateway.doors.membership import DoorPath
from gateway.errors import Busy, UpstreamFailure
from gateway.pool import Upstream
from gateway.sender import Outgoing
from gateway.wire.ids import MAX_ID_BYTES

SESSION_HEADER = "mcp-session-id"
# What a client's request may carry to the upstream besides the gateway's usual headers: the
# session, the protocol version, the 2026 protocol's routing headers (the server checks they match
# the body) and a stream's resumption point.
_FORWARDED_HEADERS = frozenset({SESSION_HEADER, "mcp-protocol-version", "mcp-method", "mcp-name", "last-event-id"})
_PARAM_HEADER_PREFIX = "mcp-param-"  # a tool's parameters mirrored in headers (2026)
_SESSION_ID = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII, as the transport's spec says
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{0,1024}")
ACCEPT_BOTH = "application/json, text/event-stream"
READ_BACK_TIMEOUT_S = 5.0

PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32602, -32603
FORBIDDEN = -32003  # the gateway's own, in JSON-RPC's server range: the key may not call this tool

# run tool -> (kind segment, the argument naming its entity)
_RUN_TOOLS = {"run_agent": ("agents", "agent_id"), "run_team": ("teams", "team_id"), "run_workflow": ("workflows", "workflow_id")}
_LIFECYCLE_TOOLS = {"continue_run": "continue", "cancel_run": "cancel"}
_RUNNING_TOOLS = frozenset({*_RUN_TOOLS, "continue_run"})

_STORES: "weakref.WeakKeyDictionary[Forwarder, McpSessions]" = weakref.WeakKeyDictionary()


def sessions_of(fwd: Forwarder) -> McpSessions:
    """The gateway's MCP session record (one per forwarder), under the settings in force."""
    doors = fwd.settings.doors
    store = _STORES.get(fwd)
    if store is None:
        store = _STORES[fwd] = McpSessions(doors.mcp_session_ttl_s, max_entries=doors.mcp_max_sessions)
    store.configure(doors.mcp_session_ttl_s, doors.mcp_max_sessions)
    return store


# -- JSON-RPC answers -------------------------------------------------------------------------------


def jsonrpc_error(request_id: Any, code: int, message: str, status: int, headers: Optional[Dict[str, str]] = None) -> Response:
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def session_not_found() -> Response:
    """What AgentOS's MCP server answers for a session it does not hold, byte for byte."""
    return jsonrpc_error(None, INVALID_REQUEST, "Session not found", 404)


class _Failure:
    """MCP's answer when the upstream fails one request: a -32603 error with its id."""

    def __init__(self, request_id: Any, on_owner_gone: Optional[Callable[[], None]] = None) -> None:
        self.request_id = request_id
        self.on_owner_gone = on_owner_gone  # a session's request: the session died with its upstream

    def answer(self, failure: UpstreamFailure) -> Response:
        if self.on_owner_gone is not None and failure.outcome is Outcome.CONNECT_ERROR:
            self.on_owner_gone()  # nothing listens where the session was: it is gone, start over
            return session_not_found()
        return jsonrpc_error(self.request_id, INTERNAL_ERROR, str(failure), failure.status_code)

    def frame(self, message: str) -> bytes:
        """The last event of a stream cut short, as MCP's server writes its events."""
        error = {"jsonrpc": "2.0", "id": self.request_id, "error": {"code": INTERNAL_ERROR, "message": message}}
        return b"event: message\ndata: " + json.dumps(error, separators=(",", ":")).encode() + b"\n\n"


# -- the message ------------------------------------------------------------------------------------


async def read_message(request: Request) -> Tuple[Optional[Dict[str, Any]], Optional[Response]]:
    """A POST's JSON-RPC message, or the error that answers a body that is none (read once per
    request: the slot and the handler both ask). ``(None, None)`` for a GET or a DELETE."""
    cached = getattr(request.state, "mcp_message", None)
    if cached is not None:
        return cached
    read: Tuple[Optional[Dict[str, Any]], Optional[Response]] = (None, None)
    if request.method == "POST":
        try:
            value = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            read = None, jsonrpc_error(None, PARSE_ERROR, f"Parse error: the body is not JSON ({type(error).__name__})", 400)
        else:
            if isinstance(value, dict):
                read = value, None
            else:
                detail = "Invalid Request: a message is one JSON-RPC object (batches are not served)"
                read = None, jsonrpc_error(None, INVALID_REQUEST, detail, 400)
    request.state.mcp_message = read
    return read


def _request_id(message: Optional[Dict[str, Any]]) -> Any:
    value = message.get("id") if message is not None else None
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def _tool_call(message: Optional[Dict[str, Any]]) -> Tuple[Optional[str], Dict[str, Any]]:
    """A ``tools/call``'s tool name and arguments; ``(None, {})`` for any other message."""
    if message is None or message.get("method") != "tools/call" or not isinstance(message.get("params"), dict):
        return None, {}
    params = message["params"]
    arguments = params.get("arguments")
    return text_at(params, "name"), arguments if isinstance(arguments, dict) else {}


def tool_route(name: Optional[str], arguments: Dict[str, Any]) -> Optional[Tuple[str, str]]:
    """The REST route (method, decoded path) agno checks a tool call's scopes against
    (``agno/os/mcp.py``, ``_require_tool_scopes``); None when the gateway cannot tell."""
    if name == "get_agentos_config":
        return "GET", "/config"
    if name == "get_sessions":
        return "GET", "/sessions"
    if name == "get_session_runs":
        session_id = text_at(arguments, "session_id")
        return ("GET", f"/sessions/{session_id}/runs") if session_id else None
    if name in _RUN_TOOLS:
        kind, field = _RUN_TOOLS[name]
        entity_id = text_at(arguments, field)
        return ("POST", f"/{kind}/{entity_id}/runs") if entity_id else None
    if name in _LIFECYCLE_TOOLS:  # exactly one owner named, as agno's _classify_lifecycle_target asks
        owners = [(kind, text_at(arguments, field)) for kind, field in _RUN_TOOLS.values() if text_at(arguments, field)]
        run_id = text_at(arguments, "run_id")
        if len(owners) != 1 or run_id is None:
            return None
        kind, entity_id = owners[0]
        return "POST", f"/{kind}/{entity_id}/runs/{run_id}/{_LIFECYCLE_TOOLS[name]}"
    return None


def _refusal(request: Request, message: Optional[Dict[str, Any]]) -> Optional[str]:
    """Why the request's key may not make this tool call (agno's per-tool check); None: it may."""
    grants = request.scope.get("state", {}).get("grants")  # set by api/auth.py when keys are configured
    if grants is None or grants.admin or message is None or message.get("method") != "tools/call":
        return None
    name, arguments = _tool_call(message)
    route = tool_route(name, arguments)
    if route is None:
        return f"Key {grants.name!r} may not call tool {name!r} with these arguments: no AgentOS route the gateway knows grants it"
    refusal = grants.refusal(*route)
    return str(refusal.detail) if refusal is not None else None


def _mcp_headers(request: Request) -> Dict[str, str]:
    """The MCP headers the upstream sees, each checked (``ValueError`` names a bad one)."""
    found: Dict[str, str] = {}
    for raw_name, raw_value in request.headers.raw:
        name = raw_name.decode("latin-1").lower()
        if name not in _FORWARDED_HEADERS and not name.startswith(_PARAM_HEADER_PREFIX):
            continue
        if name in found:
            raise ValueError(f"Bad Request: {name} given more than once")
        value = raw_value.decode("latin-1")
        if name == SESSION_HEADER and not _SESSION_ID.fullmatch(value):
            raise ValueError("Bad Request: Mcp-Session-Id must be 1 to 256 visible ASCII characters")
        if not _HEADER_VALUE.fullmatch(value):
            raise ValueError(f"Bad Request: {name} must be at most 1024 printable ASCII characters")
        found[name] = value
    return found


# -- limits ----------------------------------------------------------------------------------------


async def within_slot(limiter: Limiter, request: Request, answer: Callable[[], Awaitable[Response]]) -> Response:
    """``answer()`` within the slot the message needs: a run slot for a tool call that runs, a
    stream slot for the server's stream (GET), none for the rest (handshakes, lists, reads)."""
    message, _ = await read_message(request)
    if request.method == "GET":
        stream, holds_run = True, False
    elif _tool_call(message)[0] in _RUNNING_TOOLS:
        stream, holds_run = False, True
    else:
        return await answer()
    try:
        return await limiter.run(stream, answer, holds_run=holds_run)
    except Busy as busy:  # said in JSON-RPC, so the client shows it
        return jsonrpc_error(_request_id(message), INTERNAL_ERROR, str(busy.detail), busy.status_code, busy.headers)


# -- the handler -----------------------------------------------------------------------------------


async def answer(request: Request, fwd: Forwarder, matched: Match, door: DoorPath, upstreams: List[Upstream]) -> Response:
    message, bad_body = await read_message(request)
    if bad_body is not None:
        return bad_body
    request_id = _request_id(message)
    try:
        headers = _mcp_headers(request)
    except ValueError as error:
        return jsonrpc_error(request_id, INVALID_REQUEST, str(error), 400)
    refusal = _refusal(request, message)
    if refusal is not None:
        return jsonrpc_error(request_id, FORBIDDEN, refusal, 403)
    session_id = headers.get(SESSION_HEADER)
    if session_id is not None:
        owner = await _owner(request, fwd, matched, door, upstreams, session_id, headers)
        if owner is None:
            return session_not_found()
        if owner is not _STATELESS:
            assert isinstance(owner, Upstream)
            return await _to_owner(request, fwd, matched, door, owner, session_id, message, headers)
    return await _sessionless(request, fwd, matched, door, upstreams, message, headers)


def _outgoing(
    request: Request, matched: Match, door: DoorPath, message: Optional[Dict[str, Any]], headers: Dict[str, str],
    body: Optional[bytes],
) -> Outgoing:  # fmt: skip
    # A tool call's answer may come whole at its end (a server answering JSON): the whole-run
    # timeout bounds its head; anything else answers at once (the first-byte timeout).
    calls_tool = _tool_call(message)[0] is not None
    outgoing = outgoing_for(request, matched, door, body, stream=not calls_tool)
    outgoing.headers.update(headers)
    return outgoing


async def _to_owner(
    request: Request, fwd: Forwarder, matched: Match, door: DoorPath, owner: Upstream, session_id: str,
    message: Optional[Dict[str, Any]], headers: Dict[str, str],
) -> Response:  # fmt: skip
    """A session's request, to the upstream that holds the session (and nowhere else)."""
    store = sessions_of(fwd)
    failure = _Failure(_request_id(message), on_owner_gone=lambda: store.forget(session_id))
    body = await request.body() if request.method == "POST" else None
    outgoing = _outgoing(request, matched, door, message, headers, body)
    response = await fwd.forward(
        request, Choice([owner.name], Affinity.HIT), outgoing, with_affinity=False,
        stream_error=failure.frame, failure_answer=failure.answer,
    )  # fmt: skip
    if request.method == "DELETE" or response.status_code == 404:  # ended, or lost with a restart
        store.forget(session_id)
    return response


async def _sessionless(
    request: Request, fwd: Forwarder, matched: Match, door: DoorPath, upstreams: List[Upstream],
    message: Optional[Dict[str, Any]], headers: Dict[str, str],
) -> Response:  # fmt: skip
    """A request of no session: a tool call by its conversation, the rest by the client. An
    ``initialize`` answered with a session teaches the gateway where that session lives."""
    request_id = _request_id(message)
    body = await request.body() if request.method == "POST" else None
    key, made = _conversation(message)
    if key is not None and len(key.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return jsonrpc_error(request_id, INVALID_PARAMS, f"Invalid params: session_id longer than {MAX_ID_BYTES} bytes", 400)
    if made:
        body = json.dumps(message, separators=(",", ":")).encode()  # ASCII: a lone surrogate stays escaped
    choice = fwd.choose(upstreams, key if key is not None else _client(request), session_is_new=made)
    if not choice.order:
        busy = fwd.unavailable()
        return jsonrpc_error(request_id, INTERNAL_ERROR, str(busy.detail), busy.status_code, busy.headers)
    failure = _Failure(request_id)
    outgoing = _outgoing(request, matched, door, message, headers, body)
    response = await fwd.forward(
        request, choice, outgoing, stream_error=failure.frame, failure_answer=failure.answer
    )  # fmt: skip
    issued = response.headers.get(SESSION_HEADER) if 200 <= response.status_code < 300 else None
    upstream = getattr(request.state, "upstream", None)
    if issued is not None and upstream is not None and _SESSION_ID.fullmatch(issued):
        sessions_of(fwd).remember(issued, upstream)
    return response


def _conversation(message: Optional[Dict[str, Any]]) -> Tuple[Optional[str], bool]:
    """A tool call's conversation: its ``session_id`` argument; for a run tool without one, a new
    id written into the message (whether it was made here). None for anything else."""
    name, arguments = _tool_call(message)
    if name is None:
        return None, False
    session_id = arguments.get("session_id")
    if isinstance(session_id, str) and session_id:
        return session_id, False
    if name in _RUN_TOOLS and session_id in (None, "") and message is not None and isinstance(message["params"].get("arguments"), dict):
        made = message["params"]["arguments"]["session_id"] = new_uuid()
        return made, True
    return None, False


def _client(request: Request) -> Optional[str]:
    """Who the client is, for rendezvous: its key's name when keys are configured, else its address."""
    key = request.scope.get("state", {}).get("api_key")
    if key:
        return str(key)
    return request.client.host if request.client is not None else None


# -- read-back -------------------------------------------------------------------------------------


class _Stateless:
    """The read-back's verdict when only stateless upstreams answered: the id means nothing."""


_STATELESS = _Stateless()


async def _owner(
    request: Request, fwd: Forwarder, matched: Match, door: DoorPath, upstreams: List[Upstream], session_id: str,
    headers: Dict[str, str],
) -> Union[Upstream, _Stateless, None]:
    """The upstream that holds ``session_id``: remembered, else read back (and remembered)."""
    store = sessions_of(fwd)
    name = store.owner(session_id)
    remembered = next((upstream for upstream in upstreams if upstream.name == name), None)
    if remembered is not None:
        return remembered
    found = await _read_back(request, fwd, upstream_path(request, matched, door), upstreams, session_id, headers)
    if isinstance(found, Upstream):
        store.remember(session_id, found.name)
    else:
        store.forget(session_id)  # held nowhere now (or by an upstream that left the pool)
    return found


async def _read_back(
    request: Request, fwd: Forwarder, path: str, upstreams: List[Upstream], session_id: str, headers: Dict[str, str]
) -> Union[Upstream, _Stateless, None]:
    """Ask every upstream at once with a ``ping`` in the session; the first that holds it wins."""
    ping = json.dumps({"jsonrpc": "2.0", "id": f"agentos-gateway-{new_uuid()}", "method": "ping"}).encode()
    sent = {
        **fwd.forwarded_headers(request), "content-type": "application/json", "accept": ACCEPT_BOTH,
        **{name: value for name, value in headers.items() if name in (SESSION_HEADER, "mcp-protocol-version")},
    }  # fmt: skip
    outgoing = [Outgoing("POST", path, dict(sent), ping, expects_stream=True) for _ in upstreams]
    tasks = [asyncio.ensure_future(_ping(fwd, upstream, each)) for upstream, each in zip(upstreams, outgoing)]
    stateless = False
    try:
        async with asyncio.timeout(READ_BACK_TIMEOUT_S):
            for next_answer in asyncio.as_completed(tasks):
                upstream, echoed = await next_answer
                if echoed == session_id:
                    return upstream
                stateless = stateless or echoed == ""
    except TimeoutError:
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return _STATELESS if stateless else None


async def _ping(fwd: Forwarder, upstream: Upstream, outgoing: Outgoing) -> Tuple[Upstream, Optional[str]]:
    """``upstream``'s answer to the ping: the session id it echoed with a 200 (``""``: a 200
    without one, a stateless server), else None. Only the head is read."""
    flight = fwd.pool.flight()
    outcome: Optional[Outcome] = None
    try:
        opened = await fwd.sender.open([upstream], outgoing, flight)
    except UpstreamFailure:
        flight.finish()  # its outcome was recorded when it happened
        return upstream, None
    except BaseException:
        flight.finish()
        raise
    response = opened.response
    try:
        outcome = Outcome.of_status(response.status, response.content_type == "application/json")
        if response.status != 200:
            return upstream, None
        return upstream, response.headers.get(SESSION_HEADER, "")
    finally:
        response.close()
        flight.finish(outcome)

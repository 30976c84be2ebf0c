"""MCP through the gateway (``gateway/doors/mcp.py``): sessions stay on the upstream that issued
them, through this gateway and a replica; sessionless calls by their conversation; keys checked per
tool; JSON-RPC errors for what goes wrong; the session record's bounds.

Real parts: AgentOS upstreams serving MCP (stateful, and ``stateless-mcp``), real gateway
processes, fastmcp's own client (``mode="legacy"``: the ``initialize`` handshake and its
``Mcp-Session-Id``; the default: the sessionless 2026 protocol) and, where a test needs to see
the wire, the protocol's requests by hand.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp import MCPError
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.limits import Limiter
from gateway.balancing import Outcome
from gateway.balancing.hashing import rank
from gateway.doors import mcp as mcp_door
from gateway.doors.mcp_sessions import ENTRY_OVERHEAD_BYTES, McpSessions
from gateway.errors import UpstreamFailure
from gateway.retry import RequestState
from gateway.settings import LimitSettings
from tests.pools import answered_by, gateway_config, start_gateway, start_upstreams, upstream_states, wait_for_door
from tests.processes import Server

STATEFUL = ("mcp-a", "mcp-b")
STATELESS = ("mcp-sl-a", "mcp-sl-b")
AGENT = "echo-agent"
SESSION_NOT_FOUND = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}}
LEGACY_VERSION = "2025-06-18"
ACCEPT = "application/json, text/event-stream"
TEAM_KEY = "mcp-team-only-key-0123456789"
SLOW = "slow: " + " ".join(f"w{index}" for index in range(40))  # 10 s of chunks: cut long before its end


def _client_keys() -> List[Tuple[str, str]]:
    """Four full-access keys (name, secret) whose names hash two to each stateful upstream: the
    gateway places a client's ``initialize`` by its key's name."""
    chosen: Dict[str, List[str]] = {name: [] for name in STATEFUL}
    for index in range(100):
        name = f"client-{index}"
        home = rank(name, [(upstream, 1.0) for upstream in STATEFUL])[0]
        if len(chosen[home]) < 2:
            chosen[home].append(name)
    names = [name for home in STATEFUL for name in chosen[home]]
    assert len(names) == 4
    return [(name, f"{name}-secret-0123456789") for name in names]


CLIENT_KEYS = _client_keys()
KEYS = [{"name": name, "key": secret} for name, secret in CLIENT_KEYS] + [
    {"name": "team-only", "key": TEAM_KEY, "entities": ["echo-team"]}
]
ANY_KEY = CLIENT_KEYS[0][1]


def _auth(key: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Pool:
    def __init__(self, stateful: List[Server], stateless: List[Server], gateway: Server, replica: Server, sessionless: Server):
        self.stateful, self.stateless = stateful, stateless
        self.gateway, self.replica, self.sessionless = gateway, replica, sessionless

    def upstream(self, name: str) -> Server:
        return next(server for server in self.stateful if server.name == name)


@pytest.fixture(scope="module")
def pool(log_dir: Path) -> Iterator[Pool]:
    """Two stateful MCP upstreams behind a gateway and its replica (same keys), two stateless ones
    behind a third gateway; everything started in parallel."""
    started: List[Server] = []
    with ThreadPoolExecutor(max_workers=4) as threads:
        try:
            stateful = list(threads.map(lambda name: start_upstreams([name], log_dir, doors="all")[0], STATEFUL))
            started += stateful
            stateless = list(threads.map(lambda name: start_upstreams([name], log_dir, doors="stateless-mcp")[0], STATELESS))
            started += stateless
            keyed = gateway_config(stateful, auth={"keys": KEYS})
            gateways = list(threads.map(
                lambda args: start_gateway(args[0], args[1], log_dir),
                [("mcp-gateway", keyed), ("mcp-replica", keyed), ("mcp-sessionless", gateway_config(stateless))],
            ))  # fmt: skip
            started += gateways
            for gateway, upstreams in zip(gateways, (STATEFUL, STATEFUL, STATELESS)):
                wait_for_door(gateway, "mcp", upstreams)
        except BaseException:
            for server in started:
                server.stop()
            raise
    yield Pool(stateful, stateless, *gateways)
    for server in reversed(started):
        server.stop()


def _client(url: str, key: Optional[str] = None, mode: str = "legacy") -> Client:
    transport = StreamableHttpTransport(url + "/mcp", headers=_auth(key) if key else None)
    return Client(transport, mode=mode, timeout=30)


async def _run(client: Client, session_id: Optional[str], message: str = "hello", **extra: Any) -> Tuple[str, int, Dict[str, Any]]:
    arguments: Dict[str, Any] = {"agent_id": AGENT, "message": message, **extra}
    if session_id is not None:
        arguments["session_id"] = session_id
    result = await client.call_tool("run_agent", arguments)
    instance, history = answered_by(result.content[0].text)
    return instance, history, result.structured_content or {}


# -- the protocol by hand ----------------------------------------------------------------------------


async def _post(http: httpx.AsyncClient, url: str, message: Any, session_id: Optional[str] = None, **headers: str) -> httpx.Response:
    sent = {"Accept": ACCEPT, "Content-Type": "application/json", "Mcp-Protocol-Version": LEGACY_VERSION, **headers}
    if session_id is not None:
        sent["Mcp-Session-Id"] = session_id
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return await http.post(url + "/mcp", content=body, headers=sent)


def _answer(response: httpx.Response) -> Dict[str, Any]:
    """The JSON-RPC answer of a POST: its JSON body, or its SSE stream's last message."""
    if response.headers["content-type"].startswith("application/json"):
        return response.json()
    messages = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    return [message for message in messages if "id" in message][-1]


async def _initialize(http: httpx.AsyncClient, url: str) -> httpx.Response:
    params = {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "by-hand", "version": "1"}}
    response = await _post(http, url, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    initialized = await _post(http, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session_id)
    assert initialized.status_code == 202, initialized.text
    return response


def _tool_call(name: str, arguments: Dict[str, Any], request_id: int = 7) -> Dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


# -- the session record: pure -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_record_remembers_refreshes_on_use_and_expires() -> None:
    clock = Clock()
    sessions = McpSessions(ttl_s=10, clock=clock)
    sessions.remember("s1", "a")
    sessions.remember("s2", "b")
    assert sessions.owner("s1") == "a" and sessions.owner("unknown") is None
    clock.now = 8.0
    assert sessions.owner("s1") == "a"  # a use: s1 now lives until 18
    clock.now = 12.0
    assert sessions.owner("s2") is None and sessions.owner("s1") == "a"
    clock.now = 30.0
    assert sessions.owner("s1") is None and len(sessions) == 0 and sessions.bytes == 0


def test_record_charges_each_id_and_sweeps_lazily() -> None:
    clock = Clock()
    sessions = McpSessions(ttl_s=5, clock=clock)
    long_id = "x" * 256
    sessions.remember(long_id, "a")
    sessions.remember("short", "b")
    assert sessions.bytes == sys.getsizeof(long_id) + sys.getsizeof("short") + 2 * ENTRY_OVERHEAD_BYTES
    clock.now = 5.0
    sessions.remember("new", "a")  # adding drops the expired ones at the front
    assert len(sessions) == 1 and sessions.bytes == sys.getsizeof("new") + ENTRY_OVERHEAD_BYTES
    sessions.forget("new")
    sessions.forget("never-there")
    assert len(sessions) == 0 and sessions.bytes == 0


def test_record_bounded_in_entries_and_bytes_the_least_used_going_first() -> None:
    sessions = McpSessions(ttl_s=60, max_entries=3)
    for index in range(5):
        sessions.remember(f"s{index}", "a")
    assert len(sessions) == 3 and sessions.owner("s0") is None and sessions.owner("s4") == "a"
    sessions.owner("s2")  # used: s3 is now the least recently used
    sessions.remember("s5", "a")
    assert sessions.owner("s3") is None and sessions.owner("s2") == "a"

    cost = sys.getsizeof("y" * 200 + "0") + ENTRY_OVERHEAD_BYTES
    by_bytes = McpSessions(ttl_s=60, max_bytes=cost * 2)
    for index in range(10):
        by_bytes.remember("y" * 200 + str(index), "a")
    assert len(by_bytes) == 2 and by_bytes.bytes <= cost * 2 and by_bytes.owner("y" * 200 + "9") == "a"

    sessions.configure(ttl_s=60, max_entries=1)  # a reload that lowers the bound: applied at the next entry
    sessions.remember("s6", "b")
    assert len(sessions) == 1 and sessions.owner("s6") == "b"


def test_tool_routes_are_agnos_scope_checks() -> None:
    """Each tool maps to the REST route agno's ``_require_tool_scopes`` checks."""
    route = mcp_door.tool_route
    assert route("get_agentos_config", {}) == ("GET", "/config")
    assert route("run_agent", {"agent_id": "x", "message": "m"}) == ("POST", "/agents/x/runs")
    assert route("run_team", {"team_id": "t"}) == ("POST", "/teams/t/runs")
    assert route("run_workflow", {"workflow_id": "w"}) == ("POST", "/workflows/w/runs")
    assert route("continue_run", {"run_id": "r", "session_id": "s", "team_id": "t"}) == ("POST", "/teams/t/runs/r/continue")
    assert route("cancel_run", {"run_id": "r", "agent_id": "x"}) == ("POST", "/agents/x/runs/r/cancel")
    assert route("get_sessions", {"session_type": "team"}) == ("GET", "/sessions")
    assert route("get_session_runs", {"session_id": "s"}) == ("GET", "/sessions/s/runs")
    # what the gateway cannot tell: refused to a limited key
    assert route("run_agent", {"message": "no agent"}) is None
    assert route("cancel_run", {"run_id": "r", "agent_id": "x", "team_id": "t"}) is None
    assert route("my_custom_tool", {}) is None


def test_an_upstream_failure_speaks_json_rpc() -> None:
    """As the answer (-32603 with the request's id; a session's owner that refuses connections:
    the session is gone, 404) and as a cut stream's last SSE event."""
    upstream: Any = SimpleNamespace(name="mcp-x")
    lost: List[bool] = []
    failure = mcp_door._Failure(5, on_owner_gone=lambda: lost.append(True))
    reset = UpstreamFailure(upstream, Outcome.RESET, RequestState.SENT, 502, "connection lost before an answer")
    answer = failure.answer(reset)
    assert answer.status_code == 502 and not lost
    assert json.loads(bytes(answer.body)) == {
        "jsonrpc": "2.0", "id": 5, "error": {"code": -32603, "message": "Upstream mcp-x: connection lost before an answer"}
    }  # fmt: skip
    refused = UpstreamFailure(upstream, Outcome.CONNECT_ERROR, RequestState.NOT_SENT, 502, "cannot connect")
    gone = failure.answer(refused)
    assert gone.status_code == 404 and json.loads(bytes(gone.body)) == SESSION_NOT_FOUND and lost == [True]
    assert mcp_door._Failure(None).answer(refused).status_code == 502  # no session: nothing was lost
    frame = failure.frame("Upstream mcp-x: cut")
    assert frame.startswith(b"event: message\ndata: ") and frame.endswith(b"\n\n")
    assert json.loads(frame[len(b"event: message\ndata: "):]) == {
        "jsonrpc": "2.0", "id": 5, "error": {"code": -32603, "message": "Upstream mcp-x: cut"}
    }  # fmt: skip


def _request(method: str, body: bytes = b"") -> Request:
    async def receive() -> Dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": method, "path": "/mcp", "headers": [], "query_string": b""}
    return Request(scope, receive)


async def test_slots_a_run_for_running_tools_a_stream_for_the_server_stream() -> None:
    limiter = Limiter(LimitSettings(max_concurrent_runs=1, max_streams=1))
    seen: List[Tuple[int, int]] = []

    async def answer() -> Response:
        seen.append((limiter.runs, limiter.streams))
        return Response(b"")

    run = json.dumps(_tool_call("run_agent", {"agent_id": AGENT, "message": "m"})).encode()
    listing = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    for method, body in (("GET", b""), ("POST", run), ("POST", listing), ("DELETE", b"")):
        response = await mcp_door.within_slot(limiter, _request(method, body), answer)
        await response({"type": "http"}, _request(method).receive, _noop_send)  # sent: the slot is given back
    assert seen == [(0, 1), (1, 0), (0, 0), (0, 0)]
    assert (limiter.runs, limiter.streams) == (0, 0)

    held = limiter.acquire(stream=False)  # every run slot taken: a running tool call is told so in JSON-RPC
    busy = await mcp_door.within_slot(limiter, _request("POST", run), answer)
    held()
    assert busy.status_code == 503 and "Retry-After" in busy.headers
    error = json.loads(bytes(busy.body))
    assert error["id"] == 7 and error["error"]["code"] == -32603 and "runs in progress" in error["error"]["message"]


async def _noop_send(message: Dict[str, Any]) -> None:
    return None


# -- through the gateways -----------------------------------------------------------------------------


async def test_unknown_session_is_the_upstreams_own_not_found(pool: Pool) -> None:
    """An id no upstream holds (both were asked): AgentOS's 404, so clients start over; for a
    GET and a DELETE too."""
    async with httpx.AsyncClient(timeout=30, headers=_auth(ANY_KEY)) as http:
        direct = await _post(http, pool.stateful[0].url, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, "no-such-session")
        assert direct.status_code == 404 and direct.json() == SESSION_NOT_FOUND
        for gateway in (pool.gateway, pool.replica):
            answer = await _post(http, gateway.url, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, "no-such-session")
            assert answer.status_code == 404 and answer.content == direct.content
            for method in ("GET", "DELETE"):
                other = await http.request(method, gateway.url + "/mcp", headers={"Accept": ACCEPT, "Mcp-Session-Id": "nope"})
                assert other.status_code == 404 and other.json() == SESSION_NOT_FOUND


async def test_bad_bodies_and_headers_are_answered_here(pool: Pool) -> None:
    """Nothing malformed reaches an upstream: JSON-RPC's own errors, 400, and the upstreams stay
    healthy."""
    async with httpx.AsyncClient(timeout=30, headers=_auth(ANY_KEY)) as http:
        url = pool.gateway.url
        parse = await _post(http, url, b'{"jsonrpc": "2.0", "id": 1, "method": ')
        assert parse.status_code == 400 and parse.json()["error"]["code"] == -32700 and parse.json()["id"] is None
        batch = await _post(http, url, [{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
        assert batch.status_code == 400 and batch.json()["error"]["code"] == -32600
        for bad in ("has space", "x" * 257, b"caf\xe9"):
            answer = await _post(http, url, {"jsonrpc": "2.0", "id": 3, "method": "ping"}, **{"Mcp-Session-Id": bad})  # type: ignore[arg-type]
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"] == {"code": -32600, "message": "Bad Request: Mcp-Session-Id must be 1 to 256 visible ASCII characters"}
            assert answer.json()["id"] == 3
        twice = await http.post(
            url + "/mcp", content=b'{"jsonrpc":"2.0","id":4,"method":"ping"}',
            headers=[("Accept", ACCEPT), ("Content-Type", "application/json"), ("Mcp-Session-Id", "a"), ("Mcp-Session-Id", "b")],
        )  # fmt: skip
        assert twice.status_code == 400 and "more than once" in twice.json()["error"]["message"]
    states = await upstream_states(pool.gateway)
    assert all(states[name]["state"] == "healthy" for name in STATEFUL), states


async def test_a_replica_continues_a_session_it_did_not_start(pool: Pool) -> None:
    """``initialize`` through one gateway, the session's calls through another: the replica reads
    the owner back from the upstreams and remembers it; a DELETE ends it everywhere."""
    async with httpx.AsyncClient(timeout=30, headers=_auth(ANY_KEY)) as http:
        started = await _initialize(http, pool.gateway.url)
        session_id, home = started.headers["mcp-session-id"], started.headers["x-agentos-gateway-upstream"]
        conversation = f"replica-{uuid.uuid4()}"
        for turn, gateway in enumerate((pool.replica, pool.replica, pool.gateway)):
            call = _tool_call("run_agent", {"agent_id": AGENT, "message": "hi", "session_id": conversation}, turn)
            answer = await _post(http, gateway.url, call, session_id)
            assert answer.status_code == 200, answer.text
            assert answer.headers["mcp-session-id"] == session_id and answer.headers["x-agentos-gateway-upstream"] == home
            result = _answer(answer)["result"]
            assert answered_by(result["content"][0]["text"]) == (home, 2 * turn)
        ended = await http.delete(pool.replica.url + "/mcp", headers={"Mcp-Session-Id": session_id, "Mcp-Protocol-Version": LEGACY_VERSION})
        assert ended.status_code == 200, ended.text
        # the first gateway still remembers the session's upstream, which no longer holds it
        after = await _post(http, pool.gateway.url, {"jsonrpc": "2.0", "id": 9, "method": "ping"}, session_id)
        assert after.status_code == 404 and after.json() == SESSION_NOT_FOUND


async def test_a_key_is_checked_per_tool(pool: Pool) -> None:
    """A key that may run the team only: its agent runs are refused (403, JSON-RPC) and never
    reach an upstream; its team runs, and the handshake and the lists, go through."""
    async with _client(pool.gateway.url, TEAM_KEY) as client:
        assert "run_agent" in {tool.name for tool in await client.list_tools()}
        with pytest.raises(MCPError, match="may not use agents 'echo-agent'"):
            await _run(client, "refused")
        team = await client.call_tool("run_team", {"team_id": "echo-team", "message": "hello"})
        assert answered_by(team.content[0].text)[0] in STATEFUL
    async with httpx.AsyncClient(timeout=30, headers=_auth(TEAM_KEY)) as http:
        session_id = (await _initialize(http, pool.gateway.url)).headers["mcp-session-id"]
        for name, arguments in (("run_agent", {"agent_id": AGENT, "message": "m"}), ("my_custom_tool", {})):
            refused = await _post(http, pool.gateway.url, _tool_call(name, arguments, 11), session_id)
            assert refused.status_code == 403, refused.text
            assert refused.json()["id"] == 11 and refused.json()["error"]["code"] == -32003
        sessions = await _post(http, pool.gateway.url, _tool_call("get_sessions", {}), session_id)
        assert sessions.status_code == 403 and "sessions:read" in sessions.json()["error"]["message"]


async def test_sessionless_calls_go_by_their_conversation(pool: Pool) -> None:
    """Stateless upstreams (no ``Mcp-Session-Id``), with the 2026 protocol and with the handshake:
    each conversation's runs land on one upstream, its history growing; a run without a
    ``session_id`` gets one the gateway names, and continuing it finds its history."""
    for mode in ("auto", "legacy"):
        async with _client(pool.sessionless.url, mode=mode) as client:
            assert client.transport.get_session_id() is None
            for conversation, home in _spread(f"sessionless-{mode}-{uuid.uuid4()}-", STATELESS):
                answers = [await _run(client, conversation) for _ in range(3)]
                assert [answer[:2] for answer in answers] == [(home, 0), (home, 2), (home, 4)], (mode, conversation)
            instance, history, result = await _run(client, None)
            named = result["session_id"]
            assert uuid.UUID(named).version == 4 and history == 0
            assert (await _run(client, named))[:2] == (instance, 2)
    # the same over the stateful pool with the sessionless protocol (no initialize, no session)
    async with _client(pool.gateway.url, ANY_KEY, mode="auto") as client:
        assert [(await _run(client, "modern-on-stateful"))[1] for _ in range(3)] == [0, 2, 4]


def _spread(prefix: str, upstreams: Tuple[str, ...]) -> List[Tuple[str, str]]:
    """Two conversation ids per upstream, with the upstream the gateway's rendezvous hash gives each."""
    found: List[Tuple[str, str]] = []
    index = 0
    while len(found) < 2 * len(upstreams):
        candidate = f"{prefix}{index}"
        home = rank(candidate, [(name, 1.0) for name in upstreams])[0]
        if sum(1 for _, other in found if other == home) < 2:
            found.append((candidate, home))
        index += 1
    return found


async def test_four_clients_then_the_upstream_of_one_dies(pool: Pool) -> None:
    """Four clients at once (two per upstream, by their keys), each: the handshake, the tools, three
    runs of one conversation on its session's upstream. Then that upstream of one client dies in
    the middle of a run: the run ends in a JSON-RPC error, the session is gone (404), and a new
    session through the gateway lands on the upstream left. Last: it kills an upstream."""

    async def one_client(key: str) -> str:
        async with _client(pool.gateway.url, key) as client:
            assert client.transport.get_session_id() is not None  # a stateful session
            assert {"run_agent", "get_agentos_config"} <= {tool.name for tool in await client.list_tools()}
            conversation = f"four-{key[:9]}-{uuid.uuid4()}"
            answers = [await _run(client, conversation) for _ in range(3)]
            home = answers[0][0]
            assert [answer[:2] for answer in answers] == [(home, 0), (home, 2), (home, 4)]
            return home

    homes = await asyncio.wait_for(asyncio.gather(*(one_client(secret) for _, secret in CLIENT_KEYS)), 60)
    expected = [rank(name, [(upstream, 1.0) for upstream in STATEFUL])[0] for name, _ in CLIENT_KEYS]
    assert homes == expected  # each key's sessions start where its name hashes

    name, key = CLIENT_KEYS[0]
    victim = pool.upstream(expected[0])
    async with _client(pool.gateway.url, key) as client:
        assert (await _run(client, "before"))[0] == victim.name
        started = asyncio.Event()

        async def progress(progress: float, total: Optional[float], message: Optional[str]) -> None:
            started.set()

        cut = asyncio.ensure_future(
            client.call_tool("run_agent", {"agent_id": AGENT, "message": SLOW}, progress_handler=progress)
        )
        await asyncio.wait_for(started.wait(), 20)  # the run is under way on the victim
        victim.process.kill()
        victim.process.wait(timeout=10)
        with pytest.raises(MCPError, match=f"Upstream {victim.name}: the connection was lost mid-stream"):
            await asyncio.wait_for(cut, 20)
        with pytest.raises(MCPError, match="Session not found"):  # its session died with its process
            await _run(client, "after")

    survivor = next(upstream for upstream in STATEFUL if upstream != victim.name)
    async with _client(pool.gateway.url, key) as client:  # starting over: a new session, elsewhere
        conversation = f"recovered-{uuid.uuid4()}"
        assert [(await _run(client, conversation))[:2] for _ in range(3)] == [(survivor, 0), (survivor, 2), (survivor, 4)]

"""AG-UI and A2A through a real gateway, in front of real AgentOS upstreams serving both doors,
each with its own in-memory database: a conversation (an AG-UI thread, an A2A context) keeps its
upstream and its history; a cut stream ends in the protocol's own error; bad input gets the
upstream's own answer or a clear JSON-RPC error, never a gateway 500.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import httpx
import pytest

from gateway.api.forwarding import UPSTREAM_HEADER
from tests.pools import answered_by, gateway_config, start_gateway, start_upstreams, upstream_states
from tests.processes import Server

NAMES = ["door-a", "door-b", "door-c"]
KEY = "door-key-0123456789abcdef"
TEAM_KEY = "door-team-key-0123456789"


@pytest.fixture(scope="module")
def pool(log_dir: Path) -> Iterator[Tuple[Server, Dict[str, Server]]]:
    upstreams = start_upstreams(NAMES, log_dir, doors="all")
    keys = [
        {"name": "all", "key": KEY},
        {"name": "team-only", "key": TEAM_KEY, "scopes": ["teams:echo-team:run", "teams:echo-team:read"]},
    ]
    gateway = start_gateway("door-gateway", gateway_config(upstreams, auth={"keys": keys}), log_dir)
    yield gateway, {server.name: server for server in upstreams}
    gateway.stop()
    for server in upstreams:
        server.stop()


def _headers(key: str = KEY) -> Dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _agui_body(thread_id: str, text: str) -> Dict[str, Any]:
    message = {"id": str(uuid.uuid4()), "role": "user", "content": text}
    return {"threadId": thread_id, "runId": str(uuid.uuid4()), "messages": [message], "state": {}, "tools": [], "context": [], "forwardedProps": {}}


async def _agui_run(client: httpx.AsyncClient, thread_id: str, text: str) -> Tuple[str, List[Dict[str, Any]]]:
    """(the upstream that answered, the AG-UI events)."""
    events = []
    async with client.stream("POST", "/agui", json=_agui_body(thread_id, text), headers=_headers()) as answer:
        assert answer.status_code == 200, await answer.aread()
        assert answer.headers["content-type"].startswith("text/event-stream")
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
        return answer.headers[UPSTREAM_HEADER], events


def _text(events: List[Dict[str, Any]]) -> str:
    return "".join(event["delta"] for event in events if event["type"] == "TEXT_MESSAGE_CONTENT")


# -- AG-UI -------------------------------------------------------------------------------------------


async def test_agui_threads_keep_their_upstream_and_history(pool) -> None:
    gateway, _ = pool
    threads = [f"agui-thread-{number}" for number in range(9)]
    homes: Dict[str, str] = {}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        for turn in range(2):
            answers = await asyncio.gather(*(_agui_run(client, thread, f"turn {turn}") for thread in threads))
            for thread, (upstream, events) in zip(threads, answers):
                assert [events[0]["type"], events[-1]["type"]] == ["RUN_STARTED", "RUN_FINISHED"]
                assert events[0]["threadId"] == thread
                instance, history = answered_by(_text(events))
                assert instance == upstream == homes.setdefault(thread, upstream), (thread, turn)
                assert history == 2 * turn  # the thread's agno session grows on its upstream
    spread = Counter(homes.values())
    print(f"AG-UI: 9 threads over the upstreams: {dict(sorted(spread.items()))}")
    assert len(spread) >= 2


async def test_agui_client_leaving_cancels_the_run_upstream(pool) -> None:
    gateway, upstreams = pool
    thread = f"agui-leaves-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        body = _agui_body(thread, "slow: " + " ".join(["word"] * 40))
        async with client.stream("POST", "/agui", json=body, headers=_headers()) as answer:
            home = upstreams[answer.headers[UPSTREAM_HEADER]]
            async for line in answer.aiter_lines():
                if "TEXT_MESSAGE_CONTENT" in line:
                    break  # and leave
        statuses: List[str] = []
        async with asyncio.timeout(20):  # the upstream records the run as cancelled once it notices
            while statuses != ["CANCELLED"]:
                runs = await client.get(f"{home.url}/sessions/{thread}/runs", params={"type": "agent"})
                statuses = [run["status"] for run in runs.json()] if runs.status_code == 200 else []
                if statuses != ["CANCELLED"]:
                    assert statuses in ([], ["RUNNING"]), statuses
                    await asyncio.sleep(0.1)


async def test_agui_bad_bodies_get_agentos_answer(pool) -> None:
    gateway, _ = pool
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=_headers()) as client:
        missing = await client.post("/agui", json={"runId": "r", "messages": []})
        assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "threadId"]
        assert missing.headers[UPSTREAM_HEADER] in NAMES  # the upstream's own answer
        malformed = await client.post("/agui", content=b"{not json", headers={"content-type": "application/json"})
        assert malformed.status_code == 422 and malformed.json()["detail"][0]["type"] == "json_invalid"
        huge_id = await client.post("/agui", json=_agui_body("t" * 300, "hi"))
        assert huge_id.status_code == 400 and "threadId" in huge_id.json()["detail"]
        status = await client.get("/status")
        assert status.status_code == 200 and status.json() == {"status": "available"}
        config = (await client.get("/config")).json()
        assert {"type": "agui", "route": ""} in [{k: i[k] for k in ("type", "route")} for i in config["interfaces"]]
    doors = (await upstream_states(gateway))["door-a"]["doors"]
    assert [(door["door"], door["prefix"]) for door in doors] == [("a2a", "/a2a"), ("agui", ""), ("mcp", "/mcp"), ("websocket", "/workflows/ws")]


async def test_agui_needs_the_run_scope(pool) -> None:
    gateway, _ = pool
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        refused = await client.post("/agui", json=_agui_body("scoped", "hi"), headers=_headers(TEAM_KEY))
        assert refused.status_code == 403 and "agents:run" in refused.json()["detail"]
        unknown = await client.post("/agui", json=_agui_body("scoped", "hi"))
        assert unknown.status_code == 401


# -- A2A -----------------------------------------------------------------------------------------------


def _remote(gateway: Server):  # type: ignore[no-untyped-def]
    from agno.agent import RemoteAgent

    return RemoteAgent(base_url=f"{gateway.url}/a2a/agents/echo-agent", agent_id="echo-agent", protocol="a2a")


async def _a2a_turn(agent, text: str, session_id: str, stream: bool) -> str:  # type: ignore[no-untyped-def]
    if not stream:
        output = await agent.arun(text, session_id=session_id, auth_token=KEY)
        return str(output.content)
    parts = []
    async for event in agent.arun(text, session_id=session_id, stream=True, auth_token=KEY):
        content = getattr(event, "content", None)
        if getattr(event, "event", "") == "RunContent" and isinstance(content, str):
            parts.append(content)
    return "".join(parts)


@pytest.mark.parametrize("stream", [False, True], ids=["send", "stream"])
async def test_a2a_remote_agent_holds_conversations(pool, stream: bool) -> None:
    gateway, _ = pool
    agent = _remote(gateway)
    sessions = [f"a2a-{'stream' if stream else 'send'}-{number}" for number in range(6)]
    homes: Dict[str, str] = {}
    for turn in range(2):
        answers = await asyncio.gather(*(_a2a_turn(agent, f"turn {turn}", session, stream) for session in sessions))
        for session, text in zip(sessions, answers):
            instance, history = answered_by(text)
            assert homes.setdefault(session, instance) == instance and history == 2 * turn, (session, text)
    spread = Counter(homes.values())
    print(f"A2A ({'stream' if stream else 'send'}): 6 contexts over the upstreams: {dict(sorted(spread.items()))}")
    assert len(spread) >= 2


async def test_a2a_agent_card_points_at_the_gateway(pool) -> None:
    gateway, _ = pool
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=_headers()) as client:
        card = await client.get("/a2a/agents/echo-agent/.well-known/agent-card.json")
        assert card.status_code == 200
        assert card.json()["url"] == f"{gateway.url}/a2a/agents/echo-agent/v1/message:stream"
        missing = await client.get("/a2a/agents/no-such-agent/.well-known/agent-card.json")
        assert missing.status_code == 404
    card_of = await _remote(gateway).a2a_client.aget_agent_card(headers=_headers())
    assert card_of is not None and card_of.url.startswith(gateway.url)


def _message(text: str, context_id: str | None = None, method: str = "message/send") -> Dict[str, Any]:
    message: Dict[str, Any] = {"messageId": str(uuid.uuid4()), "role": "user", "parts": [{"kind": "text", "text": text}]}
    if context_id:
        message["contextId"] = context_id
    return {"jsonrpc": "2.0", "id": "req-1", "method": method, "params": {"message": message}}


async def test_a2a_json_rpc_and_bad_bodies(pool) -> None:
    gateway, _ = pool
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=_headers()) as client:
        send = "/a2a/agents/echo-agent/v1/message:send"
        malformed = await client.post(send, content=b"{nope", headers={"content-type": "application/json"})
        assert malformed.status_code == 400 and malformed.json()["error"]["code"] == -32700
        # no contextId: the gateway names the conversation, and its next turn comes back to it
        first = await client.post(send, json=_message("one"))
        assert first.status_code == 200 and first.headers["x-agentos-gateway-affinity"] == "new"
        context_id = first.json()["result"]["contextId"]
        uuid.UUID(context_id)
        second = await client.post(send, json=_message("two", context_id))
        assert second.headers[UPSTREAM_HEADER] == first.headers[UPSTREAM_HEADER]
        assert answered_by(second.json()["result"]["history"][-1]["parts"][0]["text"])[1] == 2
        # JSON-RPC to the card's URL (the stream endpoint), as a generic A2A client posts it
        events = []
        async with client.stream("POST", "/a2a/agents/echo-agent/v1/message:stream", json=_message("three", context_id, "message/stream")) as answer:
            assert answer.headers[UPSTREAM_HEADER] == first.headers[UPSTREAM_HEADER]
            async for line in answer.aiter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
        assert all(event["result"]["contextId"] == context_id for event in events if "contextId" in event["result"])
        team_refused = await client.post(send, json=_message("x"), headers=_headers(TEAM_KEY))
        assert team_refused.status_code == 403


async def test_metrics_and_access_lines_name_the_interface(pool) -> None:
    gateway, _ = pool
    async with httpx.AsyncClient(timeout=30) as client:
        scrape = (await client.get(f"{gateway.admin_url}/metrics")).text
    for kind, route in (("agui", "/agui"), ("a2a", "/a2a/agents/{agent_id}/v1/message:send")):
        assert f'agentos_gateway_requests_total{{code="200",entity="unknown",kind="{kind}",route="{route}"}}' in scrape, kind
    lines = [json.loads(line) for line in gateway.log().splitlines() if line.startswith('{"request_id"')]
    assert {"agui", "a2a"} <= {line["kind"] for line in lines}
    assert any(line["kind"] == "agui" and line["upstream"] in NAMES and line["status"] == 200 for line in lines)


async def test_doors_take_run_and_stream_slots(pool, log_dir: Path) -> None:
    """A gateway allowing one stream: an AG-UI stream holds it, so the next AG-UI or A2A stream
    is refused at once (503, Retry-After), while a non-stream A2A message still runs."""
    _, upstreams = pool
    config = gateway_config(list(upstreams.values()), limits={"max_streams": 1, "max_concurrent_runs": 2})
    limited = start_gateway("door-limited-gateway", config, log_dir)
    try:
        async with httpx.AsyncClient(base_url=limited.url, timeout=30) as client:
            body = _agui_body("agui-holds", "slow: " + " ".join(["word"] * 6))
            async with client.stream("POST", "/agui", json=body) as held:
                lines = held.aiter_lines()  # kept: a dropped line iterator would close the stream
                async for line in lines:
                    if "TEXT_MESSAGE_CONTENT" in line:
                        break
                second = await client.post("/agui", json=_agui_body("agui-waits", "hi"))
                assert second.status_code == 503 and "retry-after" in second.headers
                stream = await client.post("/a2a/agents/echo-agent/v1/message:stream", json=_message("x", "c", "message/stream"))
                assert stream.status_code == 503, (stream.status_code, stream.text[:300], stream.headers)
                send = await client.post("/a2a/agents/echo-agent/v1/message:send", json=_message("x", "c"))
                assert send.status_code == 200 and send.json()["result"]["status"]["state"] == "completed"
                assert [line async for line in lines if line][-1] == 'data: {"type":"RUN_FINISHED","threadId":"agui-holds","runId":' + json.dumps(body["runId"]) + "}"
    finally:
        limited.stop()


# -- an upstream dies mid-conversation: the protocol's own error, never a hang (last: they kill) --------


async def test_agui_stream_cut_ends_with_run_error(pool) -> None:
    gateway, upstreams = pool
    events: List[Dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        body = _agui_body("agui-doomed", "slow: " + " ".join(["word"] * 40))
        async with client.stream("POST", "/agui", json=body, headers=_headers()) as answer:
            victim = upstreams[answer.headers[UPSTREAM_HEADER]]
            async for line in answer.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(json.loads(line[6:]))
                if events[-1]["type"] == "TEXT_MESSAGE_CONTENT" and victim.process.poll() is None:
                    victim.process.kill()
    assert events[-1]["type"] == "RUN_ERROR", events[-3:]
    assert "RUN_FINISHED" not in [event["type"] for event in events]


async def test_a2a_stream_cut_ends_with_a_failed_task(pool) -> None:
    gateway, upstreams = pool
    events: List[Dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=_headers()) as client:
        message = _message("slow: " + " ".join(["word"] * 40), "a2a-doomed", "message/stream")
        async with client.stream("POST", "/a2a/agents/echo-agent/v1/message:stream", json=message) as answer:
            victim = upstreams[answer.headers[UPSTREAM_HEADER]]
            async for line in answer.aiter_lines():
                if not line.startswith("data:"):
                    continue
                events.append(json.loads(line[5:]))
                if events[-1]["result"].get("kind") == "message" and victim.process.poll() is None:
                    victim.process.kill()
    last = events[-1]["result"]
    assert (last["kind"], last["final"], last["status"]["state"]) == ("status-update", True, "failed"), last
    assert last["contextId"] == "a2a-doomed" and events[-1]["id"] == "req-1"

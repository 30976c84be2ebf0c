"""Weighted session affinity across three real upstreams (weights 2:1:1), through a real gateway."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Dict, List

import httpx
import pytest

from tests.pools import answered_by, gateway_config, start_gateway, start_upstreams
from tests.processes import stop_servers

WEIGHTS = {"aff-a": 2.0, "aff-b": 1.0, "aff-c": 1.0}
SESSIONS = 400  # with 200, sampling noise alone is 3.5 points of share (one sigma)
TURNS = 3
CONCURRENCY = 8


@pytest.fixture(scope="module")
def weighted_gateway(log_dir):
    upstreams = start_upstreams(list(WEIGHTS), log_dir)
    gateway = start_gateway("affinity-gateway", gateway_config(upstreams, WEIGHTS), log_dir)
    yield gateway
    stop_servers([gateway, *upstreams])


async def _run(client: httpx.AsyncClient, url: str, body: Dict) -> httpx.Response:
    response = await client.post(url, json=body)
    assert response.status_code == 200, response.text
    return response


async def test_sessions_split_by_weight_and_every_turn_stays(weighted_gateway) -> None:
    url = f"{weighted_gateway.url}/v1/agents/echo-agent/run"
    gate = asyncio.Semaphore(CONCURRENCY)
    homes: Dict[str, str] = {}

    async def turn(client: httpx.AsyncClient, session_id: str, number: int) -> None:
        async with gate:
            response = await _run(client, url, {"input": f"turn {number}", "session_id": session_id})
        instance, history = answered_by(response.json()["content"])
        assert response.headers["x-agentos-gateway-upstream"] == instance
        assert response.headers["x-agentos-gateway-affinity"] == "hit"
        assert history == 2 * number, f"{session_id} turn {number} saw history {history}"
        assert homes.setdefault(session_id, instance) == instance, f"{session_id} moved"

    session_ids: List[str] = [f"affinity-{index}" for index in range(SESSIONS)]
    async with httpx.AsyncClient(timeout=60) as client:
        for number in range(TURNS):  # turn by turn: each turn must find the previous one's history
            await asyncio.gather(*(turn(client, session_id, number) for session_id in session_ids))

    shares = {name: count / SESSIONS for name, count in Counter(homes.values()).items()}
    expected = {name: weight / sum(WEIGHTS.values()) for name, weight in WEIGHTS.items()}
    print(f"session shares {shares} (expected {expected})")
    for name, share in expected.items():
        assert abs(shares.get(name, 0.0) - share) <= 0.05, shares


async def test_a_new_session_is_made_by_the_gateway_and_its_follow_up_lands_with_it(weighted_gateway) -> None:
    async with httpx.AsyncClient(timeout=60, base_url=weighted_gateway.url) as client:
        for kind, entity in (("agents", "echo-agent"), ("teams", "echo-team"), ("workflows", "echo-workflow")):
            first = await _run(client, f"/v1/{kind}/{entity}/run", {"input": "hello"})
            assert first.headers["x-agentos-gateway-affinity"] == "new"
            session_id = first.json()["session_id"]
            uuid.UUID(session_id)  # the gateway made it
            second = await _run(client, f"/v1/{kind}/{entity}/run", {"input": "again", "session_id": session_id})
            assert second.headers["x-agentos-gateway-affinity"] == "hit"
            assert second.headers["x-agentos-gateway-upstream"] == first.headers["x-agentos-gateway-upstream"]
            content = second.json()["content"]
            instance, history = answered_by(content)
            assert instance == first.headers["x-agentos-gateway-upstream"]
            # the session went on: history messages, or for the workflow the history its step is given
            assert history == 2 or (kind == "workflows" and "User input: hello" in content), content


async def test_the_native_route_and_v1_agree_on_a_sessions_upstream(weighted_gateway) -> None:
    session_id = f"both-{uuid.uuid4()}"
    async with httpx.AsyncClient(timeout=60, base_url=weighted_gateway.url) as client:
        v1 = await _run(client, "/v1/agents/echo-agent/run", {"input": "one", "session_id": session_id})
        native = await client.post(
            "/agents/echo-agent/runs", data={"message": "two", "session_id": session_id, "stream": "false"}
        )
        assert native.status_code == 200, native.text
        assert native.headers["x-agentos-gateway-upstream"] == v1.headers["x-agentos-gateway-upstream"]
        assert answered_by(native.json()["content"])[1] == 2
        multipart = await client.post(
            "/agents/echo-agent/runs",
            data={"message": "three", "session_id": session_id, "stream": "false"},
            files={"files": ("note.txt", b"a note", "text/plain")},
        )
        assert multipart.status_code == 200, multipart.text
        assert multipart.headers["x-agentos-gateway-upstream"] == v1.headers["x-agentos-gateway-upstream"]
        assert answered_by(multipart.json()["content"])[1] == 4

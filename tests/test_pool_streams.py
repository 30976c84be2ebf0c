"""Streams through a pool gateway: events pass as they come, client disconnects cancel the upstream
run, cancel reaches the right upstream, keepalive comments and the idle timeout."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Dict, List, Optional

import httpx
import pytest
from agno.agent import RemoteAgent

from tests.pools import ADMIN_KEY, gateway_config, start_gateway, upstream_states

SLOW = "slow: " + " ".join(["word"] * 40)  # one word every 0.25 s


async def _upstream_run_status(upstreams, upstream_name: str, run_id: str, session_id: str) -> Optional[str]:
    server = next(s for s in upstreams if s.name == upstream_name)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.get(f"/agents/echo-agent/runs/{run_id}", params={"session_id": session_id})
    if response.status_code != 200:
        return None
    return response.json().get("status")


async def _status_eventually(upstreams, name: str, run_id: str, session_id: str, expected: str) -> None:
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline:
        status = await _upstream_run_status(upstreams, name, run_id, session_id)
        if status == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} on {name} is {status}, expected {expected}")


async def test_slow_events_arrive_one_by_one_not_buffered(pool_gateway) -> None:
    arrivals: List[float] = []
    async with httpx.AsyncClient(base_url=pool_gateway.url, timeout=30) as client:
        async with client.stream(
            "POST", "/v1/agents/echo-agent/run", json={"input": "slow: a b c d e f", "stream": True}
        ) as stream:
            assert stream.headers["cache-control"] == "no-cache" and stream.headers["x-accel-buffering"] == "no"
            async for line in stream.aiter_lines():
                if line == "event: RunContent":
                    arrivals.append(time.monotonic())
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    print(f"gaps between content events: {[round(gap * 1000) for gap in gaps]} ms (the model waits 250 ms)")
    # A buffering proxy would hand the events over together at the end: gaps near zero.
    assert len(arrivals) >= 6 and all(gap > 0.1 for gap in gaps[:5]), gaps


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_leaves_cancels_the_upstream_run(pool_gateway, pool_upstreams, stream: bool) -> None:
    session_id, run_id = f"leave-{uuid.uuid4()}", str(uuid.uuid4())
    body: Dict = {"input": SLOW, "stream": stream, "session_id": session_id, "run_id": run_id}
    async with httpx.AsyncClient(base_url=pool_gateway.url, timeout=30) as client:
        if stream:
            async with client.stream("POST", "/v1/agents/echo-agent/run", json=body) as response:
                upstream = response.headers["x-agentos-gateway-upstream"]
                async for line in response.aiter_lines():
                    if line == "event: RunContent":
                        break  # and leave
        else:
            request = asyncio.create_task(client.post("/v1/agents/echo-agent/run", json=body))
            upstream = await _in_flight_on(pool_gateway)  # the gateway has handed the run over
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
    await _status_eventually(pool_upstreams, upstream, run_id, session_id, "CANCELLED")


async def _in_flight_on(gateway) -> str:
    """The one upstream with a request in flight, once there is one."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        busy = [name for name, state in (await upstream_states(gateway)).items() if state["in_flight"]]
        if busy:
            assert len(busy) == 1, busy
            return busy[0]
        await asyncio.sleep(0.02)
    raise AssertionError("the run never went in flight")


async def test_drain_moves_new_work_away_and_undrain_brings_it_back(pool_gateway) -> None:
    session_id = f"drain-{uuid.uuid4()}"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=pool_gateway.url, timeout=30) as client:
        home = (await client.post("/v1/agents/echo-agent/run", json={"input": "hi", "session_id": session_id}))
        name = home.headers["x-agentos-gateway-upstream"]
        drained = await client.post(f"{pool_gateway.admin_url}/admin/upstreams/{name}/drain", headers=admin)
        try:
            assert drained.status_code == 200 and drained.json()["draining"] is True
            away = await client.post("/v1/agents/echo-agent/run", json={"input": "hi", "session_id": session_id})
            assert away.headers["x-agentos-gateway-upstream"] != name
            assert away.headers["x-agentos-gateway-affinity"] == "moved"
        finally:
            undrained = await client.post(f"{pool_gateway.admin_url}/admin/upstreams/{name}/undrain", headers=admin)
        assert undrained.json()["draining"] is False
        back = await client.post("/v1/agents/echo-agent/run", json={"input": "hi", "session_id": session_id})
        assert back.headers["x-agentos-gateway-upstream"] == name
        assert back.headers["x-agentos-gateway-affinity"] == "hit"


@pytest.mark.parametrize("headers, status", [({}, 401), ({"Authorization": "Bearer wrong-key-0123456789"}, 401)])
async def test_the_admin_api_needs_its_key(pool_gateway, headers, status) -> None:
    async with httpx.AsyncClient(base_url=pool_gateway.admin_url, timeout=10) as client:
        response = await client.get("/admin/upstreams", headers=headers)
        unknown = await client.post("/admin/upstreams/nope/drain", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == status and "detail" in response.json()
    assert unknown.status_code == 404 and unknown.json() == {"detail": "No upstream named 'nope'"}


async def test_the_admin_api_is_off_without_a_key(gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.admin_url, timeout=10) as client:
        response = await client.get("/admin/upstreams", headers={"Authorization": "Bearer anything-at-all"})
    assert response.status_code == 403 and "admin_key" in response.json()["detail"]


async def test_admin_runtime_reports_the_process_and_its_upstream_connections(pool_gateway, gateway) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    pid = pool_gateway.process.pid

    async def runtime(client: httpx.AsyncClient) -> Dict:
        response = await client.get(f"{pool_gateway.admin_url}/admin/runtime", headers=admin)
        assert response.status_code == 200, response.text
        return response.json()

    async with httpx.AsyncClient(base_url=pool_gateway.url, timeout=30) as client:
        assert (await client.get(f"{pool_gateway.admin_url}/admin/runtime")).status_code == 401
        idle = await runtime(client)
        assert idle["pid"] == pid and idle["tasks"] >= 1
        assert set(idle["upstream_connections"]) == set(idle["upstream_connections_in_use"]) == {"pool-a", "pool-b"}
        assert abs(idle["open_fds"] - len(os.listdir(f"/proc/{pid}/fd"))) <= 5
        vm_rss = next(line for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:"))
        assert abs(idle["rss_bytes"] - int(vm_rss.split()[1]) * 1024) <= 0.1 * idle["rss_bytes"]
        async with client.stream(
            "POST", "/v1/agents/echo-agent/run", json={"input": "slow: a b c d e f g h", "stream": True}
        ) as stream:
            upstream = stream.headers["x-agentos-gateway-upstream"]
            async for line in stream.aiter_lines():
                if line == "event: RunContent":
                    break
            busy = await runtime(client)
            # the stream's own upstream connection, and one more task at least (its relay)
            assert busy["upstream_connections_in_use"][upstream] >= 1
            assert busy["upstream_connections"][upstream] >= busy["upstream_connections_in_use"][upstream]
            assert busy["tasks"] > idle["tasks"]
            assert busy["remembered_runs"] == idle["remembered_runs"] + 1  # its run id, for a cancel
        deadline = time.monotonic() + 15
        while any((after := await runtime(client))["upstream_connections_in_use"].values()):
            assert time.monotonic() < deadline, f"connections still in use: {after}"
            await asyncio.sleep(0.05)
    async with httpx.AsyncClient(base_url=gateway.admin_url, timeout=10) as client:  # no admin key: off
        assert (await client.get("/admin/runtime", headers=admin)).status_code == 403


async def test_cancel_through_the_gateway_stops_the_run_on_its_upstream(pool_gateway, pool_upstreams) -> None:
    session_id = f"cancel-{uuid.uuid4()}"
    seen: List[str] = []
    async with httpx.AsyncClient(base_url=pool_gateway.url, timeout=30) as client:
        async with client.stream(
            "POST", "/v1/agents/echo-agent/run", json={"input": SLOW, "stream": True, "session_id": session_id}
        ) as response:
            upstream = response.headers["x-agentos-gateway-upstream"]
            async with asyncio.timeout(20):
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    seen.append(event["event"])
                    if seen.count("RunContent") == 1 and event["event"] == "RunContent":
                        cancel = await client.post(f"/agents/echo-agent/runs/{event['run_id']}/cancel")
                        assert cancel.status_code == 200 and cancel.json() == {}
                        run_id = event["run_id"]
    assert "RunCancelled" in seen and seen.count("RunContent") < 40
    await _status_eventually(pool_upstreams, upstream, run_id, session_id, "CANCELLED")


async def test_cancel_of_a_run_the_gateway_did_not_start_reaches_every_upstream(pool_gateway, pool_upstreams) -> None:
    """A run started on an upstream directly: the gateway does not know where it is, so the cancel
    goes to every upstream serving the agent."""
    direct = pool_upstreams[1]
    agent = RemoteAgent(base_url=direct.url, agent_id="echo-agent")
    seen: List[str] = []
    async with asyncio.timeout(20):
        async for event in agent.arun(SLOW, stream=True, stream_events=True):
            seen.append(event.event)
            if event.event == "RunContent" and seen.count("RunContent") == 1:
                async with httpx.AsyncClient(base_url=pool_gateway.url, timeout=10) as client:
                    cancel = await client.post(f"/agents/echo-agent/runs/{event.run_id}/cancel")
                assert cancel.status_code == 200
    assert "RunCancelled" in seen


@pytest.fixture(scope="module")
def quiet_gateway(log_dir, pool_upstreams):
    """Keepalive comments every 0.1 s, streams ended after 0.6 s of silence."""
    config = gateway_config(pool_upstreams, timeouts={"keepalive_s": 0.1, "stream_idle_s": 0.6})
    server = start_gateway("quiet-gateway", config, log_dir)
    yield server
    server.stop()


async def test_keepalive_comments_fill_silences_and_agnos_client_skips_them(quiet_gateway) -> None:
    async with httpx.AsyncClient(base_url=quiet_gateway.url, timeout=30) as client:
        response = await client.post("/v1/agents/echo-agent/run", json={"input": "slow: a b c", "stream": True})
    assert ": keepalive" in response.text.splitlines()
    assert "event: RunCompleted" in response.text
    events = [e.event async for e in RemoteAgent(base_url=quiet_gateway.url, agent_id="echo-agent").arun("slow: a b", stream=True)]
    assert events[-1] == "RunCompleted"


async def test_a_stream_silent_past_the_idle_timeout_ends_with_an_error_event(log_dir, pool_upstreams) -> None:
    config = gateway_config(pool_upstreams, timeouts={"keepalive_s": 0, "stream_idle_s": 0.1})
    server = await asyncio.to_thread(start_gateway, "idle-gateway", config, log_dir)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            response = await client.post("/v1/teams/echo-team/run", json={"input": "slow: a b c", "stream": True})
        frames = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
        assert frames[-1]["event"] == "TeamRunError" and "no event for 0.1 s" in frames[-1]["content"]
        assert ": keepalive" not in response.text
    finally:
        server.stop()

"""The runner's construction errors, httpx errors surfacing, auth, the sync face and cancel."""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest
from agno.run.base import RunStatus

from gateway import AgentOSRunner
from gateway.demo import build_demo
from tests.conftest import INSTANCE
from tests.processes import start_server

DEMO = build_demo(instance=INSTANCE)
SLOW = "slow: " + " ".join(["word"] * 40)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"agent": DEMO.agent, "team": DEMO.team},
        {"agent": DEMO.agent, "base_url": "http://x"},
        {"agent": DEMO.agent, "agent_id": "echo-agent"},
        {"agent": DEMO.agent, "api_key": "k"},
        {"base_url": "http://x"},
        {"agent_id": "echo-agent"},
        {"base_url": "http://x", "agent_id": "a", "team_id": "t"},
        {"base_url": "http://x", "agent_id": "a", "protocol": "grpc"},
        {"base_url": "http://x", "agent_id": "a", "timeout": 0},
    ],
)
def test_construction_errors(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AgentOSRunner(**kwargs)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens here once the socket is closed


@pytest.mark.parametrize("protocol", ["v1", "agentos"])
@pytest.mark.parametrize("stream", [False, True])
async def test_unreachable_base_url_raises_connect_error(protocol: str, stream: bool) -> None:
    async with AgentOSRunner(base_url=f"http://127.0.0.1:{_closed_port()}", agent_id="echo-agent", protocol=protocol) as runner:
        with pytest.raises(httpx.ConnectError):
            if stream:
                async for _ in runner.arun("hi", stream=True):
                    pass
            else:
                await runner.arun("hi")


@pytest.mark.parametrize("target", ["v1", "agentos"])
@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_id_raises_http_status_error(target: str, stream: bool, gateway, upstream) -> None:
    base_url = gateway.url if target == "v1" else upstream.url
    async with AgentOSRunner(base_url=base_url, agent_id="no-such-agent", protocol=target) as runner:
        with pytest.raises(httpx.HTTPStatusError) as raised:
            if stream:
                async for _ in runner.arun("hi", stream=True):
                    pass
            else:
                await runner.arun("hi")
    assert raised.value.response.status_code == 404


@pytest.fixture(scope="module")
def secured_upstream(log_dir):
    server = start_server("secured-upstream", ["upstream", "--name", INSTANCE], log_dir, env={"OS_SECURITY_KEY": "s3cret"})
    yield server
    server.stop()


async def test_api_key_is_sent_as_bearer(secured_upstream) -> None:
    async with AgentOSRunner(base_url=secured_upstream.url, agent_id="echo-agent", protocol="agentos") as anonymous:
        with pytest.raises(httpx.HTTPStatusError) as raised:
            await anonymous.arun("hi")
        assert raised.value.response.status_code == 401
    async with AgentOSRunner(
        base_url=secured_upstream.url, agent_id="echo-agent", protocol="agentos", api_key="s3cret"
    ) as keyed:
        output = await keyed.arun("2 + 2")
        assert output.content.startswith("2 + 2 = 4")


def test_sync_run_local_and_remote(gateway) -> None:
    with AgentOSRunner(agent=DEMO.agent) as local:
        assert local.run("6 * 7").content.startswith("6 * 7 = 42")
    with AgentOSRunner(base_url=gateway.url, agent_id="echo-agent") as remote:
        assert remote.run("6 * 7").content.startswith("6 * 7 = 42")
        events = list(remote.run("a b", stream=True, stream_events=True))
        assert [e.event for e in events][0] == "RunStarted"
        assert events[-1].event == "RunCompleted"
        assert remote.run("1 + 1").status == RunStatus.completed  # the private loop is reused


@pytest.mark.parametrize("target", ["local", "agentos", "v1"])
async def test_acancel_stops_a_running_stream(target: str, gateway, upstream) -> None:
    if target == "local":
        runner, canceller = AgentOSRunner(agent=DEMO.agent), AgentOSRunner(agent=DEMO.agent)
    else:
        base_url, protocol = (upstream.url, "agentos") if target == "agentos" else (gateway.url, "v1")
        runner = AgentOSRunner(base_url=base_url, agent_id="echo-agent", protocol=protocol)
        canceller = AgentOSRunner(base_url=base_url, agent_id="echo-agent", protocol=protocol)
    run_id = f"cancel-{uuid.uuid4()}"
    names = []
    async with runner, canceller:
        async for event in runner.arun(SLOW, stream=True, stream_events=True, run_id=run_id):
            names.append(event.event)
            if event.event == "RunContent" and names.count("RunContent") == 1:
                assert await canceller.acancel(run_id) is True
    assert "RunCancelled" in names
    assert names.count("RunContent") < 40  # it stopped early


async def test_remote_cancel_of_unknown_entity_raises(gateway) -> None:
    async with AgentOSRunner(base_url=gateway.url, agent_id="no-such-agent") as runner:
        with pytest.raises(httpx.HTTPStatusError):
            await runner.acancel("any-run")


async def test_sync_run_inside_an_event_loop_is_refused(gateway) -> None:
    async with AgentOSRunner(base_url=gateway.url, agent_id="echo-agent") as runner:
        with pytest.raises(RuntimeError, match="await arun"):
            runner.run("1 + 1")


def test_runner_is_bound_to_one_event_loop(gateway) -> None:
    import asyncio

    runner = AgentOSRunner(base_url=gateway.url, agent_id="echo-agent")
    assert runner.run("1 + 1").status == RunStatus.completed  # binds the client to the private loop
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(runner.arun("1 + 1"))
    runner.close()


async def test_a_local_runner_without_session_id_starts_a_new_session_like_a_remote_one(gateway) -> None:
    local = AgentOSRunner(agent=build_demo(instance=INSTANCE).agent)
    async with AgentOSRunner(base_url=gateway.url, agent_id="echo-agent") as remote:
        for runner in (local, remote):
            first, second = await runner.arun("a"), await runner.arun("b")
            assert first.session_id != second.session_id
            assert second.content.endswith("history=0]")

"""Gateways configured in different ways in front of real upstreams: hybrid local + remote, id
conflicts, upstream keys, an upstream down from the start."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.pools import answered_by, gateway_config, spawn_gateway, start_gateway, upstream_states
from tests.processes import start_server, start_servers, stop_servers

LOCAL_AGENT = {"agents": ["gateway.demo.components:echo_agent"]}


@pytest.mark.parametrize("on_conflict, agent_from", [("local", "local"), ("upstream", "pool")])
async def test_hybrid_local_agent_and_remote_team(log_dir, pool_upstreams, on_conflict, agent_from) -> None:
    config = gateway_config(pool_upstreams, local=LOCAL_AGENT, on_conflict=on_conflict, affinity={"headers": False})
    gateway = start_gateway(f"hybrid-{on_conflict}", config, log_dir, env={"GATEWAY_INSTANCE_NAME": "hybrid-local"})
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            agent = await client.post("/v1/agents/echo-agent/run", json={"input": "hi"})
            team = await client.post("/v1/teams/echo-team/run", json={"input": "hi"})
            config_answer = (await client.get("/config")).json()
        agent_instance = answered_by(agent.json()["content"])[0]
        if agent_from == "local":
            assert agent_instance == "hybrid-local"
        else:
            assert agent_instance in {"pool-a", "pool-b"}
        assert answered_by(team.json()["content"])[0] in {"pool-a", "pool-b"}
        assert "x-agentos-gateway-upstream" not in team.headers  # turned off
        assert [a["id"] for a in config_answer["agents"]] == ["echo-agent"]
        assert [t["id"] for t in config_answer["teams"]] == ["echo-team"]
    finally:
        gateway.stop()


def test_an_id_served_locally_and_remotely_stops_the_start_by_default(log_dir, pool_upstreams) -> None:
    config = gateway_config(pool_upstreams, local=LOCAL_AGENT)
    with pytest.raises(RuntimeError) as failed:
        start_gateway("conflict-gateway", config, log_dir)
    assert "agents 'echo-agent' is served locally and by upstream pool-a, pool-b" in str(failed.value)
    assert "on_conflict" in str(failed.value)


@pytest.fixture(scope="module")
def secured_upstream(log_dir):
    server = start_server("keyed-upstream", ["upstream", "--name", "keyed"], log_dir, env={"OS_SECURITY_KEY": "upstream-secret"})
    yield server
    server.stop()


async def test_each_upstream_gets_its_own_key_never_the_clients(log_dir, secured_upstream) -> None:
    keyed = gateway_config([secured_upstream])
    keyed["upstreams"][0]["api_key"] = "upstream-secret"
    gateway, keyless = start_servers(
        [spawn_gateway("keyed-gateway", keyed, log_dir), spawn_gateway("keyless-gateway", gateway_config([secured_upstream]), log_dir)]
    )
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            run = await client.post(
                f"{gateway.url}/v1/agents/echo-agent/run",
                json={"input": "hi"},
                headers={"Authorization": "Bearer the-clients-own-token"},
            )
            assert run.status_code == 200 and answered_by(run.json()["content"])[0] == "keyed"
            # without the key the gateway cannot even learn what the upstream serves
            refused = await client.post(f"{keyless.url}/v1/agents/echo-agent/run", json={"input": "hi"})
            assert refused.status_code == 503 and "keyed" in refused.json()["detail"]
        assert "upstream-secret" not in gateway.log()
    finally:
        stop_servers([gateway, keyless])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_an_upstream_down_from_the_start(log_dir, pool_upstreams) -> None:
    config = gateway_config(pool_upstreams[:1])
    config["upstreams"].append({"name": "never-up", "url": f"http://127.0.0.1:{_closed_port()}"})
    gateway = start_gateway("half-gateway", config, log_dir)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            served = await client.post("/v1/agents/echo-agent/run", json={"input": "hi"})
            assert served.status_code == 200 and served.headers["x-agentos-gateway-upstream"] == "pool-a"
            # nobody is known to serve it, but never-up might: not a 404 yet
            unknown = await client.post("/v1/agents/nobody-has-this/run", json={"input": "hi"})
            assert unknown.status_code == 503 and unknown.headers["retry-after"] and "never-up" in unknown.json()["detail"]
        states = await upstream_states(gateway)
        assert states["never-up"]["state"] == "unhealthy" and states["never-up"]["usable"] is False
        assert states["pool-a"]["state"] == "healthy" and states["pool-a"]["entities"]["agents"] == ["echo-agent"]
    finally:
        gateway.stop()


async def test_strict_affinity_never_moves_a_session(log_dir, pool_upstreams) -> None:
    import asyncio
    import time

    from gateway.balancing import rank
    from tests.pools import start_upstreams

    (leaving,) = start_upstreams(["strict-b"], log_dir)
    config = gateway_config([pool_upstreams[0], leaving], affinity={"mode": "strict"})
    names = [("pool-a", 1.0), ("strict-b", 1.0)]
    homeless = next(f"strict-{i}" for i in range(100) if rank(f"strict-{i}", names)[0] == "strict-b")
    housed = next(f"strict-{i}" for i in range(100) if rank(f"strict-{i}", names)[0] == "pool-a")
    gateway = start_gateway("strict-gateway", config, log_dir)
    try:
        leaving.stop()
        deadline = time.monotonic() + 15
        while (await upstream_states(gateway))["strict-b"]["state"] != "unhealthy":
            assert time.monotonic() < deadline, "strict-b never went down"
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            stuck = await client.post("/v1/agents/echo-agent/run", json={"input": "hi", "session_id": homeless})
            fine = await client.post("/v1/agents/echo-agent/run", json={"input": "hi", "session_id": housed})
        assert stuck.status_code == 503 and int(stuck.headers["retry-after"]) >= 1
        assert fine.status_code == 200 and fine.headers["x-agentos-gateway-affinity"] == "hit"
    finally:
        gateway.stop()
        leaving.stop()

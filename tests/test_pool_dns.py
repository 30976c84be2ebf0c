"""DNS discovery: every address of a name is an upstream; the pool follows the answers."""

from __future__ import annotations

import asyncio
from typing import List, Tuple

import httpx

from gateway.pool import Pool, resolve_addresses
from gateway.settings import Settings
from gateway.wire.kinds import EntityKind
from tests.pools import FAST_HEALTH, answered_by, start_gateway, upstream_states


async def test_the_pool_follows_the_dns_answers(pool_upstreams) -> None:
    """A resolver whose answer changes, as a headless service's does when it scales: the pool
    gains the new address, serves through it, and lets the old one go."""
    a, b = pool_upstreams
    answers: List[List[Tuple[str, int]]] = [[("127.0.0.1", a.port)], [("127.0.0.1", a.port), ("127.0.0.1", b.port)], [("127.0.0.1", b.port)]]
    asked = asyncio.Event()

    async def resolver(host: str, port: int) -> List[Tuple[str, int]]:
        assert (host, port) == ("agentos.test", 7777)
        asked.set()
        return answers[0]

    settings = Settings(upstreams=[{"name": "os", "dns": "agentos.test:7777", "dns_refresh_s": 0.05}], health=FAST_HEALTH)
    pool = Pool(settings, resolver=resolver)
    await pool.start()
    try:
        assert list(pool.upstreams) == [f"os-127.0.0.1-{a.port}"]
        assert pool.upstreams[f"os-127.0.0.1-{a.port}"].serves(EntityKind.AGENT, "echo-agent")
        for expected in ({f"os-127.0.0.1-{a.port}", f"os-127.0.0.1-{b.port}"}, {f"os-127.0.0.1-{b.port}"}):
            answers.pop(0)
            async with asyncio.timeout(10):
                while set(pool.upstreams) != expected:
                    asked.clear()
                    await asked.wait()  # the next lookup
                    await asyncio.sleep(0)  # and its application
            assert all(pool.is_usable(u) for u in pool.upstreams.values())
    finally:
        await pool.close()


async def test_a_real_lookup_of_localhost() -> None:
    addresses = await resolve_addresses("localhost", 80)
    assert ("127.0.0.1", 80) in addresses


async def test_a_gateway_with_a_dns_upstream(log_dir, pool_upstreams) -> None:
    a = pool_upstreams[0]
    config = {
        "upstreams": [{"name": "local", "dns": f"localhost:{a.port}", "dns_refresh_s": 1}],
        "health": FAST_HEALTH,
        "admin_key": "test-admin-key-0123456789",
    }
    gateway = start_gateway("dns-gateway", config, log_dir)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            run = await client.post("/v1/agents/echo-agent/run", json={"input": "hi"})
        assert run.status_code == 200 and answered_by(run.json()["content"])[0] == a.name
        assert run.headers["x-agentos-gateway-upstream"] == f"local-127.0.0.1-{a.port}"
        states = await upstream_states(gateway)
        assert states[f"local-127.0.0.1-{a.port}"]["usable"]
    finally:
        gateway.stop()

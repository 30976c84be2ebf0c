"""Every setting a reload accepts takes effect: one gateway, reloaded again and again
(``POST /admin/reload``), each change seen in its answers or in ``GET /admin/upstreams``.

Each test reloads a whole configuration (the base one plus its own changes), so the tests do not
depend on each other's order. The base probes every 30 s: only a reload can make them faster.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Iterator, List, Optional, Set

import httpx
import pytest
import yaml

from gateway.balancing import rank
from tests.fake_upstream import FaultyUpstream
from tests.pools import ADMIN_KEY, answered_by, gateway_config, start_upstreams
from tests.processes import Server, start_server

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SLOW_HEALTH = {"interval_s": 30, "timeout_s": 0.5, "jitter_percent": 0, "healthy_threshold": 2, "unhealthy_threshold": 2}
KEY_ONE, KEY_TWO = "reload-key-one-0123456789", "reload-key-two-0123456789"


def _config(upstreams: List[Any], weights: Optional[Dict[str, float]] = None, **changes: Any) -> Dict[str, Any]:
    """The base configuration with ``changes``; ``upstreams`` are servers or config entries."""
    config = gateway_config(
        [], health=SLOW_HEALTH, outlier={"consecutive_failures": 100}, retry={"max_attempts": 1},
        shutdown={"drain_delay_s": 0},
    )  # fmt: skip
    config["upstreams"] = [
        u if isinstance(u, dict) else {"name": u.name, "url": u.url, "weight": (weights or {}).get(u.name, 1)}
        for u in upstreams
    ]
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    return config


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reload-settings") / "gateway.yaml"


@pytest.fixture(scope="module")
def reloaded_gateway(log_dir: Path, pool_upstreams: List[Server], config_path: Path) -> Iterator[Server]:
    config_path.write_text(yaml.safe_dump(_config(pool_upstreams)))
    server = start_server("reload-settings-gateway", ["serve", "--config", str(config_path)], log_dir)
    yield server
    server.stop()


@pytest.fixture
async def client(reloaded_gateway: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=reloaded_gateway.url, timeout=30) as client:
        yield client


@pytest.fixture
async def admin(reloaded_gateway: Server) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway's admin listener: /admin and the Prometheus scrape."""
    async with httpx.AsyncClient(base_url=reloaded_gateway.admin_url, timeout=30) as client:
        yield client


async def _reload(admin: httpx.AsyncClient, path: Path, config: Dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config))
    answer = await admin.post("/admin/reload", headers=ADMIN)
    assert answer.status_code == 200 and answer.json()["reloaded"] is True, answer.text


async def _run(client: httpx.AsyncClient, session_id: Optional[str] = None, text: str = "hi", **more: Any) -> httpx.Response:
    body = {"input": text, **({"session_id": session_id} if session_id else {}), **more}
    return await client.post("/v1/agents/echo-agent/run", json=body)


def _home(session_id: str, weights: Dict[str, float]) -> str:
    return rank(session_id, list(weights.items()))[0]


def _session(prefix: str, wanted: Dict[str, Dict[str, float]]) -> str:
    """A session id whose home under each weighting is the wanted upstream."""
    return next(
        f"{prefix}-{i}" for i in range(10_000) if all(_home(f"{prefix}-{i}", w) == name for name, w in wanted.items())
    )


async def _probes(admin: httpx.AsyncClient, upstream: str) -> float:
    text = (await admin.get("/metrics")).text
    prefix = f'agentos_gateway_probe_duration_seconds_count{{upstream="{upstream}"}} '
    return next((float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


async def _upstreams(admin: httpx.AsyncClient) -> Dict[str, Dict[str, Any]]:
    answer = await admin.get("/admin/upstreams", headers=ADMIN)
    return {upstream["name"]: upstream for upstream in answer.json()}


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    """Polls ``check`` until it holds; fails naming ``what`` after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# -- upstreams and balancing -----------------------------------------------------------------------


async def test_weights(client, admin, config_path, pool_upstreams) -> None:
    a, b = (server.name for server in pool_upstreams)
    session_id = _session("weights", {b: {a: 1, b: 1}, a: {a: 1000, b: 1}})
    await _reload(admin, config_path, _config(pool_upstreams))
    assert (await _run(client, session_id)).headers["x-agentos-gateway-upstream"] == b
    await _reload(admin, config_path, _config(pool_upstreams, weights={a: 1000}))
    assert (await _upstreams(admin))[a]["weight"] == 1000
    assert (await _run(client, session_id)).headers["x-agentos-gateway-upstream"] == a


async def test_affinity(client, admin, config_path, pool_upstreams) -> None:
    a, b = (server.name for server in pool_upstreams)
    session_id = _session("affinity", {a: {a: 1, b: 1}})
    await _reload(admin, config_path, _config(pool_upstreams))
    assert (await admin.post(f"/admin/upstreams/{a}/drain", headers=ADMIN)).status_code == 200
    try:
        moved = await _run(client, session_id)  # hash: the next upstream of the session's order
        assert moved.status_code == 200 and moved.headers["x-agentos-gateway-affinity"] == "moved"
        await _reload(admin, config_path, _config(pool_upstreams, affinity={"mode": "strict"}))
        assert (await _run(client, session_id)).status_code == 503  # strict: never moved
    finally:
        assert (await admin.post(f"/admin/upstreams/{a}/undrain", headers=ADMIN)).status_code == 200
    hit = await _run(client, session_id)
    assert hit.status_code == 200 and hit.headers["x-agentos-gateway-upstream"] == a
    await _reload(admin, config_path, _config(pool_upstreams, affinity={"headers": False}))
    quiet = await _run(client, session_id)
    assert quiet.status_code == 200 and "x-agentos-gateway-upstream" not in quiet.headers


async def _panicked(admin: httpx.AsyncClient) -> float:
    text = (await admin.get("/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("agentos_gateway_panic_total"))


async def test_panic_threshold(client, admin, config_path, pool_upstreams, faulty) -> None:
    names = {server.name: 1.0 for server in pool_upstreams}
    upstreams = [*pool_upstreams, {"name": "faulty", "url": faulty.url}]
    session_id = _session("panic", {"faulty": {**names, "faulty": 1.0}})
    ejecting = {"consecutive_failures": 1, "base_ejection_s": 300}
    await _reload(admin, config_path, _config(upstreams, outlier=ejecting))
    assert (await _run(client, session_id, "short please")).status_code == 502  # one failure: ejected
    assert (await _upstreams(admin))["faulty"]["ejected_for_s"] is not None
    moved = await _run(client, session_id, "fine")  # 2 of 3 usable: over the default 50 %
    assert moved.status_code == 200 and moved.headers["x-agentos-gateway-upstream"] in names
    before = await _panicked(admin)
    await _reload(admin, config_path, _config(upstreams, outlier=ejecting, panic_threshold_percent=100))
    home = await _run(client, session_id, "fine")  # 2 of 3 is under 100 %: health is ignored
    assert home.status_code == 200 and home.headers["x-agentos-gateway-upstream"] == "faulty", home.text
    assert await _panicked(admin) == before + 1
    await _reload(admin, config_path, _config(pool_upstreams))


async def test_health_interval(client, admin, config_path, pool_upstreams) -> None:
    """Probe loops asleep for the old interval start over with the new one."""
    name = pool_upstreams[0].name
    await _reload(admin, config_path, _config(pool_upstreams))
    before = await _probes(admin, name)
    await _reload(admin, config_path, _config(pool_upstreams, health={"interval_s": 0.1}))

    async def probed_often() -> bool:
        return await _probes(admin, name) >= before + 5

    await _until(probed_often, "five probes at the new interval")


@pytest.fixture(scope="module")
def stoppable(log_dir: Path) -> Iterator[Server]:
    """An upstream of this module's own, to stop (SIGSTOP) while it is probed."""
    (server,) = start_upstreams(["reload-c"], log_dir)
    yield server
    os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


async def test_health_thresholds(client, admin, config_path, pool_upstreams, stoppable) -> None:
    """An upstream failing its probes stays up under a high unhealthy_threshold, and goes down
    at the next failed probe once a reload lowers it."""
    upstreams = [*pool_upstreams, stoppable]
    patient = {"interval_s": 0.1, "timeout_s": 0.2, "unhealthy_threshold": 1000}
    await _reload(admin, config_path, _config(upstreams, health=patient))
    assert (await _upstreams(admin))[stoppable.name]["state"] == "healthy"
    os.kill(stoppable.process.pid, signal.SIGSTOP)
    try:
        before = await _probes(admin, stoppable.name)

        async def failed_three() -> bool:
            return await _probes(admin, stoppable.name) >= before + 3

        await _until(failed_three, "three failed probes")
        assert (await _upstreams(admin))[stoppable.name]["state"] == "healthy"
        await _reload(admin, config_path, _config(upstreams, health={**patient, "unhealthy_threshold": 2}))

        async def down() -> bool:
            return (await _upstreams(admin))[stoppable.name]["state"] == "unhealthy"

        await _until(down, "the lowered threshold to take the upstream down")
    finally:
        os.kill(stoppable.process.pid, signal.SIGCONT)
    await _reload(admin, config_path, _config(pool_upstreams))
    assert set(await _upstreams(admin)) == {server.name for server in pool_upstreams}


@pytest.fixture
async def faulty() -> AsyncIterator[FaultyUpstream]:
    upstream = FaultyUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()


async def test_retry_and_outlier(client, admin, config_path, pool_upstreams, faulty) -> None:
    names = {server.name: 1.0 for server in pool_upstreams}
    upstreams = [*pool_upstreams, {"name": "faulty", "url": faulty.url}]
    session_id = _session("faulty", {"faulty": {**names, "faulty": 1.0}})

    await _reload(admin, config_path, _config(upstreams))
    refused = await _run(client, session_id, "busy now")  # faulty answers 503 at once
    assert refused.status_code == 503 and refused.json() == {"detail": "busy"}, refused.text
    await _reload(admin, config_path, _config(upstreams, retry={"max_attempts": 3, "on_503": True}))
    retried = await _run(client, session_id, "busy now")
    assert retried.status_code == 200 and retried.headers["x-agentos-gateway-upstream"] in names

    # three failures in a row now (503, 503, a cut answer): under 100, no ejection
    assert (await _run(client, session_id, "short please")).status_code == 502
    assert (await _upstreams(admin))["faulty"]["ejections"] == 0
    await _reload(admin, config_path, _config(upstreams, outlier={"consecutive_failures": 3, "base_ejection_s": 40}))
    assert (await _run(client, session_id, "short please")).status_code == 502
    state = (await _upstreams(admin))["faulty"]
    assert state["ejections"] == 1 and 35 < state["ejected_for_s"] <= 40, state
    moved = await _run(client, session_id)
    assert moved.status_code == 200 and moved.headers["x-agentos-gateway-upstream"] in names
    await _reload(admin, config_path, _config(pool_upstreams))


async def test_timeouts(client, admin, config_path, pool_upstreams) -> None:
    slow = "slow: a b c"  # 0.75 s
    await _reload(admin, config_path, _config(pool_upstreams, timeouts={"run_s": 0.5}))
    timed_out = await _run(client, None, slow)
    assert timed_out.status_code == 504 and "0.5 s" in timed_out.json()["detail"], timed_out.text
    await _reload(admin, config_path, _config(pool_upstreams, timeouts={"keepalive_s": 0.1}))
    stream = await _run(client, None, slow, stream=True)  # the whole run's bound is 300 s again
    assert ": keepalive" in stream.text.splitlines() and "event: RunCompleted" in stream.text


class Vanishing(FaultyUpstream):
    """An upstream that answers until ``vanish()``; then its port still takes connections into a
    full backlog and never accepts them: a connect there hangs, as to a host that went away."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: Set[asyncio.StreamWriter] = set()
        self.blackhole: List[socket.socket] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            await super()._serve(reader, writer)
        finally:
            self.writers.discard(writer)

    async def vanish(self) -> None:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        self.server.close()
        for writer in list(self.writers):
            writer.close()  # kept-alive connections go too: the next request must connect
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(0)
        filler = socket.create_connection(("127.0.0.1", port))  # the one backlog slot: taken
        self.blackhole = [listener, filler]

    async def close(self) -> None:
        for sock in self.blackhole:
            sock.close()
        if not self.blackhole:
            await super().close()


@pytest.fixture
async def vanishing() -> AsyncIterator[Vanishing]:
    upstream = Vanishing()
    await upstream.start()
    yield upstream
    await upstream.close()


async def test_connect_timeout(client, admin, config_path, pool_upstreams, vanishing) -> None:
    """The connect timeout of an upstream connected before the reload is the reloaded one."""
    upstreams = [{"name": "vanishing", "url": vanishing.url}]
    await _reload(admin, config_path, _config(upstreams, timeouts={"connect_s": 60}))
    assert (await _run(client, None, "fine")).status_code == 200  # a kept-alive connection
    await vanishing.vanish()

    async def disconnected() -> bool:
        runtime = (await admin.get("/admin/runtime", headers=ADMIN)).json()
        return runtime["upstream_connections"].get("vanishing") == 0

    await _until(disconnected, "the gateway to see its connections closed")
    await _reload(admin, config_path, _config(upstreams, timeouts={"connect_s": 0.3}))
    started = time.monotonic()
    timed_out = await _run(client)
    assert timed_out.status_code == 504 and "connect timed out" in timed_out.json()["detail"], timed_out.text
    assert time.monotonic() - started < 10
    await _reload(admin, config_path, _config(pool_upstreams))


# -- what the gateway itself bounds and serves ----------------------------------------------------


async def test_run_limits(client, admin, config_path, pool_upstreams) -> None:
    await _reload(admin, config_path, _config(pool_upstreams, limits={"max_concurrent_runs": 1}))
    held = {"input": "slow: " + " ".join(["word"] * 40), "stream": True}
    async with client.stream("POST", "/v1/agents/echo-agent/run", json=held) as stream:
        lines = stream.aiter_lines()  # held: leaving the iterator would close the stream
        while not (await anext(lines)).startswith("event: RunStarted"):
            pass  # one run holds the only slot
        assert (await _run(client)).status_code == 503
        await _reload(admin, config_path, _config(pool_upstreams, limits={"max_concurrent_runs": 10, "max_streams": 1}))
        assert (await _run(client)).status_code == 200
        assert (await _run(client, stream=True)).status_code == 503
        await _reload(admin, config_path, _config(pool_upstreams))
        assert (await _run(client, stream=True)).status_code == 200


async def test_keys(client, admin, config_path, pool_upstreams) -> None:
    one, two = {"Authorization": f"Bearer {KEY_ONE}"}, {"Authorization": f"Bearer {KEY_TWO}"}
    slow_key = {"name": "one", "key": KEY_ONE, "rate_per_s": 0.001, "burst": 2}
    team_key = {"name": "two", "key": KEY_TWO, "entities": ["echo-team"]}

    async def passed(headers: Dict[str, str], count: int) -> List[int]:
        return [(await client.get("/config", headers=headers)).status_code for _ in range(count)]

    await _reload(admin, config_path, _config(pool_upstreams, auth={"keys": [slow_key, team_key]}))
    assert (await client.get("/config")).status_code == 401
    assert await passed(one, 3) == [200, 200, 429]
    assert (await client.get("/agents/echo-agent", headers=two)).status_code == 403
    assert (await client.get("/teams/echo-team", headers=two)).status_code == 200

    # only the burst changes: a new bucket, as deep as the new burst
    await _reload(admin, config_path, _config(pool_upstreams, auth={"keys": [{**slow_key, "burst": 4}, team_key]}))
    assert await passed(one, 5) == [200] * 4 + [429]
    # an unchanged limit keeps its bucket: a reload refills no one
    await _reload(admin, config_path, _config(pool_upstreams, auth={"keys": [{**slow_key, "burst": 4}, team_key]}))
    assert await passed(one, 1) == [429]
    # the rate: 1000 a second (burst 1000 by default)
    fast_key = {"name": "one", "key": KEY_ONE, "rate_per_s": 1000}
    await _reload(admin, config_path, _config(pool_upstreams, auth={"keys": [fast_key, {**team_key, "entities": ["echo-agent"]}]}))
    assert await passed(one, 10) == [200] * 10
    assert (await client.get("/agents/echo-agent", headers=two)).status_code == 200
    assert (await client.get("/teams/echo-team", headers=two)).status_code == 403

    await _reload(admin, config_path, _config(pool_upstreams, auth={"keys": [fast_key]}))  # two removed
    assert (await client.get("/config", headers=two)).status_code == 401
    assert (await client.get("/config", headers=one)).status_code == 200
    await _reload(admin, config_path, _config(pool_upstreams))  # no keys: open again
    assert (await client.get("/config")).status_code == 200


async def test_local_components_and_conflicts(client, admin, config_path, pool_upstreams) -> None:
    local = {"agents": ["tests.fixtures.only_agent:agent"]}  # also id echo-agent: a conflict
    await _reload(admin, config_path, _config(pool_upstreams, local=local, on_conflict="local"))
    answer = await _run(client)
    assert answered_by(answer.json()["content"])[0] == "only-agent"
    assert "x-agentos-gateway-upstream" not in answer.headers
    await _reload(admin, config_path, _config(pool_upstreams, local=local, on_conflict="upstream"))
    assert answered_by((await _run(client)).json()["content"])[0] in {server.name for server in pool_upstreams}
    await _reload(admin, config_path, _config(pool_upstreams, local={"agents": []}, on_conflict="local"))
    assert answered_by((await _run(client)).json()["content"])[0] in {server.name for server in pool_upstreams}

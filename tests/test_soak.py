"""A soak: 20,000 mixed runs through a gateway in front of two real AgentOS upstreams, then the
gateway process must be back where it was after the warm-up: memory within 10 %, no more open
files than a few, as many asyncio tasks, and no more upstream connections.

The mix: non-stream runs (agent, team, workflow), streams read to the end, streams the client
drops after the first event, runs that fail in the model (a 200 with ``status: ERROR``), unknown
ids (404), and a few ``slow:`` streams cancelled through AgentOS's cancel route while they run.
Every answer is checked, not only counted.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import aiohttp
import pytest

from tests.helpers import rss_mib
from tests.pools import ADMIN_KEY, gateway_config, start_gateway, start_upstreams
from tests.processes import Server, held_connections, stop_servers

TOTAL = int(os.environ.get("SOAK_RUNS", "20000"))
WARMUP = TOTAL // 10
CONCURRENCY = int(os.environ.get("SOAK_CONCURRENCY", "16"))
CANCELS = 50
REQUEST_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 30.0  # upstreams close idle keep-alive connections after 5 s (uvicorn)
# What may legitimately grow: the proxy remembers each run id for run_s + 60 s (at most 100,000),
# about 0.3 kB each, so 18,000 more of them are some 5 MiB; "remembered run ids" is printed.
RSS_TOLERANCE = 0.10
FD_SLACK = 8  # e.g. a keep-alive connection being replaced while counting

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SLOW = "slow: " + " ".join(["word"] * 40)  # one word every 0.25 s: cancelled long before its end
# kind -> share of the runs that are not cancels
MIX = {
    "run": 30,
    "team_run": 5,
    "workflow_run": 5,
    "stream": 25,
    "stream_abort": 15,
    "fail": 12,
    "unknown": 8,
}


@pytest.fixture(scope="module")
def soak_upstreams(log_dir: Path) -> Iterator[List[Server]]:
    """Two upstreams of its own: the soak leaves thousands of sessions in their in-memory
    databases, which no other test should find there, and no other gateway's connections to them
    count in its figures."""
    servers = start_upstreams(["soak-a", "soak-b"], log_dir)
    yield servers
    stop_servers(servers)


@pytest.fixture(scope="module")
def soak_gateway(log_dir: Path, soak_upstreams: List[Server]) -> Iterator[Server]:
    """Probes at the default pace (every 5 s, 2 s timeout, 3 failures): the tests' fast probes
    (every 0.5 s) would reuse every idle keep-alive connection (aiohttp hands out the oldest
    first) before the upstream's 5 s keep-alive closes it, so an idle pool would never shrink and
    connection counts would not settle; a 0.5 s probe timeout would also mark a busy upstream
    down mid-soak."""
    health = {"interval_s": 5, "timeout_s": 2, "unhealthy_threshold": 3}
    server = start_gateway("soak-gateway", gateway_config(soak_upstreams, health=health), log_dir)
    yield server
    server.stop()


def _plan(total: int, seed: int = 20_000) -> List[str]:
    rng = random.Random(seed)
    kinds, weights = zip(*MIX.items())
    plan = rng.choices(kinds, weights=weights, k=total - CANCELS)
    for _ in range(CANCELS):
        plan.insert(rng.randrange(len(plan) + 1), "cancel")
    return plan


# -- one operation each: raises AssertionError on a wrong answer --------------------------------------


async def _run(client: aiohttp.ClientSession, i: int, path: str, completed: str = "COMPLETED") -> None:
    text = f"soak {i}"
    async with client.post(path, json={"input": text}) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["status"] == completed, body
    assert text in body["content"], body["content"]


async def _stream(client: aiohttp.ClientSession, i: int, *, abort: bool) -> None:
    async with client.post("/v1/agents/echo-agent/run", json={"input": f"soak {i}", "stream": True}) as response:
        assert response.status == 200, await response.text()
        events = []
        async for line in response.content:
            if line.startswith(b"event: "):
                events.append(line[7:].strip().decode())
                if abort:
                    response.close()  # the client leaves mid-stream
                    return
    assert events[0] == "RunStarted" and events[-1] == "RunCompleted", events


async def _fail(client: aiohttp.ClientSession, i: int) -> None:
    async with client.post("/v1/agents/echo-agent/run", json={"input": f"fail: soak {i}"}) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["status"] == "ERROR", body


async def _unknown(client: aiohttp.ClientSession, i: int) -> None:
    async with client.post(f"/v1/agents/no-such-agent-{i % 97}/run", json={"input": "hi"}) as response:
        assert response.status == 404, await response.text()
        assert (await response.json()) == {"detail": "Agent not found"}


async def _cancel(client: aiohttp.ClientSession, i: int) -> None:
    run_id = str(uuid.uuid4())
    body = {"input": SLOW, "stream": True, "run_id": run_id}
    async with client.post("/v1/agents/echo-agent/run", json=body) as response:
        assert response.status == 200, await response.text()
        events = []
        async for line in response.content:
            if not line.startswith(b"event: "):
                continue
            events.append(line[7:].strip().decode())
            if events[-1] == "RunContent" and events.count("RunContent") == 1:
                async with client.post(f"/agents/echo-agent/runs/{run_id}/cancel") as cancelled:
                    assert cancelled.status == 200, await cancelled.text()
    assert "RunCancelled" in events, events  # (agno's stream may still end with RunCompleted)
    assert events.count("RunContent") < 40, "the run was not cancelled: it streamed to its end"


OPERATIONS: Dict[str, Callable[[aiohttp.ClientSession, int], Any]] = {
    "run": lambda client, i: _run(client, i, "/v1/agents/echo-agent/run"),
    "team_run": lambda client, i: _run(client, i, "/v1/teams/echo-team/run"),
    "workflow_run": lambda client, i: _run(client, i, "/v1/workflows/echo-workflow/run"),
    "stream": lambda client, i: _stream(client, i, abort=False),
    "stream_abort": lambda client, i: _stream(client, i, abort=True),
    "fail": _fail,
    "unknown": _unknown,
    "cancel": _cancel,
}


@dataclass
class Tally:
    done: Counter
    failures: List[str]


async def _drive(client: aiohttp.ClientSession, plan: List[str], offset: int, tally: Tally) -> float:
    """Runs ``plan`` with CONCURRENCY workers; returns the wall time."""
    items = iter(enumerate(plan, start=offset))

    async def worker() -> None:
        for i, kind in items:
            try:
                await OPERATIONS[kind](client, i)
                tally.done[kind] += 1
            except (AssertionError, aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as error:
                tally.failures.append(f"#{i} {kind}: {type(error).__name__}: {error}"[:500])

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.monotonic() - started


# -- the gateway process's figures ---------------------------------------------------------------------




def _proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _figures(client: aiohttp.ClientSession, gateway: Server, upstreams: List[Server]) -> Dict[str, Any]:
    async with client.get(f"{gateway.admin_url}/admin/runtime", headers=ADMIN) as response:
        assert response.status == 200, await response.text()
        runtime = await response.json()
    pid = gateway.process.pid
    assert runtime["pid"] == pid
    return {
        "rss": int(1024 * 1024 * rss_mib(pid)),
        "fds": _proc_fds(pid),
        "tasks": runtime["tasks"],
        "connector": sum(runtime["upstream_connections"].values()),
        "connector_in_use": sum(runtime["upstream_connections_in_use"].values()),
        "held": sum(held_connections(server.port) for server in upstreams),
        "remembered_runs": runtime["remembered_runs"],
    }


async def _settled(
    client: aiohttp.ClientSession, gateway: Server, upstreams: List[Server], done: Callable[[Dict[str, Any]], bool]
) -> Dict[str, Any]:
    """Figures polled until ``done`` says they settled, or the last ones at the deadline."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        figures = await _figures(client, gateway, upstreams)
        if done(figures) or time.monotonic() > deadline:
            return figures
        await asyncio.sleep(0.25)


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


@pytest.mark.timeout(400)
async def test_soak_mixed_runs_leave_no_trace(soak_gateway: Server, soak_upstreams: List[Server]) -> None:
    plan = _plan(TOTAL)
    tally = Tally(Counter(), [])
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    # Idle connections dropped before the gateway's own keep-alive timeout (uvicorn's 5 s) ends
    # them: the settle below leaves them idle for seconds, and a POST on a connection the server
    # is closing at that moment fails to write (as the gateway's own pool avoids upstream).
    connector = aiohttp.TCPConnector(limit=CONCURRENCY * 2, keepalive_timeout=2.0)
    async with aiohttp.ClientSession(soak_gateway.url, timeout=timeout, connector=connector) as client:
        warmup_s = await _drive(client, plan[:WARMUP], 0, tally)
        # The warm-up level, settled: nothing in flight any more (dropped streams finish closing)
        # and the idle keep-alive connections closed, but for the probes' own (one or two each).
        probes = 2 * len(soak_upstreams)
        warm = await _settled(
            client, soak_gateway, soak_upstreams, lambda f: f["connector_in_use"] == 0 and f["connector"] <= probes
        )
        main_s = await _drive(client, plan[WARMUP:], WARMUP, tally)
        end = await _settled(
            client, soak_gateway, soak_upstreams,
            lambda f: f["connector_in_use"] == 0 and f["tasks"] <= warm["tasks"] and f["connector"] <= warm["connector"]
            and f["held"] <= warm["held"] and f["fds"] <= warm["fds"] + FD_SLACK,
        )  # fmt: skip

    runs = WARMUP + len(plan[WARMUP:])
    print(
        f"\nsoak: {runs} runs ({dict(sorted(tally.done.items()))}), {len(tally.failures)} failed\n"
        f"  warm-up {WARMUP} runs in {warmup_s:.1f} s ({WARMUP / warmup_s:.0f} runs/s); "
        f"then {runs - WARMUP} in {main_s:.1f} s ({(runs - WARMUP) / main_s:.0f} runs/s)\n"
        f"  {'':22}{'warm-up':>12}{'end':>12}\n"
        f"  {'RSS':22}{_mib(warm['rss']):>12}{_mib(end['rss']):>12}  ({(end['rss'] / warm['rss'] - 1) * 100:+.1f} %)\n"
        f"  {'open fds':22}{warm['fds']:>12}{end['fds']:>12}\n"
        f"  {'asyncio tasks':22}{warm['tasks']:>12}{end['tasks']:>12}\n"
        f"  {'connector (in use)':22}{warm['connector']:>8} ({warm['connector_in_use']}){end['connector']:>8} ({end['connector_in_use']})\n"
        f"  {'held by upstreams':22}{warm['held']:>12}{end['held']:>12}\n"
        f"  {'remembered run ids':22}{warm['remembered_runs']:>12}{end['remembered_runs']:>12}"
    )
    assert not tally.failures, f"{len(tally.failures)} runs failed, the first ones:\n" + "\n".join(tally.failures[:10])
    assert sum(tally.done.values()) == TOTAL and tally.done["cancel"] == CANCELS
    assert abs(end["rss"] - warm["rss"]) <= RSS_TOLERANCE * warm["rss"], (warm["rss"], end["rss"])
    assert end["fds"] <= warm["fds"] + FD_SLACK, (warm["fds"], end["fds"])
    assert end["tasks"] <= warm["tasks"], (warm["tasks"], end["tasks"])
    assert end["connector_in_use"] == 0, end
    assert end["connector"] <= warm["connector"], (warm["connector"], end["connector"])
    assert end["held"] <= warm["held"], (warm["held"], end["held"])

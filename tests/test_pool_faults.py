"""Faults of real upstreams behind a real gateway: killed, hung, answering garbage."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from typing import Dict, List, Optional, Tuple

import httpx
import pytest

from gateway.balancing import rank
from tests.helpers import eventually, eventually_async, rss_mib
from tests.pools import ADMIN_KEY, FAST_HEALTH, gateway_config, start_gateway, start_upstreams, upstream_states
from tests.fake_upstream import FaultyUpstream
from tests.processes import Server, restart, stop_servers

SLOW_WORDS = 40  # a slow: run streams one word every 0.25 s: 10 s, far longer than these tests wait


def _home(session_id: str, names: List[str]) -> str:
    return rank(session_id, [(name, 1.0) for name in names])[0]


def _sessions_homed(names: List[str], per_upstream: int, prefix: str) -> Dict[str, str]:
    """Session ids, ``per_upstream`` of them hashed to each upstream (weights equal)."""
    sessions: Dict[str, str] = {}
    counts: Counter = Counter()
    index = 0
    while min(counts[name] for name in names) < per_upstream:
        session_id = f"{prefix}-{index}"
        home = _home(session_id, names)
        if counts[home] < per_upstream:
            sessions[session_id] = home
            counts[home] += 1
        index += 1
    return sessions


async def _run(client: httpx.AsyncClient, session_id: Optional[str], text: str = "hi") -> httpx.Response:
    body = {"input": text} if session_id is None else {"input": text, "session_id": session_id}
    return await client.post("/v1/agents/echo-agent/run", json=body)


async def _frames(response: httpx.Response):
    """(event name, data) of each SSE frame as it arrives."""
    name = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            yield name, json.loads(line[len("data: ") :])


# -- kill -9 ---------------------------------------------------------------------------------------


@pytest.fixture
def killable(log_dir):
    names = ["kill-a", "kill-b", "kill-c"]
    upstreams = start_upstreams(names, log_dir)
    config = gateway_config(
        upstreams,
        outlier={"consecutive_failures": 3, "base_ejection_s": 30},
        retry={"min_retry_concurrency": 32},  # every concurrent request of this test may need its retry
    )
    gateway = start_gateway("kill-gateway", config, log_dir)
    servers = {server.name: server for server in upstreams}
    yield gateway, servers
    stop_servers([gateway, *servers.values()])


async def test_kill_9_under_load_loses_no_new_run_and_moves_only_its_sessions(killable, log_dir) -> None:
    gateway, servers = killable
    names = sorted(servers)
    victim = "kill-b"
    sessions = _sessions_homed(names, per_upstream=8, prefix="kill")
    errors: List[str] = []
    after_kill: Dict[str, List[Tuple[str, str]]] = {session_id: [] for session_id in sessions}
    killed = asyncio.Event()
    stop = asyncio.Event()
    completed = [0]

    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        for session_id in sessions:  # every session starts at home
            response = await _run(client, session_id)
            assert response.headers["x-agentos-gateway-upstream"] == sessions[session_id]

        async def load(worker: int) -> None:
            ids = list(sessions)[worker::4]
            while not stop.is_set():
                for session_id in ids + [None]:  # its sessions, and a new session each round
                    was_killed = killed.is_set()
                    response = await _run(client, session_id)
                    completed[0] += 1
                    if response.status_code != 200:
                        # A run in flight on the victim when it died is lost with it (502: it may
                        # have run, so it is not retried); a run sent after the kill must not fail.
                        lost = response.status_code == 502 and ("connection lost" in response.text or "cut short" in response.text)
                        if was_killed or not lost:
                            errors.append(f"{response.status_code} {response.text}")
                        continue
                    if session_id is not None and was_killed:
                        upstream = response.headers["x-agentos-gateway-upstream"]
                        after_kill[session_id].append((upstream, response.headers["x-agentos-gateway-affinity"]))

        victim_session = next(s for s, home in sessions.items() if home == victim)
        async with client.stream(
            "POST",
            "/v1/agents/echo-agent/run",
            json={"input": "slow: " + " ".join(["word"] * SLOW_WORDS), "stream": True, "session_id": victim_session},
        ) as stream:
            frames = _frames(stream)
            async for name, _ in frames:
                if name == "RunContent":
                    break
            workers = [asyncio.create_task(load(worker)) for worker in range(4)]
            await eventually(lambda: completed[0] >= 20, what="load running")
            servers[victim].process.send_signal(signal.SIGKILL)
            servers[victim].process.wait(timeout=10)
            killed.set()
            killed_at = time.monotonic()
            last: Tuple[Optional[str], Dict] = (None, {})
            async with asyncio.timeout(2.0):  # the bound: never a hang
                async for last in frames:
                    pass
            stream_ended_s = time.monotonic() - killed_at
        assert last[0] == "RunError", last
        assert victim in last[1]["content"] and last[1]["session_id"] == victim_session

        await eventually(lambda: all(len(seen) >= 2 for seen in after_kill.values()), timeout=60, what="runs after the kill")
        stop.set()
        await asyncio.gather(*workers)

        assert errors == []
        for session_id, seen in after_kill.items():
            home = sessions[session_id]
            if home == victim:  # moved, each to the next upstream in its own rendezvous order
                next_home = rank(session_id, [(n, 1.0) for n in names if n != victim])[0]
                assert {upstream for upstream, _ in seen} == {next_home}, (session_id, seen)
                assert {affinity for _, affinity in seen} == {"moved"}
            else:  # stayed
                assert seen and all(entry == (home, "hit") for entry in seen), (session_id, seen)

        servers[victim] = restart(servers[victim], log_dir)
        rejoin_s, probes = await _rejoins_within_two_probes(gateway, victim)
        back = await _run(client, victim_session)
        assert back.status_code == 200 and back.headers["x-agentos-gateway-upstream"] == victim
        assert back.headers["x-agentos-gateway-affinity"] == "hit"
    print(
        f"kill -9: stream ended {stream_ended_s * 1000:.0f} ms after the kill; usable again {rejoin_s:.2f} s "
        f"after the restart answered, after {probes} probe(s) (interval {FAST_HEALTH['interval_s']} s)"
    )


async def _rejoins_within_two_probes(gateway: Server, name: str) -> Tuple[float, int]:
    """Called once a restarted upstream answers: the gateway must find it usable by the end of
    its second probe from now (the first may have started before the restart). Returns the
    seconds until it was seen usable and the probes done by then."""
    started = time.monotonic()
    probes_before = (await upstream_states(gateway))[name]["probes"]

    async def usable_or_two_probes() -> Optional[Dict]:
        state = (await upstream_states(gateway))[name]
        return state if state["usable"] or state["probes"] >= probes_before + 2 else None

    state = await eventually_async(usable_or_two_probes, timeout=30, what=f"{name} usable or probed twice")
    rejoin_s = time.monotonic() - started
    assert state["usable"], f"{name} not usable after two probes since its restart: {state}"
    assert state["ejected_for_s"] is None and state["consecutive_failures"] == 0, state
    return rejoin_s, state["probes"] - probes_before


@pytest.fixture(params=["unseen", "seen-down"])
def restartable(request, log_dir):
    """Two upstreams; probes that mark a down upstream down at once (seen-down) or never (unseen),
    and that need three good probes to mark one up again."""
    seen_down = request.param == "seen-down"
    upstreams = start_upstreams(["restart-a", "restart-b"], log_dir)
    health = {**FAST_HEALTH, "healthy_threshold": 3, "unhealthy_threshold": 1 if seen_down else 1000}
    config = gateway_config(upstreams, health=health, outlier={"consecutive_failures": 2, "base_ejection_s": 120})
    gateway = start_gateway(f"restart-gateway-{request.param}", config, log_dir)
    servers = {server.name: server for server in upstreams}
    yield gateway, servers, seen_down
    stop_servers([gateway, *servers.values()])  # the restarted process, not the killed one


async def test_a_restarted_upstream_starts_clean_and_rejoins_within_two_probes(restartable, log_dir) -> None:
    gateway, servers, seen_down = restartable
    names = sorted(servers)
    victim = "restart-b"
    session = next(s for s, home in _sessions_homed(names, per_upstream=1, prefix="restart").items() if home == victim)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        servers[victim].process.kill()
        servers[victim].process.wait(timeout=10)
        # Runs of its session fail to connect there (retried on the other): ejected for 120 s.
        for _ in range(2):
            moved = await _run(client, session)
            assert moved.status_code == 200 and moved.headers["x-agentos-gateway-upstream"] == "restart-a"
        state = (await upstream_states(gateway))[victim]
        assert state["ejected_for_s"] is not None and not state["usable"], state
        if seen_down:
            await eventually_async(
                lambda: _state_is(gateway, victim, "unhealthy"), what="probes marking the killed upstream down"
            )
        servers[victim] = restart(servers[victim], log_dir)
        rejoin_s, probes = await _rejoins_within_two_probes(gateway, victim)
        home = await _run(client, session)
        assert home.status_code == 200 and home.headers["x-agentos-gateway-upstream"] == victim
        assert home.headers["x-agentos-gateway-affinity"] == "hit"
    assert f"upstream {victim} restarted" in gateway.log()
    print(f"restart ({'seen down' if seen_down else 'unseen'}): usable {rejoin_s:.2f} s after it answered, {probes} probe(s)")


async def _state_is(gateway: Server, name: str, state: str) -> bool:
    return (await upstream_states(gateway))[name]["state"] == state


# -- SIGSTOP ---------------------------------------------------------------------------------------


@pytest.fixture
def hangable(log_dir):
    upstreams = start_upstreams(["hang-a", "hang-b"], log_dir)
    config = gateway_config(
        upstreams, timeouts={"run_s": 1.5, "first_byte_s": 1.0}, outlier={"consecutive_failures": 2}
    )
    gateway = start_gateway("hang-gateway", config, log_dir)
    yield gateway, {server.name: server for server in upstreams}
    for server in upstreams:
        if server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
    stop_servers([gateway, *upstreams])


async def test_a_hung_upstream_times_out_is_ejected_and_returns(hangable) -> None:
    gateway, servers = hangable
    names = sorted(servers)
    sessions = _sessions_homed(names, per_upstream=1, prefix="hang")
    stuck = next(s for s, home in sessions.items() if home == "hang-b")
    fine = next(s for s, home in sessions.items() if home == "hang-a")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        os.kill(servers["hang-b"].process.pid, signal.SIGSTOP)
        try:
            timed_out = await _run(client, stuck)
            assert timed_out.status_code == 504, timed_out.text
            assert "1.5 s" in timed_out.json()["detail"]
            stream = await client.post(
                "/v1/agents/echo-agent/run", json={"input": "hi", "stream": True, "session_id": stuck}
            )
            assert stream.status_code in (504, 200)  # 200: already moved, answered by hang-a

            async def moved() -> bool:
                response = await _run(client, stuck)
                return response.status_code == 200 and response.headers["x-agentos-gateway-upstream"] == "hang-a"

            deadline = time.monotonic() + 15
            while not await moved():
                assert time.monotonic() < deadline, "the hung upstream was never taken out"
            unaffected = await _run(client, fine)
            assert unaffected.status_code == 200 and unaffected.headers["x-agentos-gateway-affinity"] == "hit"
            deadline = time.monotonic() + 15
            while (await upstream_states(gateway))["hang-b"]["state"] != "unhealthy":
                assert time.monotonic() < deadline, "probes never marked the hung upstream down"
                await asyncio.sleep(0.05)
        finally:
            os.kill(servers["hang-b"].process.pid, signal.SIGCONT)

        async def home_again() -> bool:
            response = await _run(client, stuck)
            return response.headers.get("x-agentos-gateway-upstream") == "hang-b"

        deadline = time.monotonic() + 15
        while not await home_again():
            assert time.monotonic() < deadline, "the upstream never returned after SIGCONT"
            await asyncio.sleep(0.05)


# -- garbage and cut answers -----------------------------------------------------------------------


@pytest.fixture(params=[50, 0], ids=["panic-default", "panic-off"])
async def faulty(request, log_dir):
    upstream = FaultyUpstream()
    await upstream.start()
    config = {
        "upstreams": [{"name": "faulty", "url": upstream.url}],
        "health": FAST_HEALTH,
        "outlier": {"consecutive_failures": 3, "base_ejection_s": 60},
        "panic_threshold_percent": request.param,
        "admin_key": ADMIN_KEY,
    }
    gateway = await asyncio.to_thread(start_gateway, f"faulty-gateway-{request.param}", config, log_dir)
    gateway.faulty = upstream  # type: ignore[attr-defined]
    gateway.panic_threshold = request.param  # type: ignore[attr-defined]
    yield gateway
    gateway.stop()
    await upstream.close()


async def test_garbage_and_cut_answers_are_502_or_an_in_band_error_then_ejection(faulty: Server) -> None:
    async with httpx.AsyncClient(base_url=faulty.url, timeout=30) as client:
        garbage = await _run(client, "s-garbage", "garbage please")
        assert garbage.status_code == 502, garbage.text
        assert garbage.json()["detail"].startswith("Upstream faulty: malformed answer")

        short = await _run(client, "s-short", "short please")
        assert short.status_code == 502, short.text
        assert "cut short" in short.json()["detail"]

        frames = []
        async with client.stream(
            "POST", "/v1/agents/echo-agent/run", json={"input": "cut please", "stream": True, "session_id": "s-cut"}
        ) as stream:
            assert stream.status_code == 200
            async with asyncio.timeout(10):
                frames = [frame async for frame in _frames(stream)]
        assert [name for name, _ in frames] == ["RunStarted", "RunError"]
        error = frames[-1][1]
        assert error["session_id"] == "s-cut" and error["agent_id"] == "echo-agent" and "faulty" in error["content"]
        assert error["error_type"] == "UpstreamError"
        assert (await upstream_states(faulty))["faulty"]["ejected_for_s"] is not None  # three in a row

        after = await _run(client, "s-after", "fine please")
        if faulty.panic_threshold:  # type: ignore[attr-defined]
            # The only upstream is ejected: 0 % usable is under the threshold, so it still serves.
            assert after.status_code == 200 and after.headers["x-agentos-gateway-upstream"] == "faulty", after.text
            assert _metric(await client.get(f"{faulty.admin_url}/metrics"), "agentos_gateway_panic_total") >= 1
            assert "panic: 0 of 1 upstreams (faulty) usable" in faulty.log()
        else:  # panic off: nothing can serve
            assert after.status_code == 503, after.text
            assert int(after.headers["retry-after"]) >= 1
    assert "upstream faulty ejected for 60.0 s" in faulty.log()


def _metric(scrape: httpx.Response, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in scrape.text.splitlines():
        if line.startswith(name) and all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(params=[False, True], ids=["on_503-off", "on_503-on"])
async def faulty_and_fine(request, log_dir, pool_upstreams):
    upstream = FaultyUpstream()
    await upstream.start()
    fine = pool_upstreams[0]
    config = {
        "upstreams": [{"name": "faulty", "url": upstream.url}, {"name": fine.name, "url": fine.url}],
        "health": FAST_HEALTH,
        "retry": {"on_503": request.param},
    }
    gateway = await asyncio.to_thread(start_gateway, f"faulty-and-fine-gateway-{request.param}", config, log_dir)
    names = [("faulty", 1.0), (fine.name, 1.0)]
    session_id = next(f"f-{i}" for i in range(100) if rank(f"f-{i}", names)[0] == "faulty")
    yield gateway, session_id, fine.name, request.param
    gateway.stop()
    await upstream.close()


async def test_a_503_is_retried_only_by_opt_in_and_a_sent_request_never(faulty_and_fine) -> None:
    gateway, session_id, fine, on_503 = faulty_and_fine
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        busy = await _run(client, session_id, "busy now")
        if on_503:  # the faulty upstream's 503 was taken as "did not run it": the next one did
            assert busy.status_code == 200, busy.text
            assert busy.headers["x-agentos-gateway-upstream"] == fine
            assert busy.headers["x-agentos-gateway-affinity"] == "moved"
        else:  # AgentOS may answer 503 for a run that failed mid-way: passed on, not run twice
            assert busy.status_code == 503 and busy.json() == {"detail": "busy"}, busy.text
            assert busy.headers["x-agentos-gateway-upstream"] == "faulty"
        # a garbage answer came after the request was sent: the run may have started, no retry
        garbage = await _run(client, session_id, "garbage now")
        assert garbage.status_code == 502 and garbage.headers.get("x-agentos-gateway-upstream") is None


@pytest.fixture(params=[False, True], ids=["count_5xx-off", "count_5xx-on"])
def one_upstream(request, log_dir, pool_upstreams):
    """A gateway in front of one real upstream, ejecting after 3 failures in a row."""
    config = gateway_config(
        pool_upstreams[:1], outlier={"consecutive_failures": 3, "base_ejection_s": 60, "count_5xx": request.param}
    )
    gateway = start_gateway(f"one-upstream-gateway-{request.param}", config, log_dir)
    yield gateway, pool_upstreams[0].name, request.param
    gateway.stop()


async def test_a_clients_own_500s_eject_nothing_unless_configured(one_upstream) -> None:
    gateway, name, count_5xx = one_upstream
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        session_id = (await _run(client, "agent-session")).json()["session_id"]
        # A session summary that is no summary: AgentOS fails on it with a 500 (its own
        # exception, before it writes anything), which says nothing about the upstream's health.
        bad = {"summary": {"not-a-summary-field": 1}}
        statuses = [(await client.patch(f"/sessions/{session_id}", json=bad)).status_code for _ in range(20)]
        assert statuses == [500] * 20
        state = (await upstream_states(gateway))[name]
        scrape = await client.get(f"{gateway.admin_url}/metrics")
        assert _metric(scrape, "agentos_gateway_upstream_requests_total", upstream=name, outcome="server_error") == 20
        if count_5xx:
            assert state["ejected_for_s"] is not None and state["ejections"] >= 1, state
        else:
            assert state["ejected_for_s"] is None and state["ejections"] == 0 and state["usable"], state
            assert _metric(scrape, "agentos_gateway_upstream_ejections_total", upstream=name) == 0
        # either way, runs go on: the only upstream serves (ejected, in panic)
        after = await _run(client, "another-session")
        assert after.status_code == 200, after.text
    print(f"20 client-caused 500s with count_5xx={count_5xx}: ejections {state['ejections']}")




async def test_a_slow_client_slows_the_upstream_instead_of_filling_the_gateway(faulty: Server) -> None:
    upstream: FaultyUpstream = faulty.faulty  # type: ignore[attr-defined]
    rss_before = rss_mib(faulty.process.pid)
    async with httpx.AsyncClient(base_url=faulty.url, timeout=30) as client:
        async with client.stream(
            "POST", "/v1/agents/echo-agent/run", json={"input": "flood please", "stream": True, "session_id": "s-flood"}
        ) as stream:
            async for _ in stream.aiter_raw():
                break  # one chunk, then the client stops reading
            async with asyncio.timeout(30):
                await upstream.flood_blocked.wait()
            # Nothing more should move while the client does not read: watch for a while (the
            # one wait here that no event can end, since what is tested is that nothing happens).
            await asyncio.sleep(1.0)
            sent_mb, rss_growth = upstream.flood_sent / 1e6, rss_mib(faulty.process.pid) - rss_before
    print(f"backpressure: upstream held back after {sent_mb:.1f} MB; gateway RSS grew {rss_growth:.1f} MB")
    # socket buffers on the way and aiohttp's read buffer: a few MB, never the endless stream
    assert sent_mb < 64 and rss_growth < 64

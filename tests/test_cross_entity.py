"""A run-scoped request, a fork and a compact must belong to the entity in their path
(``gateway/api/ownership.py``), through the gateway that started the run (its record) and through
a second gateway process that did not (the read-back); and the run and stream limits on what
continues or follows a run.

Real AgentOS upstreams, each on its own SQLite file, are the oracle: AgentOS itself cancels,
continues, resumes and forks across entities (its state shows whether a request reached it);
an upstream that records every path it gets shows the refused requests never reach one."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from tests.fake_upstream import FaultyUpstream
from tests.helpers import eventually_async
from tests.pools import ADMIN_KEY, FAST_HEALTH, gateway_config, spawn_gateway, start_gateway, start_upstreams
from tests.processes import Server, start_servers, stop_servers

ALL_KEY = "cross-all-key-0123456789"
TEAM_KEY = "cross-team-key-0123456789"
AGENT_KEY = "cross-agent-key-0123456789"
KEYS = [
    {"name": "all", "key": ALL_KEY},
    {"name": "team-only", "key": TEAM_KEY, "entities": ["echo-team"]},
    {"name": "agent-only", "key": AGENT_KEY, "entities": ["echo-agent"]},
]
SLOW = "slow: " + " ".join(f"w{index}" for index in range(12))  # 3 s of chunks
RUN_NOT_FOUND = {"detail": "Run not found"}
SESSION_NOT_FOUND = {"detail": "Session not found"}


def _auth(key: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def upstreams(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[List[Server]]:
    """Two upstreams, each with a database of its own: a session lives on one of them only."""
    servers = start_upstreams(("xe-a", "xe-b"), log_dir, db_dir=tmp_path_factory.mktemp("cross-entity"))
    yield servers
    stop_servers(servers)


@pytest.fixture(scope="module")
def starter(log_dir: Path, upstreams: List[Server]) -> Iterator[Server]:
    """The gateway the runs start through: it records them."""
    server = start_gateway("cross-starter", gateway_config(upstreams, auth={"keys": KEYS}), log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replica(log_dir: Path, upstreams: List[Server]) -> Iterator[Server]:
    """A second gateway with the same configuration: it has no record of the starter's runs."""
    server = start_gateway("cross-replica", gateway_config(upstreams, auth={"keys": KEYS}), log_dir)
    yield server
    server.stop()


@pytest.fixture(params=["starter", "replica"])
def through(request: pytest.FixtureRequest) -> Server:
    """Each check through the gateway that started the run, then through the one that did not."""
    return request.getfixturevalue(request.param)


def _by_name(upstreams: List[Server], name: str) -> Server:
    return next(server for server in upstreams if server.name == name)


async def _run(gateway: Server, kind: str, entity: str, **body: Any) -> Tuple[str, str, str]:
    """A run through ``gateway``: (run id, session id, the upstream's name)."""
    session_id, run_id = f"xe-{uuid.uuid4()}", str(uuid.uuid4())
    payload = {"input": "hello", "session_id": session_id, "run_id": run_id, **body}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=_auth(ALL_KEY)) as client:
        answer = await client.post(f"/v1/{kind}/{entity}/run", json=payload)
    assert answer.status_code in (200, 202), answer.text
    return run_id, session_id, answer.headers["x-agentos-gateway-upstream"]


async def _stored(upstream: Server, path: str) -> Optional[Dict[str, Any]]:
    async with httpx.AsyncClient(base_url=upstream.url, timeout=10) as client:
        answer = await client.get(path)
    return answer.json() if answer.status_code == 200 else None


async def _ended(upstream: Server, session_id: str, run_id: str) -> str:
    """The run's final status, read from its upstream."""

    async def ended() -> Optional[str]:
        run = await _stored(upstream, f"/sessions/{session_id}/runs/{run_id}")
        return run["status"] if run is not None and run["status"] not in ("PENDING", "RUNNING") else None

    return await eventually_async(ended, timeout=30, what=f"run {run_id} ended")


async def _run_count(upstream: Server, session_id: str) -> int:
    async with httpx.AsyncClient(base_url=upstream.url, timeout=10) as client:
        answer = await client.get(f"/sessions/{session_id}/runs")
    assert answer.status_code == 200, answer.text
    return len(answer.json())


async def _session_count(upstream: Server) -> int:
    stored = await _stored(upstream, "/sessions?limit=1")
    assert stored is not None
    return stored["meta"]["total_count"]


# -- cancel --------------------------------------------------------------------------------------


async def test_a_cancel_through_another_entity_is_refused_and_the_run_goes_on(starter, through, upstreams) -> None:
    run_id, session_id, owner = await _run(starter, "agents", "echo-agent", input=SLOW, background=True)
    async with httpx.AsyncClient(base_url=through.url, timeout=30) as client:
        for key in (TEAM_KEY, ALL_KEY):  # a mismatch the gateway can see is refused to every key
            refused = await client.post(
                f"/teams/echo-team/runs/{run_id}/cancel", params={"session_id": session_id}, headers=_auth(key)
            )
            assert refused.status_code == 404 and refused.json() == RUN_NOT_FOUND, refused.text
    # AgentOS cancels any run id it is given: a COMPLETED run shows no cancel reached it
    assert await _ended(_by_name(upstreams, owner), session_id, run_id) == "COMPLETED"


async def test_a_cancel_through_the_runs_own_entity_cancels_it(starter, through, upstreams) -> None:
    run_id, session_id, owner = await _run(starter, "agents", "echo-agent", input=SLOW * 3, background=True)
    async with httpx.AsyncClient(base_url=through.url, timeout=30, headers=_auth(AGENT_KEY)) as client:
        cancelled = await client.post(f"/agents/echo-agent/runs/{run_id}/cancel", params={"session_id": session_id})
    assert cancelled.status_code == 200 and cancelled.json() == {}, cancelled.text
    assert await _ended(_by_name(upstreams, owner), session_id, run_id) == "CANCELLED"


async def test_an_unverifiable_cancel_from_a_limited_key_is_answered_as_an_unknown_run(replica, starter, upstreams) -> None:
    """Without a session id the replica cannot read the run back: for a key limited to the team
    it is a run AgentOS does not have (``{}``), and nothing is sent."""
    run_id, session_id, owner = await _run(starter, "agents", "echo-agent", input=SLOW, background=True)
    async with httpx.AsyncClient(base_url=replica.url, timeout=30, headers=_auth(TEAM_KEY)) as client:
        answered = await client.post(f"/teams/echo-team/runs/{run_id}/cancel")
        unknown = await client.post(f"/teams/echo-team/runs/no-such-{uuid.uuid4()}/cancel")
    assert answered.status_code == 200 and answered.json() == {}
    assert unknown.status_code == 200 and unknown.json() == {}
    assert await _ended(_by_name(upstreams, owner), session_id, run_id) == "COMPLETED"


# -- continue ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, entity, key, other_path",
    [("agents", "echo-agent", TEAM_KEY, "/teams/echo-team"), ("teams", "echo-team", AGENT_KEY, "/agents/echo-agent")],
)
async def test_a_continue_through_another_entity_is_refused(
    starter, through, upstreams, kind: str, entity: str, key: str, other_path: str
) -> None:
    """AgentOS continues a team's run through an agent's route (and runs the team): refused here,
    to a key for everything too (the replica reads the run back to know)."""
    run_id, session_id, owner = await _run(starter, kind, entity)
    form = {"input": "more", "session_id": session_id, "stream": "false"}
    async with httpx.AsyncClient(base_url=through.url, timeout=30) as client:
        for each in (key, ALL_KEY):
            refused = await client.post(f"{other_path}/runs/{run_id}/continue", data=form, headers=_auth(each))
            assert refused.status_code == 404 and refused.json() == RUN_NOT_FOUND, refused.text
    assert await _run_count(_by_name(upstreams, owner), session_id) == 1  # nothing was continued


async def test_a_continue_through_the_runs_own_entity_continues_it(starter, through, upstreams) -> None:
    run_id, session_id, owner = await _run(starter, "teams", "echo-team")
    form = {"input": "more", "session_id": session_id, "stream": "false"}
    async with httpx.AsyncClient(base_url=through.url, timeout=30, headers=_auth(TEAM_KEY)) as client:
        continued = await client.post(f"/teams/echo-team/runs/{run_id}/continue", data=form)
    assert continued.status_code == 200 and "more" in continued.json()["content"], continued.text
    assert continued.headers["x-agentos-gateway-upstream"] == owner
    assert await _run_count(_by_name(upstreams, owner), session_id) == 2


async def test_a_continue_of_a_run_no_upstream_has_is_404_for_a_limited_key(replica) -> None:
    form = {"input": "more", "session_id": f"xe-{uuid.uuid4()}", "stream": "false"}
    async with httpx.AsyncClient(base_url=replica.url, timeout=30, headers=_auth(TEAM_KEY)) as client:
        answer = await client.post(f"/teams/echo-team/runs/no-such-{uuid.uuid4()}/continue", data=form)
    assert answer.status_code == 404 and answer.json() == RUN_NOT_FOUND


# -- resume, reads -------------------------------------------------------------------------------


def _events(text: str) -> List[str]:
    return [json.loads(line[6:]).get("event") for line in text.splitlines() if line.startswith("data: ")]


async def test_a_resume_through_another_entity_is_refused(starter, through, upstreams) -> None:
    run_id, session_id, owner = await _run(starter, "agents", "echo-agent", input="slow: a b", stream=True, background=True)
    upstream = _by_name(upstreams, owner)
    assert await _ended(upstream, session_id, run_id) == "COMPLETED"
    form = {"session_id": session_id, "last_event_index": "0"}
    async with httpx.AsyncClient(timeout=30) as client:
        refused = [
            await client.post(f"{through.url}/teams/echo-team/runs/{run_id}/resume", data=form, headers=_auth(key))
            for key in (TEAM_KEY, ALL_KEY)
        ]
        # the oracle: AgentOS replays the agent's run through the team's route
        direct = await client.post(f"{upstream.url}/teams/echo-team/runs/{run_id}/resume", data=form)
        allowed = await client.post(f"{through.url}/agents/echo-agent/runs/{run_id}/resume", data=form, headers=_auth(AGENT_KEY))
    assert direct.status_code == 200 and "RunCompleted" in _events(direct.text)
    for answer in refused:
        assert answer.status_code == 404 and answer.json() == RUN_NOT_FOUND, answer.text
    assert allowed.status_code == 200 and _events(allowed.text) == _events(direct.text)


async def test_reads_of_a_run_through_another_entity_answer_as_agentos(starter, through, upstreams) -> None:
    """AgentOS filters its run reads by entity itself; the gateway's record answers the same."""
    run_id, session_id, owner = await _run(starter, "agents", "echo-agent")
    upstream = _by_name(upstreams, owner)
    for path in (f"/teams/echo-team/runs/{run_id}", f"/teams/echo-team/runs/{run_id}/checkpoints"):
        async with httpx.AsyncClient(timeout=30) as client:
            refused = await client.get(through.url + path, params={"session_id": session_id}, headers=_auth(TEAM_KEY))
            direct = await client.get(upstream.url + path, params={"session_id": session_id})
        assert (refused.status_code, refused.json()) == (direct.status_code, direct.json()) == (404, RUN_NOT_FOUND)
    async with httpx.AsyncClient(base_url=through.url, timeout=30, headers=_auth(AGENT_KEY)) as client:
        own = await client.get(f"/agents/echo-agent/runs/{run_id}", params={"session_id": session_id})
    assert own.status_code == 200 and own.json()["run_id"] == run_id


# -- fork and compact ----------------------------------------------------------------------------


async def test_a_fork_of_another_entitys_session_is_refused(starter, through, upstreams) -> None:
    _, session_id, owner = await _run(starter, "agents", "echo-agent")
    upstream = _by_name(upstreams, owner)
    before = await _session_count(upstream)
    async with httpx.AsyncClient(base_url=through.url, timeout=30) as client:
        refused = [
            await client.post(f"/teams/echo-team/sessions/{session_id}/fork", headers=_auth(key)) for key in (TEAM_KEY, ALL_KEY)
        ]
        compact = await client.post(f"/agents/echo-agent/sessions/{session_id}/compact", headers=_auth(AGENT_KEY))
    for answer in refused:
        assert answer.status_code == 404 and answer.json() == SESSION_NOT_FOUND, answer.text
    assert await _session_count(upstream) == before  # no copy was made
    assert compact.status_code == 200, compact.text  # the agent's own session
    async with httpx.AsyncClient(base_url=through.url, timeout=30, headers=_auth(AGENT_KEY)) as client:
        forked = await client.post(f"/agents/echo-agent/sessions/{session_id}/fork")
    assert forked.status_code == 200 and forked.json()["forked_from_session_id"] == session_id, forked.text


async def test_a_compact_of_another_entitys_session_is_refused(starter, through, upstreams) -> None:
    _, session_id, owner = await _run(starter, "teams", "echo-team")
    path = f"/agents/echo-agent/sessions/{session_id}/compact"
    async with httpx.AsyncClient(timeout=30) as client:
        refused = [await client.post(through.url + path, headers=_auth(key)) for key in (AGENT_KEY, ALL_KEY)]
        direct = await client.post(_by_name(upstreams, owner).url + path)  # AgentOS takes it
    assert direct.status_code == 200
    for answer in refused:
        assert answer.status_code == 404 and answer.json() == SESSION_NOT_FOUND, answer.text


async def test_a_fork_of_a_session_no_upstream_has(replica, upstreams) -> None:
    """Unknown to every upstream: a limited key gets AgentOS's 404; a key for everything is
    answered by the upstream itself, as before."""
    path = f"/teams/echo-team/sessions/no-such-{uuid.uuid4()}/fork"
    async with httpx.AsyncClient(timeout=30) as client:
        limited = await client.post(replica.url + path, headers=_auth(TEAM_KEY))
        everything = await client.post(replica.url + path, headers=_auth(ALL_KEY))
        direct = await client.post(upstreams[0].url + path)
    assert limited.status_code == 404 and limited.json() == SESSION_NOT_FOUND
    assert (everything.status_code, everything.json()) == (direct.status_code, direct.json())


# -- malformed ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, suffix",
    [("POST", "cancel"), ("POST", "continue"), ("POST", "resume"), ("GET", "checkpoints"), ("GET", "")],
)
async def test_an_over_long_run_or_session_id_is_refused(starter, method: str, suffix: str) -> None:
    long_id = "r" * 300
    path = f"/agents/echo-agent/runs/{long_id}" + (f"/{suffix}" if suffix else "")
    async with httpx.AsyncClient(base_url=starter.url, timeout=30, headers=_auth(AGENT_KEY)) as client:
        answer = await client.request(method, path, params={"session_id": "s"}, data={"session_id": "s"} if method == "POST" else None)
        session = await client.request(
            method, path.replace(long_id, "r"), params={"session_id": "s" * 300}, data={"session_id": "s" * 300} if method == "POST" else None
        )
    assert answer.status_code == 400 and "run_id" in answer.json()["detail"], answer.text
    assert session.status_code == 400 and "session_id" in session.json()["detail"], session.text


# -- what the upstream sees ----------------------------------------------------------------------


class TwoEntityUpstream(FaultyUpstream):
    CONFIG = json.dumps(
        {"os_id": "recording", "agents": [{"id": "echo-agent"}], "teams": [{"id": "echo-team"}], "workflows": []}
    ).encode()


@pytest.fixture
async def recorded(log_dir: Path):
    """Two gateways (keys as above) in front of one upstream that records every path it gets."""
    upstream = TwoEntityUpstream()
    await upstream.start()
    config = {
        "upstreams": [{"name": "recording", "url": upstream.url}], "health": FAST_HEALTH, "admin_key": ADMIN_KEY,
        "auth": {"keys": KEYS},
    }  # fmt: skip
    spawned = [spawn_gateway("cross-recorded-a", config, log_dir), spawn_gateway("cross-recorded-b", config, log_dir)]
    first, second = await asyncio.to_thread(start_servers, spawned)
    yield first, second, upstream
    stop_servers([first, second])
    await upstream.close()


async def test_refused_requests_never_reach_the_upstream(recorded) -> None:
    first, second, upstream = recorded
    run_id, session_id = "run-1", "session-1"
    upstream.documents = {
        f"/sessions/{session_id}/runs/{run_id}": json.dumps({"run_id": run_id, "agent_id": "echo-agent"}).encode(),
        f"/sessions/{session_id}": json.dumps({"session_id": session_id, "agent_id": "echo-agent"}).encode(),
    }
    async with httpx.AsyncClient(base_url=first.url, timeout=30, headers=_auth(ALL_KEY)) as client:
        started = await client.post(
            "/agents/echo-agent/runs", data={"message": "fine", "stream": "false", "session_id": session_id, "run_id": run_id}
        )
    assert started.status_code == 200
    assert upstream.paths == ["/agents/echo-agent/runs"]
    form = {"session_id": session_id, "stream": "false", "input": "x"}
    for gateway, reads in ((first, 0), (second, 1)):  # the second reads the run back once per request
        del upstream.paths[:]
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=_auth(TEAM_KEY)) as client:
            answers = [
                await client.post(f"/teams/echo-team/runs/{run_id}/cancel", params={"session_id": session_id}),
                await client.post(f"/teams/echo-team/runs/{run_id}/continue", data=form),
                await client.post(f"/teams/echo-team/runs/{run_id}/resume", data=form),
            ]
            fork = await client.post(f"/teams/echo-team/sessions/{session_id}/fork")
        assert [(answer.status_code, answer.json()) for answer in answers] == [(404, RUN_NOT_FOUND)] * 3
        assert (fork.status_code, fork.json()) == (404, SESSION_NOT_FOUND)
        run_reads = [f"/sessions/{session_id}/runs/{run_id}"] * (3 * reads)
        assert upstream.paths == run_reads + [f"/sessions/{session_id}"], upstream.paths  # reads only


async def test_an_odd_run_id_is_read_back_as_one_encoded_segment(recorded) -> None:
    _, second, upstream = recorded
    for run_id, sent_as in (("a%20b", "a%20b"), ("x%3Fdebug=1%23y", "x%3Fdebug%3D1%23y"), ("%C3%BC", "%C3%BC")):
        del upstream.paths[:]
        async with httpx.AsyncClient(base_url=second.url, timeout=30, headers=_auth(TEAM_KEY)) as client:
            answer = await client.post(
                f"/teams/echo-team/runs/{run_id}/continue", data={"session_id": "s/../x", "stream": "false"}
            )
        assert answer.status_code == 404 and answer.json() == RUN_NOT_FOUND
        assert upstream.paths == [f"/sessions/s%2F..%2Fx/runs/{sent_as}"]


# -- limits --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_run(log_dir: Path, upstreams: List[Server]) -> Iterator[Server]:
    server = start_gateway("cross-one-run", gateway_config(upstreams, limits={"max_concurrent_runs": 1}), log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def one_stream(log_dir: Path, upstreams: List[Server]) -> Iterator[Server]:
    server = start_gateway("cross-one-stream", gateway_config(upstreams, limits={"max_streams": 1}), log_dir)
    yield server
    server.stop()


async def _holding_a_stream(client: httpx.AsyncClient, session_id: str):  # type: ignore[no-untyped-def]
    """A slow streamed run, read up to its first bytes: it holds a run slot and a stream slot."""
    body = {"input": "slow: " + " ".join(["word"] * 40), "stream": True, "session_id": session_id}
    return client.stream("POST", "/v1/agents/echo-agent/run", json=body)


def _busy(answer: httpx.Response) -> bool:
    return answer.status_code == 503 and bool(answer.headers.get("retry-after")) and "Busy" in answer.json()["detail"]


async def test_every_route_that_runs_waits_for_a_run_slot(one_run) -> None:
    """With one run at a time held by a stream, a continue (either way), a resume, a run by form
    or JSON, an eval run and a schedule's trigger are each answered 503 with Retry-After."""
    session_id = f"xe-limits-{uuid.uuid4()}"
    async with httpx.AsyncClient(base_url=one_run.url, timeout=60) as client:
        first = await client.post("/v1/agents/echo-agent/run", json={"input": "first", "session_id": session_id})
        run_id = first.json()["run_id"]
        async with await _holding_a_stream(client, session_id) as held:
            chunks = held.aiter_bytes()  # kept: an iterator let go would close the stream
            async with asyncio.timeout(30):
                await chunks.__anext__()
            refused = {
                "continue": await client.post(
                    f"/agents/echo-agent/runs/{run_id}/continue", data={"session_id": session_id, "stream": "false"}
                ),
                "continue stream": await client.post(f"/agents/echo-agent/runs/{run_id}/continue", data={"session_id": session_id}),
                "resume": await client.post(f"/agents/echo-agent/runs/{run_id}/resume", data={"session_id": session_id}),
                "v1": await client.post("/v1/agents/echo-agent/run", json={"input": "x"}),
                "form": await client.post("/agents/echo-agent/runs", data={"message": "x", "stream": "false"}),
                "eval": await client.post("/eval-runs", json={"agent_id": "echo-agent", "eval_type": "accuracy", "input": "x"}),
                "trigger": await client.post("/schedules/some-schedule/trigger"),
            }
        assert [name for name, answer in refused.items() if not _busy(answer)] == [], {
            name: (answer.status_code, answer.text) for name, answer in refused.items()
        }


async def test_a_continue_with_a_stream_and_a_resume_wait_for_a_stream_slot(one_stream) -> None:
    """With one stream at a time, held: a streamed continue and a resume get 503; a continue
    without a stream takes no stream slot and is served."""
    session_id = f"xe-streams-{uuid.uuid4()}"
    async with httpx.AsyncClient(base_url=one_stream.url, timeout=60) as client:
        first = await client.post("/v1/agents/echo-agent/run", json={"input": "first", "session_id": session_id})
        run_id = first.json()["run_id"]
        async with await _holding_a_stream(client, session_id) as held:
            chunks = held.aiter_bytes()
            async with asyncio.timeout(30):
                await chunks.__anext__()
            streamed = await client.post(f"/agents/echo-agent/runs/{run_id}/continue", data={"session_id": session_id})
            resumed = await client.post(f"/agents/echo-agent/runs/{run_id}/resume", data={"session_id": session_id})
            plain = await client.post(
                f"/agents/echo-agent/runs/{run_id}/continue", data={"session_id": session_id, "stream": "false", "input": "x"}
            )
        assert _busy(streamed) and "streams" in streamed.json()["detail"], streamed.text
        assert _busy(resumed) and "streams" in resumed.json()["detail"], resumed.text
        assert plain.status_code == 200, plain.text

        async def once_the_stream_slot_is_free() -> Optional[httpx.Response]:
            answer = await client.post(f"/agents/echo-agent/runs/{run_id}/continue", data={"session_id": session_id})
            return answer if answer.status_code != 503 else None

        followed = await eventually_async(once_the_stream_slot_is_free, timeout=30, what="the stream slot freed")
    assert followed.status_code == 200 and "RunCompleted" in followed.text, followed.text

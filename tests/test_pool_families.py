"""AgentOS's families beyond runs and sessions (memories, evals, traces, info, registry,
components, approvals, schedules, learnings, knowledge, checkpoints, background runs and their
resume) through a pool gateway in front of two upstreams sharing one SQLite file, each answer
compared with the same request sent straight to an upstream (the oracle); and the limits on what
runs."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from tests.helpers import eventually_async
from tests.pools import gateway_config, start_gateway, start_upstreams
from tests.processes import Server, stop_servers

NAMES = ("fam-a", "fam-b")
KEY = "family-test-key-0123456789"
LIMITED_KEY = "family-limited-key-0123456789"


@pytest.fixture(scope="module")
def shared_upstreams(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[List[Server]]:
    shared_db = tmp_path_factory.mktemp("families") / "shared.db"
    servers = start_upstreams(NAMES, log_dir, shared_db=shared_db)
    yield servers
    stop_servers(servers)


@pytest.fixture(scope="module")
def families_gateway(log_dir: Path, shared_upstreams: List[Server]) -> Iterator[Server]:
    server = start_gateway("families-gateway", gateway_config(shared_upstreams), log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replica_gateway(log_dir: Path, shared_upstreams: List[Server]) -> Iterator[Server]:
    """A second gateway with the same configuration: it has no record of the first one's runs."""
    server = start_gateway("families-replica-gateway", gateway_config(shared_upstreams), log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def limited_gateway(log_dir: Path, shared_upstreams: List[Server]) -> Iterator[Server]:
    """One run at a time; a key for everything and a key for echo-agent only."""
    keys = [{"name": "all", "key": KEY}, {"name": "echo-only", "key": LIMITED_KEY, "entities": ["echo-agent"]}]
    config = gateway_config(shared_upstreams, limits={"max_concurrent_runs": 1}, auth={"keys": keys})
    server = start_gateway("limited-families-gateway", config, log_dir)
    yield server
    server.stop()


def _by_name(upstreams: List[Server], name: str) -> Server:
    return next(server for server in upstreams if server.name == name)


def _comparable(value: Any) -> Any:
    """An answer without what differs from one request to the next (a search's duration)."""
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items() if key != "search_time_ms"}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    return value


async def _both(gateway: Server, oracle: Server, method: str, path: str, **kwargs: Any) -> Tuple[httpx.Response, httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        through = await client.request(method, gateway.url + path, **kwargs)
        direct = await client.request(method, oracle.url + path, **kwargs)
    return through, direct


@pytest.mark.parametrize(
    "path",
    ["/eval-runs", "/traces", "/info", "/registry", "/components", "/approvals", "/schedules", "/learnings",
     "/knowledge/config", "/memory_topics", "/user_memory_stats", "/approvals/count", "/metrics/refresh/status"],
)  # fmt: skip
async def test_a_family_answers_as_the_upstream_does(families_gateway, shared_upstreams, path: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        through = await client.get(families_gateway.url + path)
        oracle = _by_name(shared_upstreams, through.headers["x-agentos-gateway-upstream"])
        direct = await client.get(oracle.url + path)
    assert through.status_code == direct.status_code and through.status_code != 404, through.text
    assert _comparable(through.json()) == _comparable(direct.json())


async def test_memories_created_through_the_gateway_are_seen_by_every_upstream(families_gateway, shared_upstreams) -> None:
    user_id = f"user-{uuid.uuid4()}"
    async with httpx.AsyncClient(base_url=families_gateway.url, timeout=30) as client:
        created = await client.post("/memories", json={"memory": "likes green tea", "user_id": user_id, "topics": ["drinks"]})
        assert created.status_code in (200, 201), created.text
        memory_id = created.json()["memory_id"]
        listing = await client.get("/memories", params={"user_id": user_id})
        item = await client.get(f"/memories/{memory_id}", params={"user_id": user_id})
        missing = await client.get(f"/memories/no-such-{uuid.uuid4()}")
    assert [memory["memory_id"] for memory in listing.json()["data"]] == [memory_id]
    assert item.status_code == 200 and item.json()["memory"] == "likes green tea"
    for oracle in shared_upstreams:  # one database: each upstream answers alike
        async with httpx.AsyncClient(base_url=oracle.url, timeout=30) as direct:
            assert _comparable((await direct.get("/memories", params={"user_id": user_id})).json()) == _comparable(listing.json())
            assert (await direct.get(f"/memories/{memory_id}", params={"user_id": user_id})).json() == item.json()
    assert missing.status_code == 404 and "not found" in missing.json()["detail"].lower()


async def test_checkpoints_of_a_run_come_from_its_upstream(families_gateway, shared_upstreams) -> None:
    session_id = f"checkpoints-{uuid.uuid4()}"
    async with httpx.AsyncClient(base_url=families_gateway.url, timeout=30) as client:
        run = await client.post("/v1/agents/echo-agent/run", json={"input": "2 + 2", "session_id": session_id})
        assert run.status_code == 200, run.text
    owner = _by_name(shared_upstreams, run.headers["x-agentos-gateway-upstream"])
    path = f"/agents/echo-agent/runs/{run.json()['run_id']}/checkpoints"
    through, direct = await _both(families_gateway, owner, "GET", path, params={"session_id": session_id})
    assert through.status_code == direct.status_code and through.status_code != 404, through.text
    assert through.json() == direct.json()
    assert through.headers["x-agentos-gateway-upstream"] == owner.name


def _events(text: str) -> List[Tuple[str, Any]]:
    import json

    events = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data: Dict[str, Any] = json.loads(line[6:])
            events.append((data.get("event"), data.get("event_index")))
    return events


async def test_resume_of_a_background_run_reaches_its_owner(families_gateway, shared_upstreams) -> None:
    session_id, run_id = f"resume-{uuid.uuid4()}", str(uuid.uuid4())
    form = {"message": "slow: one two three", "stream": "true", "background": "true", "session_id": session_id, "run_id": run_id}
    async with httpx.AsyncClient(base_url=families_gateway.url, timeout=60) as client:
        started = await client.post("/agents/echo-agent/runs", data=form)
        assert started.status_code == 200 and "RunCompleted" in started.text, started.text[:300]
    owner = _by_name(shared_upstreams, started.headers["x-agentos-gateway-upstream"])
    resumed, direct = await _both(
        families_gateway, owner, "POST", f"/agents/echo-agent/runs/{run_id}/resume",
        data={"last_event_index": "1", "session_id": session_id},
    )  # fmt: skip
    assert resumed.status_code == 200 and resumed.headers["x-agentos-gateway-upstream"] == owner.name
    assert _events(resumed.text) == _events(direct.text)
    assert _events(resumed.text)[-1][0] == "RunCompleted" and len(_events(resumed.text)) > 2


async def _stored_status(upstream: Server, run_id: str, session_id: str) -> Optional[str]:
    """The run's status as its upstream's own API reads it back (None until it is stored)."""
    async with httpx.AsyncClient(base_url=upstream.url, timeout=10) as client:
        answer = await client.get(f"/agents/echo-agent/runs/{run_id}", params={"session_id": session_id})
    return answer.json().get("status") if answer.status_code == 200 else None


async def _ended(upstream: Server, run_id: str, session_id: str) -> str:
    async def ended() -> Optional[str]:
        status = await _stored_status(upstream, run_id, session_id)
        return status if status not in (None, "PENDING", "RUNNING") else None

    return await eventually_async(ended, timeout=30, what=f"run {run_id} ended on {upstream.name}")


async def test_a_v1_background_run_answers_202_and_completes(families_gateway) -> None:
    session_id = f"background-{uuid.uuid4()}"
    async with httpx.AsyncClient(base_url=families_gateway.url, timeout=30) as client:
        started = await client.post(
            "/v1/agents/echo-agent/run", json={"input": "slow: a b c", "background": True, "session_id": session_id}
        )
        assert started.status_code == 202, started.text
        assert started.json()["status"] == "PENDING" and started.json()["session_id"] == session_id
        run_id = started.json()["run_id"]

        async def completed() -> Optional[Dict[str, Any]]:
            answer = await client.get(f"/agents/echo-agent/runs/{run_id}", params={"session_id": session_id})
            return answer.json() if answer.status_code == 200 and answer.json().get("status") == "COMPLETED" else None

        run = await eventually_async(completed, timeout=30, what="the background run completed")
    assert "a b c" in run["content"]


async def test_a_local_background_run_is_refused_with_a_reason(gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        refused = await client.post("/v1/agents/echo-agent/run", json={"input": "hi", "background": True})
        native = await client.post("/agents/echo-agent/runs", data={"message": "hi", "background": "true"})
    for answer in (refused, native):
        assert answer.status_code == 422, answer.text
        assert "background" in answer.text and "outlives the request" in answer.text


async def _leave_after_first_events(gateway: Server, body: Dict[str, Any]) -> Tuple[str, int]:
    """Start a streamed run, read until two events with an index (or any two), then leave:
    (the upstream that runs it, the last event index read, -1 if none)."""
    import json

    seen: List[int] = []
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        async with client.stream("POST", "/v1/agents/echo-agent/run", json=body) as stream:
            assert stream.status_code == 200
            upstream = stream.headers["x-agentos-gateway-upstream"]
            async with asyncio.timeout(30):
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]).get("event_index", -1))
                        if len(seen) == 2:
                            break  # and leave: the connection closes with the block
    return upstream, seen[-1]


@pytest.mark.parametrize("background", [True, False])
async def test_a_client_leaving_cancels_only_a_run_that_is_not_in_the_background(
    families_gateway, shared_upstreams, background: bool
) -> None:
    session_id, run_id = f"leave-{uuid.uuid4()}", str(uuid.uuid4())
    body = {"input": "slow: a b c d e f", "stream": True, "background": background, "session_id": session_id, "run_id": run_id}
    name, last_index = await _leave_after_first_events(families_gateway, body)
    owner = _by_name(shared_upstreams, name)
    assert await _ended(owner, run_id, session_id) == ("COMPLETED" if background else "CANCELLED")
    if background:
        assert last_index >= 0  # a background stream's events carry their index


async def test_a_background_stream_is_resumed_through_another_gateway(
    families_gateway, replica_gateway, shared_upstreams
) -> None:
    session_id, run_id = f"replica-{uuid.uuid4()}", str(uuid.uuid4())
    body = {"input": "slow: a b c d e f", "stream": True, "background": True, "session_id": session_id, "run_id": run_id}
    name, last_index = await _leave_after_first_events(families_gateway, body)
    owner = _by_name(shared_upstreams, name)
    assert await _ended(owner, run_id, session_id) == "COMPLETED"  # no cancel reached it
    resumed, direct = await _both(
        replica_gateway, owner, "POST", f"/agents/echo-agent/runs/{run_id}/resume",
        data={"last_event_index": str(last_index), "session_id": session_id},
    )  # fmt: skip
    assert resumed.status_code == 200 and resumed.headers["x-agentos-gateway-upstream"] == owner.name, resumed.text
    events = _events(resumed.text)
    assert events == _events(direct.text)
    indexed = [index for _, index in events if index is not None]
    assert indexed == list(range(last_index + 1, last_index + 1 + len(indexed))) and indexed  # the missed ones, all
    assert events[-1][0] == "RunCompleted"


async def test_agentos_client_reads_the_families_as_from_an_upstream(families_gateway, shared_upstreams) -> None:
    from agno.client import AgentOSClient

    def plain(value: Any) -> Any:
        return _comparable(value.model_dump() if hasattr(value, "model_dump") else value)

    through, direct = AgentOSClient(base_url=families_gateway.url), AgentOSClient(base_url=shared_upstreams[0].url)
    user_id = f"client-{uuid.uuid4()}"
    memory = await through.create_memory("prefers window seats", user_id, topics=["travel"])
    assert plain(await through.get_memory(memory.memory_id, user_id=user_id)) == plain(await direct.get_memory(memory.memory_id, user_id=user_id))
    assert plain(await through.list_memories(user_id=user_id)) == plain(await direct.list_memories(user_id=user_id))
    # AgentOS keeps topics in a set: each process lists them in its own order (hash seed)
    assert sorted(await through.get_memory_topics()) == sorted(await direct.get_memory_topics())
    assert plain(await through.get_user_memory_stats()) == plain(await direct.get_user_memory_stats())
    assert plain(await through.list_eval_runs()) == plain(await direct.list_eval_runs())
    assert plain(await through.get_traces()) == plain(await direct.get_traces())
    assert plain(await through.get_metrics_refresh_status()) == plain(await direct.get_metrics_refresh_status())
    await through.delete_memory(memory.memory_id, user_id=user_id)
    assert plain(await direct.list_memories(user_id=user_id))["data"] == []


async def test_a_gateway_without_upstreams_serves_its_local_components_data(gateway) -> None:
    """The embedded default answers the data families from its local components' AgentOS (the
    pool member ``local``); what is no AgentOS route is still the gateway's 404, 405."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        for path in ("/memories", "/info"):
            answer = await client.get(path)
            assert answer.status_code == 200 and answer.headers["x-agentos-gateway-upstream"] == "local", answer.text
        assert (await client.get("/traces/t-1")).status_code == 404
        answer = await client.get("/no-such-route")
        assert answer.status_code == 404 and answer.json() == {"detail": "Not Found"}
        wrong_method = await client.put("/memories")
        assert wrong_method.status_code == 405


async def test_a_key_for_some_entities_stays_out_of_the_other_families(limited_gateway) -> None:
    async with httpx.AsyncClient(base_url=limited_gateway.url, timeout=30) as client:
        limited = {"Authorization": f"Bearer {LIMITED_KEY}"}
        for path in ("/memories", "/traces", "/eval-runs/e-1"):
            refused = await client.get(path, headers=limited)
            assert refused.status_code == 403 and "detail" in refused.json(), (path, refused.text)
            assert (await client.get(path, headers={"Authorization": f"Bearer {KEY}"})).status_code != 403
        # /info needs no scope at AgentOS (no mapping names it; its auth skips it): any key reads it
        assert (await client.get("/info", headers=limited)).status_code == 200
        own = await client.get("/agents/echo-agent/runs/r-1/checkpoints", headers=limited, params={"session_id": "s"})
        assert own.status_code != 403
        other = await client.get("/teams/echo-team/runs/r-1/checkpoints", headers=limited, params={"session_id": "s"})
        assert other.status_code == 403


async def test_continue_and_resume_wait_for_a_run_slot(limited_gateway) -> None:
    """With one run at a time and a slow stream holding it, a continue and a resume get 503 with
    Retry-After, as a run does; once the stream is gone the slot is free again."""
    headers = {"Authorization": f"Bearer {KEY}"}
    session_id = f"limits-{uuid.uuid4()}"
    async with httpx.AsyncClient(base_url=limited_gateway.url, timeout=60, headers=headers) as client:
        first = await client.post("/v1/agents/echo-agent/run", json={"input": "first", "session_id": session_id})
        run_id = first.json()["run_id"]
        slow = {"input": "slow: " + " ".join(["word"] * 40), "stream": True, "session_id": session_id}
        async with client.stream("POST", "/v1/agents/echo-agent/run", json=slow) as held:
            chunks = held.aiter_bytes()  # kept: an iterator let go would close the stream
            async with asyncio.timeout(30):
                await chunks.__anext__()  # the run holds the slot now
            refusals = [
                await client.post(f"/agents/echo-agent/runs/{run_id}/continue", data={"session_id": session_id, "stream": "false"}),
                await client.post(f"/agents/echo-agent/runs/{run_id}/continue", data={"session_id": session_id}),
                await client.post(f"/agents/echo-agent/runs/{run_id}/resume", data={"session_id": session_id}),
                await client.post("/v1/agents/echo-agent/run", json={"input": "x"}),
            ]
            for refused in refusals:
                assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
                assert "Busy" in refused.json()["detail"]


        async def once_the_slot_is_free() -> Optional[httpx.Response]:
            answer = await client.post(
                f"/agents/echo-agent/runs/{run_id}/continue", data={"session_id": session_id, "stream": "false"}
            )
            return answer if answer.status_code != 503 else None

        # the gateway frees the slot once it sees the stream's client gone
        followed = await eventually_async(once_the_slot_is_free, timeout=30, what="the run slot freed")
    assert followed.status_code == 200, followed.text

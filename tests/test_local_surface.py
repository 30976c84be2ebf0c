"""Local components get AgentOS's whole data surface: agno's Agent UI against the embedded default
(``serve`` with no config) and against a hybrid gateway (local components plus upstreams).

Each of the UI's calls is made as the UI makes them (``agno-agi/agent-ui``, ``src/api/os.ts``):
preflighted from ``http://localhost:3000``, JSON content type on the reads, the ``db_id`` taken
from ``GET /agents``, the run as a multipart form with ``stream=true`` and an empty
``session_id`` (a new session, whose id the first event carries). A session a run made is
listed, reopened with its history, and really deleted. Memories of a local agent are written and
listed, and a malformed body gets AgentOS's own 422 (a real AgentOS answers the same request).
"""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import httpx
import pytest

from tests.agent_ui import AgentUI
from tests.pools import answered_by, gateway_config, start_gateway
from tests.processes import Server, start_server

TIMEOUT_S = 30.0
WORKERS_FOUND_TIMEOUT_S = 60.0  # until a connection to each worker of a two-worker gateway is open


@pytest.fixture(scope="module")
def embedded(log_dir: Path) -> Iterator[Server]:
    """``agentos-gateway serve`` with no config and no ``GATEWAY_DEMO_DB``: the demo components
    in-process, with no database of their own."""
    server = start_server("local-surface-embedded", ["serve"], log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hybrid(log_dir: Path, pool_upstreams: List[Server]) -> Iterator[Server]:
    """Local components (no database of their own) plus two upstreams with in-memory databases."""
    local = {"agents": ["tests.fixtures.local_components:agent"], "teams": ["tests.fixtures.local_components:team"]}
    server = start_gateway("local-surface-hybrid", gateway_config(pool_upstreams, local=local), log_dir)
    yield server
    server.stop()


# (gateway fixture, the local agent the UI talks to, the teams /teams must list)
GATEWAYS = [("embedded", "echo-agent", {"echo-team"}), ("hybrid", "local-agent", {"local-team", "echo-team"})]


@pytest.fixture(params=GATEWAYS, ids=[name for name, _, _ in GATEWAYS])
def target(request: pytest.FixtureRequest) -> Tuple[Server, str, set]:
    name, agent_id, teams = request.param
    return request.getfixturevalue(name), agent_id, teams


@pytest.fixture
def ui(target: Tuple[Server, str, set]) -> Iterator[AgentUI]:
    client = AgentUI(target[0])
    yield client
    client.close()


def test_agent_ui_lists_reopens_and_deletes_a_local_session(target, ui: AgentUI) -> None:
    _, agent_id, teams = target
    assert ui.call("GET", "/health").status_code == 200
    agents = ui.call("GET", "/agents").json()
    agent = next(entry for entry in agents if entry["id"] == agent_id)
    db_id = agent["db_id"]
    assert db_id, "a local agent without a database of its own gets the gateway's"
    assert teams <= {team["id"] for team in ui.call("GET", "/teams").json()}

    first = ui.run(agent_id, "what is 6 * 7")
    assert first[0][0] == "RunStarted" and first[-1][0] == "RunCompleted"
    session_id = first[0][1]["session_id"]
    second = ui.run(agent_id, "hello", session_id)
    assert answered_by(second[-1][1]["content"])[1] == 2  # the same session, through AgentOSRunner

    sessions_path = f"/sessions?type=agent&component_id={agent_id}&db_id={db_id}"
    listed = ui.call("GET", sessions_path)
    assert listed.status_code == 200, listed.text
    assert session_id in [entry["session_id"] for entry in listed.json()["data"]]
    assert all(entry.get("agent_id") == agent_id for entry in listed.json()["data"])

    runs = ui.call("GET", f"/sessions/{session_id}/runs?type=agent&db_id={db_id}")
    assert runs.status_code == 200, runs.text
    assert [run["content"] for run in runs.json()] == [first[-1][1]["content"], second[-1][1]["content"]]
    assert [run["run_input"] for run in runs.json()] == ["what is 6 * 7", "hello"]

    deleted = ui.call("DELETE", f"/sessions/{session_id}?db_id={db_id}")
    assert deleted.status_code == 204, deleted.text
    assert session_id not in [entry["session_id"] for entry in ui.call("GET", sessions_path).json()["data"]]
    assert ui.call("GET", f"/sessions/{session_id}/runs?type=agent&db_id={db_id}").status_code == 404


def test_memories_of_a_local_agent_are_written_and_listed(target, ui: AgentUI) -> None:
    _, agent_id, _ = target
    db_id = next(entry for entry in ui.call("GET", "/agents").json() if entry["id"] == agent_id)["db_id"]
    user_id = f"memory-user-{uuid.uuid4()}"
    created = ui.call(
        "POST", f"/memories?db_id={db_id}", json={"memory": "likes tea", "user_id": user_id, "topics": ["drinks"]}
    )
    assert created.status_code == 200, created.text
    memory_id = created.json()["memory_id"]
    listed = ui.call("GET", f"/memories?user_id={user_id}&db_id={db_id}").json()
    assert [(m["memory_id"], m["memory"], m["topics"]) for m in listed["data"]] == [(memory_id, "likes tea", ["drinks"])]
    assert listed["meta"]["total_count"] == 1


@pytest.mark.parametrize("body", [{"user_id": "u"}, {"memory": ""}, {"memory": ["not", "text"]}])
def test_a_malformed_memory_gets_agentos_own_422(target, pool_upstreams: List[Server], body: Dict[str, Any]) -> None:
    server, agent_id, _ = target
    db_id = next(entry for entry in httpx.get(f"{server.url}/agents", timeout=TIMEOUT_S).json() if entry["id"] == agent_id)["db_id"]
    through_gateway = httpx.post(f"{server.url}/memories?db_id={db_id}", json=body, timeout=TIMEOUT_S)
    agentos = httpx.post(f"{pool_upstreams[0].url}/memories", json=body, timeout=TIMEOUT_S)
    assert agentos.status_code == 422
    assert (through_gateway.status_code, through_gateway.json()) == (422, agentos.json())


def test_the_config_lists_each_local_entity_once_with_its_database(target) -> None:
    server, agent_id, _ = target
    config = httpx.get(f"{server.url}/config", timeout=TIMEOUT_S).json()
    agent_ids = [entry["id"] for entry in config["agents"]]
    assert len(agent_ids) == len(set(agent_ids)) and agent_id in agent_ids
    db_id = next(entry for entry in config["agents"] if entry["id"] == agent_id)["db_id"]
    assert db_id in config["databases"]
    assert db_id in [db["db_id"] for db in config["session"]["dbs"]]
    assert httpx.get(f"{server.url}/ready", timeout=TIMEOUT_S).status_code == 200


def test_a_local_sessions_fork_and_run_read_back_reach_its_agentos(target, ui: AgentUI) -> None:
    """Data routes that name a local entity go to the local components' AgentOS too."""
    server, agent_id, _ = target
    session_id = ui.run(agent_id, "what is 2 + 3")[0][1]["session_id"]
    run_id = ui.run(agent_id, "again", session_id)[0][1]["run_id"]
    read = httpx.get(f"{server.url}/agents/{agent_id}/runs/{run_id}?session_id={session_id}", timeout=TIMEOUT_S)
    assert read.status_code == 200, read.text
    assert read.json()["run_id"] == run_id and read.headers["x-agentos-gateway-upstream"] == "local"
    fork = httpx.post(f"{server.url}/agents/{agent_id}/sessions/{session_id}/fork", json={}, timeout=TIMEOUT_S)
    assert fork.status_code in (200, 201), fork.text
    forked = fork.json()["session_id"]
    assert forked != session_id
    listed = httpx.get(f"{server.url}/sessions/{forked}/runs?type=agent", timeout=TIMEOUT_S)
    assert listed.status_code == 200 and len(listed.json()) == 2


def test_the_embedded_database_and_socket_live_in_a_private_directory_removed_at_exit(log_dir: Path) -> None:
    server = start_server("local-surface-private", ["serve"], log_dir)
    try:
        # Logged at startup, before the first request is answered.
        line = next(line for line in server.log().splitlines() if "local components without" in line)
        db_file = Path(json.loads(line)["message"].rsplit("sqlite:///", 1)[1])
        directory = db_file.parent
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert {"agentos.sock", "local.db"} <= {path.name for path in directory.iterdir()}  # and SQLite's WAL files
        assert stat.S_ISSOCK(os.stat(directory / "agentos.sock").st_mode)
    finally:
        server.stop()
    assert not directory.exists()


def test_workers_share_the_local_database(log_dir: Path) -> None:
    """With ``--workers 2`` a session a run made on one worker is listed, reopened and deleted
    through the other. A kept-alive connection stays with the worker that accepted it, and
    ``/health``'s ``instantiated_at`` tells the workers apart."""
    server = start_server("local-surface-workers", ["serve", "--workers", "2"], log_dir)
    clients: List[httpx.Client] = []
    try:
        # Both workers accept on the one socket; a worker still starting accepts nothing, so new
        # connections are opened until each worker has answered one (a bounded wait, no sleep).
        by_worker: Dict[str, httpx.Client] = {}
        deadline = time.monotonic() + WORKERS_FOUND_TIMEOUT_S
        while len(by_worker) < 2:
            assert time.monotonic() < deadline, f"{len(clients)} connections all went to one worker"
            client = httpx.Client(base_url=server.url, timeout=TIMEOUT_S)
            clients.append(client)
            by_worker.setdefault(client.get("/health").json()["instantiated_at"], client)
        one, other = by_worker.values()
        session_id = one.post("/v1/agents/echo-agent/run", json={"input": "hi"}).json()["session_id"]
        listed = other.get("/sessions?type=agent").json()["data"]
        assert session_id in [entry["session_id"] for entry in listed]
        assert [run["run_input"] for run in other.get(f"/sessions/{session_id}/runs").json()] == ["hi"]
        assert other.delete(f"/sessions/{session_id}").status_code == 204
        assert one.get(f"/sessions/{session_id}/runs").status_code == 404
    finally:
        for client in clients:
            client.close()
        server.stop()


@pytest.mark.parametrize(
    "values, field",
    [
        ({"upstreams": [{"name": "local", "url": "http://127.0.0.1:9"}]}, "upstreams"),
        ({"local_db": "mysql://somewhere/db"}, "local_db"),
        ({"local_db": "sqlite:///"}, "local_db"),
    ],
)
def test_a_reserved_upstream_name_or_a_bad_local_db_is_a_config_error(tmp_path: Path, values, field: str) -> None:
    import yaml

    from gateway.settings import ConfigError, load_settings

    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match=f"{path}: {field}"):
        load_settings(path)


def test_a_forwarded_authorization_does_not_replace_the_local_agentos_key(log_dir: Path) -> None:
    """With ``forward_authorization`` a client's bearer goes to the upstreams (agno JWT auth); the
    local components' AgentOS knows only its own key, and gets it."""
    config = {"local": {"agents": ["tests.fixtures.local_components:agent"]}, "forward_authorization": True}
    server = start_gateway("local-surface-forward-auth", config, log_dir)
    try:
        headers = {"Authorization": "Bearer a-client-jwt"}
        httpx.post(f"{server.url}/v1/agents/local-agent/run", json={"input": "hi", "user_id": "fa"}, timeout=TIMEOUT_S)
        listed = httpx.get(f"{server.url}/sessions?type=agent&user_id=fa", headers=headers, timeout=TIMEOUT_S)
        assert listed.status_code == 200, listed.text
        assert len(listed.json()["data"]) == 1
    finally:
        server.stop()


async def test_a_reload_adds_and_removes_the_local_agentos(log_dir: Path, pool_upstreams: List[Server]) -> None:
    """Local components added by a reload (SIGHUP) get their data routes; removed, they are gone."""
    import signal

    import yaml

    from tests.helpers import eventually_async

    base = gateway_config(pool_upstreams)
    path = log_dir / "local-surface-reload.yaml"
    path.write_text(yaml.safe_dump(base))
    server = start_server("local-surface-reload", ["serve", "--config", str(path)], log_dir)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT_S) as client:

            async def local_agent() -> Any:
                return next((a for a in (await client.get("/agents")).json() if a["id"] == "local-agent"), None)

            path.write_text(yaml.safe_dump({**base, "local": {"agents": ["tests.fixtures.local_components:agent"]}}))
            server.process.send_signal(signal.SIGHUP)
            db_id = (await eventually_async(local_agent, what="local-agent served after the reload"))["db_id"]
            run = await client.post("/v1/agents/local-agent/run", json={"input": "hi"})
            sessions = await client.get(f"/sessions?type=agent&component_id=local-agent&db_id={db_id}")
            assert [entry["session_id"] for entry in sessions.json()["data"]] == [run.json()["session_id"]]

            path.write_text(yaml.safe_dump(base))
            server.process.send_signal(signal.SIGHUP)

            async def gone() -> bool:
                return await local_agent() is None

            await eventually_async(gone, what="local-agent gone after the reload")
            answer = await client.get(f"/sessions?type=agent&db_id={db_id}")
            assert answer.status_code == 404 and "No database found" in answer.json()["detail"]
    finally:
        server.stop()

"""Upstreams with databases of their own, through one gateway: lists merged over the database
groups (compared with one AgentOS holding the union of the same rows: the oracle), items found in
either group, deletes that reach every group, writes that go where their ``db_id`` says, and bad
pagination answered as AgentOS answers it."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import httpx
import pytest

from tests.agent_ui import AgentUI
from tests.pools import gateway_config, start_gateway, start_upstreams
from tests.processes import Server, stop_servers

NAMES = ("st-a", "st-b")
ORACLE = "st-oracle"
SESSIONS = 14  # merge-00 .. merge-13, spread over both upstreams by their ids
MEMORIES_PER_GROUP = 6
AGENT_SESSIONS = {"type": "agent", "component_id": "echo-agent"}  # the merge's (the deletes use the team's)


def _config(server: Server) -> Dict[str, Any]:
    return httpx.get(server.url + "/config", timeout=30).json()


def _spread_timestamps(db_files: List[Path]) -> None:
    """Distinct created_at and updated_at for the merge's rows, in two different orders: rows
    created in the same second tie, and AgentOS leaves ties in its store's order."""
    order = [(path, row) for path in db_files for row in _rows(path)]
    order.sort(key=lambda item: item[1][1])
    count = len(order)
    for index, (path, (table, key, column)) in enumerate(order):
        with sqlite3.connect(path) as db:
            db.execute(
                f"UPDATE {table} SET created_at = ?, updated_at = ? WHERE {column} = ?",
                (1_700_000_000 + index * 10, 1_700_000_000 + ((index * 7) % count) * 10 + 5, key),
            )


def _rows(path: Path) -> List[Tuple[str, str, str]]:
    with sqlite3.connect(path) as db:
        sessions = [("agno_sessions", key, "session_id") for (key,) in db.execute("SELECT session_id FROM agno_sessions")]
        memories = [("agno_memories", key, "memory_id") for (key,) in db.execute("SELECT memory_id FROM agno_memories")]
    return sessions + memories


def _union_file(db_files: List[Path], target: Path) -> None:
    """One SQLite file holding every row of ``db_files`` (each file's tables are the same)."""
    with sqlite3.connect(db_files[0]) as source, sqlite3.connect(target) as union:
        source.backup(union)
    with sqlite3.connect(target) as union:
        for index, path in enumerate(db_files[1:]):
            union.execute(f"ATTACH DATABASE ? AS other{index}", (str(path),))
            tables = [name for (name,) in union.execute(f"SELECT name FROM other{index}.sqlite_master WHERE type='table'")]
            for table in tables:
                union.execute(f"INSERT OR IGNORE INTO main.{table} SELECT * FROM other{index}.{table}")
        union.commit()


@pytest.fixture(scope="module")
def storage(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """Two upstreams with their own SQLite files, a gateway in front, sessions and memories
    written through it, and the oracle: an upstream on a file holding both files' rows."""
    db_dir = tmp_path_factory.mktemp("own-dbs")
    upstreams = start_upstreams(NAMES, log_dir, db_dir=db_dir)
    gateway = oracle = None
    try:
        gateway = start_gateway("storage-gateway", gateway_config(upstreams), log_dir)
        db_ids = {server.name: _config(server)["databases"][0] for server in upstreams}
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            for index in range(SESSIONS):
                run = client.post(
                    "/v1/agents/echo-agent/run",
                    json={"input": f"merge-{index:02d}", "session_id": f"merge-{index:02d}", "user_id": f"user-{index % 3}"},
                )
                assert run.status_code == 200, run.text
            for name, db_id in db_ids.items():
                for index in range(MEMORIES_PER_GROUP):
                    created = client.post(
                        "/memories", params={"db_id": db_id},
                        json={"memory": f"{name} fact {index}", "user_id": f"user-{index % 4}", "topics": ["merge", name]},
                    )  # fmt: skip
                    assert created.status_code in (200, 201), created.text
        db_files = [db_dir / f"{name}.db" for name in NAMES]
        for server, path in zip(upstreams, db_files):  # each group holds some of each
            sessions = httpx.get(server.url + "/sessions", params=AGENT_SESSIONS, timeout=30).json()
            assert sessions["meta"]["total_count"] >= 3, (server.name, sessions["meta"])
        _spread_timestamps(db_files)
        _union_file(db_files, db_dir / f"{ORACLE}.db")
        (oracle,) = start_upstreams([ORACLE], log_dir, db_dir=db_dir)
        yield {"gateway": gateway, "oracle": oracle, "upstreams": upstreams, "db_ids": db_ids}
    finally:
        stop_servers([server for server in [*upstreams, gateway, oracle] if server is not None])


async def _both(storage: Dict[str, Any], method: str, path: str, **kwargs: Any) -> Tuple[httpx.Response, httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        through = await client.request(method, storage["gateway"].url + path, **kwargs)
        direct = await client.request(method, storage["oracle"].url + path, **kwargs)
    return through, direct


def _page(answer: httpx.Response, key: str) -> Tuple[List[str], Dict[str, Any]]:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    meta = {name: body["meta"][name] for name in ("page", "limit", "total_count", "total_pages")}
    return [item[key] for item in body["data"]], meta


PAGES = [
    {},
    {"limit": "5"},
    {"page": "2", "limit": "5"},
    {"page": "3", "limit": "5", "sort_order": "asc"},
    {"page": "2", "limit": "4", "sort_by": "updated_at", "sort_order": "desc"},
    {"page": "4", "limit": "3", "sort_by": "updated_at", "sort_order": "asc"},
    {"page": "1", "limit": "50", "sort_by": "created_at", "sort_order": "asc"},
    {"page": "9", "limit": "5"},  # past the end
]


@pytest.mark.parametrize("params", PAGES)
async def test_sessions_merged_page_by_page_as_one_agentos_lists_them(storage, params: Dict[str, str]) -> None:
    query = {**AGENT_SESSIONS, **params}
    through, direct = await _both(storage, "GET", "/sessions", params=query)
    assert _page(through, "session_id") == _page(direct, "session_id")
    assert len(through.headers["x-agentos-gateway-upstream"].split(", ")) == 2  # both groups were read


@pytest.mark.parametrize("params", [params for params in PAGES if params.get("sort_by") != "created_at"])
async def test_memories_merged_page_by_page_as_one_agentos_lists_them(storage, params: Dict[str, str]) -> None:
    through, direct = await _both(storage, "GET", "/memories", params={"topics": "merge", **params})
    assert _page(through, "memory_id") == _page(direct, "memory_id")


async def test_a_sort_key_the_items_do_not_carry_keeps_the_groups_in_turn(storage) -> None:
    """A memory's answer has no created_at: the gateway cannot order by it, so each group's own
    order is kept, one group after the other (documented); the count is still exact."""
    query = {"topics": "merge", "sort_by": "created_at", "sort_order": "asc", "limit": "50"}
    through, direct = await _both(storage, "GET", "/memories", params=query)
    ids, meta = _page(through, "memory_id")
    oracle_ids, oracle_meta = _page(direct, "memory_id")
    assert sorted(ids) == sorted(oracle_ids) and meta == oracle_meta


async def test_lists_without_pages_are_merged_too(storage) -> None:
    through, direct = await _both(storage, "GET", "/memory_topics")
    assert through.status_code == direct.status_code == 200
    assert sorted(through.json()) == sorted(direct.json()) and set(NAMES) <= set(through.json())
    through, direct = await _both(storage, "GET", "/user_memory_stats", params={"limit": "3", "page": "2"})
    assert _page(through, "user_id") == _page(direct, "user_id")


async def test_writes_with_a_db_id_landed_in_that_group(storage) -> None:
    for server in storage["upstreams"]:
        direct = httpx.get(server.url + "/memories", params={"topics": "merge", "limit": "50"}, timeout=30).json()
        assert {memory["memory"].split()[0] for memory in direct["data"]} == {server.name}
        assert direct["meta"]["total_count"] == MEMORIES_PER_GROUP


async def test_an_item_is_found_in_whichever_group_has_it(storage) -> None:
    async with httpx.AsyncClient(base_url=storage["gateway"].url, timeout=30) as client:
        for server in storage["upstreams"]:
            sessions = httpx.get(server.url + "/sessions", params=AGENT_SESSIONS, timeout=30).json()["data"]
            session_id = sessions[0]["session_id"]
            detail = await client.get(f"/sessions/{session_id}")
            runs = await client.get(f"/sessions/{session_id}/runs")
            assert detail.status_code == 200 and detail.json()["session_id"] == session_id
            assert runs.status_code == 200 and len(runs.json()) == 1
            assert detail.headers["x-agentos-gateway-upstream"] == server.name
            memories = httpx.get(server.url + "/memories", params={"topics": "merge"}, timeout=30).json()["data"]
            memory = await client.get(f"/memories/{memories[0]['memory_id']}")
            assert memory.status_code == 200 and memory.json()["memory"] == memories[0]["memory"]
        missing = await client.get(f"/memories/none-{uuid.uuid4()}")
        unknown_session = await client.get(f"/sessions/none-{uuid.uuid4()}")
    assert missing.status_code == 404 and "not found" in missing.json()["detail"].lower()
    assert unknown_session.status_code == 404


async def test_deletes_reach_the_group_that_holds_the_item(storage) -> None:
    gateway, upstreams = storage["gateway"], storage["upstreams"]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        created: Dict[str, str] = {}  # session id -> the upstream that holds it
        while min(list(created.values()).count(name) for name in NAMES) < 2:  # some on each
            assert len(created) < 40, created
            session_id = f"del-{uuid.uuid4()}"
            run = await client.post("/v1/teams/echo-team/run", json={"input": session_id, "session_id": session_id})
            created[session_id] = run.headers["x-agentos-gateway-upstream"]
        one = {name: next(sid for sid, owner in created.items() if owner == name) for name in NAMES}
        for name, session_id in one.items():
            assert (await client.delete(f"/sessions/{session_id}")).status_code == 204
            holder = next(server for server in upstreams if server.name == name)
            assert httpx.get(f"{holder.url}/sessions/{session_id}", timeout=30).status_code == 404
        rest = [sid for sid in created if sid not in one.values()]
        bulk = await client.request("DELETE", "/sessions", json={"session_ids": rest, "session_types": ["team"] * len(rest)})
        assert bulk.status_code == 204, bulk.text
        listed = await client.get("/sessions", params={"type": "team", "limit": "50"})
        assert listed.json()["meta"]["total_count"] == 0 and listed.json()["data"] == []

        memory_ids = {}
        for name, db_id in storage["db_ids"].items():
            memory = await client.post("/memories", params={"db_id": db_id}, json={"memory": "to delete", "user_id": "del"})
            memory_ids[name] = memory.json()["memory_id"]
        assert (await client.delete(f"/memories/{memory_ids['st-b']}")).status_code == 204
        assert (await client.get(f"/memories/{memory_ids['st-b']}")).status_code == 404
        assert (await client.get(f"/memories/{memory_ids['st-a']}")).status_code == 200
        bulk = await client.request("DELETE", "/memories", json={"memory_ids": [memory_ids["st-a"]]})
        assert bulk.status_code == 204, bulk.text
        assert (await client.get("/memories", params={"user_id": "del"})).json()["data"] == []
    # An id no group has: AgentOS answers 204 (it does not look first); so does the gateway.
    through, direct = await _both(storage, "DELETE", f"/sessions/none-{uuid.uuid4()}")
    assert through.status_code == direct.status_code == 204


@pytest.mark.parametrize(
    "params",
    [{"page": "abc"}, {"limit": "0"}, {"limit": "x"}, {"sort_order": "up"}, {"page": "-1"}],
)
async def test_bad_pagination_gets_agentos_own_answer(storage, params: Dict[str, str]) -> None:
    through, direct = await _both(storage, "GET", "/sessions", params=params)
    assert through.status_code == direct.status_code == 422
    assert through.json() == direct.json()


async def test_a_page_too_deep_to_merge_is_refused_and_a_db_id_no_group_has_is_agentos_404(storage) -> None:
    async with httpx.AsyncClient(base_url=storage["gateway"].url, timeout=30) as client:
        deep = await client.get("/sessions", params={"page": "1000", "limit": "1000"})
        unknown = await client.get("/sessions", params={"db_id": "no-such-db"})
    assert deep.status_code == 400 and "storage.merge_max_items" in deep.json()["detail"]
    assert unknown.status_code == 404 and unknown.json()["detail"] == "No database found with id 'no-such-db'"


# -- database ids as the client sees them ------------------------------------------------------------


def _agent_ui_sequence(gateway: Server, upstreams: List[Server]) -> None:
    """Agent UI's calls, as it makes them (each preflighted from its origin): ``GET /health``,
    ``GET /agents`` and ``/teams``, the ``db_id`` of ``/agents``, a form run with ``stream=true``,
    the session list, each session's runs, a delete; every upstream's sessions listed, reopened
    and really deleted."""
    ui = AgentUI(gateway)
    try:
        assert ui.call("GET", "/health").status_code == 200
        agents = ui.call("GET", "/agents").json()
        (db_id,) = {agent["db_id"] for agent in agents if agent["id"] == "echo-agent"}
        assert "echo-team" in {team["id"] for team in ui.call("GET", "/teams").json()}
        events = ui.run("echo-agent", "hello from the UI")
        assert events[-1][0] == "RunCompleted", events[-1]
        sessions = f"/sessions?type=agent&component_id=echo-agent&db_id={db_id}"
        listed = ui.call("GET", sessions)
        assert listed.status_code == 200, listed.text
        everywhere = set()
        for server in upstreams:
            direct = httpx.get(server.url + "/sessions", params={**AGENT_SESSIONS, "limit": "100"}, timeout=30).json()
            everywhere |= {session["session_id"] for session in direct["data"]}
        assert events[0][1]["session_id"] in everywhere
        page = {session["session_id"] for session in listed.json()["data"]}
        assert listed.json()["meta"]["total_count"] == len(everywhere)
        assert page <= everywhere and len(page) == min(20, len(everywhere))  # Agent UI's page: AgentOS's 20
        for session_id in sorted(everywhere):
            runs = ui.call("GET", f"/sessions/{session_id}/runs?type=agent&db_id={db_id}")
            assert runs.status_code == 200 and runs.json(), (session_id, runs.text)
        for server in upstreams:  # one session of each upstream, deleted through the gateway
            session_id = httpx.get(server.url + "/sessions", params=AGENT_SESSIONS, timeout=30).json()["data"][0]["session_id"]
            assert ui.call("DELETE", f"/sessions/{session_id}?db_id={db_id}").status_code == 204
            assert httpx.get(f"{server.url}/sessions/{session_id}", timeout=30).status_code == 404
        after = ui.call("GET", sessions)
        assert after.json()["meta"]["total_count"] == len(everywhere) - len(upstreams)
    finally:
        ui.close()


async def test_one_db_id_per_entity_stable_across_gateway_processes(storage, log_dir: Path) -> None:
    gateway, upstreams = storage["gateway"], storage["upstreams"]
    real_ids = set(storage["db_ids"].values())
    second = start_gateway("storage-gateway-2", gateway_config(upstreams), log_dir)
    try:
        shown = []
        for server in (gateway, second):
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                config = (await client.get("/config")).json()
                listed = {kind: (await client.get(f"/{kind}")).json() for kind in ("agents", "teams", "workflows")}
                detail = (await client.get("/agents/echo-agent")).json()
            ids = {entry["db_id"] for kind in ("agents", "teams", "workflows") for entry in config[kind]}
            ids |= {entry["db_id"] for entries in listed.values() for entry in entries} | {detail["db_id"]}
            assert len(ids) == 1 and not ids & real_ids, ids  # one id, the gateway's own
            assert config["databases"] == sorted(ids) or set(config["databases"]) == ids
            assert {db["db_id"] for db in config["session"]["dbs"]} == ids
            shown.append(ids)
        assert shown[0] == shown[1]
    finally:
        second.stop()


async def test_a_request_naming_a_group_own_db_id_goes_to_that_group(storage) -> None:
    for server in storage["upstreams"]:
        db_id = storage["db_ids"][server.name]
        query = {**AGENT_SESSIONS, "limit": "50", "db_id": db_id}
        async with httpx.AsyncClient(timeout=30) as client:
            through = await client.get(storage["gateway"].url + "/sessions", params=query)
            direct = await client.get(server.url + "/sessions", params=query)
        assert _page(through, "session_id") == _page(direct, "session_id")
        assert through.headers["x-agentos-gateway-upstream"] == server.name


async def test_a_write_naming_the_gateway_db_id_lands_in_one_group_with_its_own_id(storage) -> None:
    async with httpx.AsyncClient(base_url=storage["gateway"].url, timeout=30) as client:
        (db_id,) = {agent["db_id"] for agent in (await client.get("/agents")).json()}
        user_id = f"made-{uuid.uuid4()}"
        created = await client.post("/memories", params={"db_id": db_id}, json={"memory": "tea", "user_id": user_id})
        assert created.status_code in (200, 201), created.text
        found = await client.get(f"/memories/{created.json()['memory_id']}", params={"db_id": db_id})
        assert found.status_code == 200 and found.json()["memory"] == "tea"
        listed = await client.get("/memories", params={"db_id": db_id, "user_id": user_id})
    assert [memory["memory_id"] for memory in listed.json()["data"]] == [created.json()["memory_id"]]
    holders = [
        server.name for server in storage["upstreams"]
        if httpx.get(server.url + "/memories", params={"user_id": user_id}, timeout=30).json()["meta"]["total_count"]
    ]  # fmt: skip
    assert len(holders) == 1 and created.headers["x-agentos-gateway-upstream"] == holders[0]


def test_agent_ui_sequence_with_sqlite_files(storage) -> None:
    _agent_ui_sequence(storage["gateway"], storage["upstreams"])


@pytest.fixture(scope="module")
def in_memory(log_dir: Path) -> Iterator[Dict[str, Any]]:
    """Two upstreams with in-memory storage (as ``make demo`` runs them) and a gateway."""
    upstreams = start_upstreams(("mem-a", "mem-b"), log_dir)
    gateway = None
    try:
        gateway = start_gateway("in-memory-gateway", gateway_config(upstreams), log_dir)
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            for index in range(8):  # ids that rank on both upstreams
                session_id = f"ui-{index}"
                run = client.post("/v1/agents/echo-agent/run", json={"input": "hello", "session_id": session_id})
                assert run.status_code == 200, run.text
        yield {"gateway": gateway, "upstreams": upstreams}
    finally:
        stop_servers([server for server in [*upstreams, gateway] if server is not None])


def test_agent_ui_sequence_with_in_memory_upstreams(in_memory) -> None:
    for server in in_memory["upstreams"]:
        assert httpx.get(server.url + "/sessions", timeout=30).json()["meta"]["total_count"] >= 2
    _agent_ui_sequence(in_memory["gateway"], in_memory["upstreams"])

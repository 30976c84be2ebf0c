"""The route table against a real AgentOS's own route list, its matcher, and the path checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Set, Tuple

import httpx
import pytest

from gateway.api.forwarding import segment
from gateway.api.observe import path_problem
from gateway.api.route_table import ROUTES, TABLE, Limit, Rule
from tests.processes import Server, start_server
from tests.test_attacks import _raw_request, _status


@pytest.fixture(scope="module")
def upstream_with_db(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An AgentOS with a database of its own and every door: every route of its families is live."""
    db = tmp_path_factory.mktemp("table-db") / "agentos.db"
    args = ["upstream", "--name", "table", "--db", f"sqlite:///{db}", "--doors", "all"]
    server = start_server("table-upstream", args, log_dir)
    yield server
    server.stop()


def _shape(template: str) -> str:
    """A template with its parameters unnamed (AgentOS's A2A routes name the id ``id``)."""
    return "/".join("{}" if part.startswith("{") else part for part in template.split("/"))


def _declared() -> Set[Tuple[str, str]]:
    # MCP is a mounted app, absent from /openapi.json: tests/test_door_mcp.py checks its door.
    return {(method, _shape(route.template)) for route in ROUTES for method in route.methods if route.door != "mcp"}


def test_every_agentos_route_is_in_the_table(upstream_with_db) -> None:
    """When agno adds, drops or renames a route, this names it."""
    schema = httpx.get(f"{upstream_with_db.url}/openapi.json", timeout=30).json()
    served = {(method.upper(), _shape(path)) for path, operations in schema["paths"].items() for method in operations}
    declared = _declared()
    assert sorted(served - declared) == [], "AgentOS routes missing from gateway/api/route_table.py"
    assert sorted(declared - served) == [], "routes of the table AgentOS no longer serves"


def test_each_route_says_how_it_is_served() -> None:
    for route in ROUTES:
        assert route.template.startswith("/") and route.methods
        assert (route.rule is Rule.NOT_FORWARDED) == bool(route.reason), route
        if route.starts_run:
            assert route.limit is Limit.STARTS_RUN, route
    not_forwarded = [(route.template, route.reason) for route in ROUTES if route.rule is Rule.NOT_FORWARDED]
    assert not_forwarded == []  # GET /metrics too is AgentOS's (the gateway's scrape is on its admin port)
    metrics = TABLE.match("GET", "/metrics")
    assert metrics is not None and metrics.route is not None
    assert (metrics.route.rule, metrics.route.own_handler) == (Rule.COLLECTION, False)  # merged by day over the groups
    resume = TABLE.match("POST", "/teams/t/runs/r/resume")
    assert resume is not None and resume.route is not None
    assert (resume.route.rule, resume.route.limit, resume.route.starts_run) == (Rule.RUN, Limit.STARTS_RUN, False)


@pytest.mark.parametrize(
    "method, path, template, params",
    [
        ("GET", "/memories", "/memories", {}),
        ("PATCH", "/memories/m-1", "/memories/{memory_id}", {"memory_id": "m-1"}),
        ("GET", "/agents/a/runs/r/checkpoints/3", "/agents/{agent_id}/runs/{run_id}/checkpoints/{message_index}",
         {"agent_id": "a", "run_id": "r", "message_index": "3"}),
        ("POST", "/workflows/w/runs/r/resume", "/workflows/{workflow_id}/runs/{run_id}/resume", {"workflow_id": "w", "run_id": "r"}),
        ("GET", "/learnings/users", "/learnings/users", {}),  # the literal before the parameter
        ("PATCH", "/learnings/users", "/learnings/{learning_id}", {"learning_id": "users"}),  # only the parameter takes PATCH
        ("GET", "/knowledge/content/status", "/knowledge/content/{content_id}", {"content_id": "status"}),
        ("GET", "/knowledge/kb/sources/s/files", "/knowledge/{knowledge_id}/sources/{source_id}/files",
         {"knowledge_id": "kb", "source_id": "s"}),
        ("GET", "/approvals/count", "/approvals/count", {}),
        ("POST", "/databases/all/migrate", "/databases/all/migrate", {}),
        ("POST", "/databases/d 1/migrate", "/databases/{db_id}/migrate", {"db_id": "d 1"}),
        ("GET", "/sessions/s/runs/r", "/sessions/{session_id}/runs/{run_id}", {"session_id": "s", "run_id": "r"}),
    ],
)  # fmt: skip
def test_the_matcher_finds_the_route_and_its_parameters(method, path, template, params) -> None:
    matched = TABLE.match(method, path)
    assert matched is not None and matched.route is not None
    assert (matched.route.template, matched.params) == (template, params)


@pytest.mark.parametrize(
    "path",
    ["/memories/", "/memories/a/b", "/memorie", "/Memories", "memories", "", "/", "/agents/a/runs/r/checkpoint",
     "/workflows/w/runs/r/checkpoints", "/teams/t/sessions/s/compact", "/v1/agents/a/runs", "/agents//runs"],
)  # fmt: skip
def test_near_misses_match_nothing(path) -> None:
    assert TABLE.match("GET", path) is None and TABLE.match("POST", path) is None


def test_a_known_path_with_another_method_is_a_405_match() -> None:
    matched = TABLE.match("PUT", "/memories/m")
    assert matched is not None and matched.route is None
    assert matched.allowed == {"GET", "PATCH", "DELETE"}


def test_entities_and_upstream_paths() -> None:
    matched = TABLE.match("GET", "/agents/a/runs/r/checkpoints")
    assert matched is not None and matched.route is not None and matched.route.entity is not None
    assert (matched.route.entity.kind, matched.route.entity.parameter) == ("agent", "agent_id")
    memory = TABLE.match("GET", "/memories/../x?y")
    assert memory is None  # two segments
    item = TABLE.match("GET", "/memories/a?b#..")
    assert item is not None and item.route is not None
    assert item.route.path(item.params, segment) == "/memories/a%3Fb%23.."
    dots = TABLE.match("GET", "/memories/..")
    assert dots is not None and dots.route is not None and dots.route.path(dots.params, segment) == "/memories/%2E%2E"
    listing = TABLE.match("GET", "/memories")
    assert listing is not None and listing.route is not None and listing.route.entity is None


@pytest.mark.parametrize(
    "raw",
    [b"/sessions/x/../../memories", b"/sessions/x/%2e%2e/%2E%2E/config", b"/a/%2E", b"/a/./b", b"/..", b"/a/.%2e/b",
     b"/memories/a%2fb", b"/memories/a%2Fb", b"/memories/a%5cb", b"/memories/a%5Cb", b"/memories/a%00", b"/memories/a\x00b"],
)  # fmt: skip
def test_bad_paths_are_named(raw: bytes) -> None:
    assert path_problem(raw) is not None


@pytest.mark.parametrize(
    "raw", [b"/v1/agents/echo-agent/run", b"/memories/a.b", b"/memories/.hidden", b"/memories/...", b"/agents/caf%C3%A9/runs", b"/"]
)
def test_good_paths_pass(raw: bytes) -> None:
    assert path_problem(raw) is None


@pytest.mark.parametrize(
    "path", ["/sessions/x/../../memories", "/sessions/x/%2e%2e/%2e%2e/config", "/memories/a%2fb", "/memories/a%5Cb",
             "/memories/%00", "/v1/agents/%2E%2E/run", "/health/%2e"],
)  # fmt: skip
def test_bad_paths_get_a_400_from_the_gateway(gateway, path: str) -> None:
    answer = _raw_request(gateway.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert _status(answer) == 400 and json.loads(body)["detail"].startswith("Invalid path"), answer
    assert b"\r\nx-request-id: " in head.lower()


def test_the_table_names_the_routes_that_always_answer_with_a_stream() -> None:
    """Resume, AG-UI's run and A2A's message stream stream whatever the body says; every other
    run route streams when its ``stream`` field says so (``api/passthrough.py`` reads it)."""
    always = sorted(route.template for route in ROUTES if route.always_streams)
    assert always == sorted(
        [
            "/agui",
            *(f"/a2a/{kind}/{{{kind[:-1]}_id}}/v1/message:stream" for kind in ("agents", "teams", "workflows")),
            *(f"/{kind}/{{{kind[:-1]}_id}}/runs/{{run_id}}/resume" for kind in ("agents", "teams", "workflows")),
        ]
    )

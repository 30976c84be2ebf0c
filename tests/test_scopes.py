"""Client keys in AgentOS's RBAC vocabulary (``gateway/scopes.py``, ``gateway/api/permissions.py``).

The oracle is a real AgentOS (in-process, agno's JWT authorization on) answering a JWT that holds
the same scopes as the key: for every route of the route table with sample values (an id the
scopes name and one they do not), and the gateway's ``/v1`` runs against ``POST /{kind}/{id}/runs``,
the gateway refuses (403) exactly where AgentOS does, and ``/config`` and the listings show the
same ids. Authorization only, so the gateway runs in-process too (the demo components local, no
upstream). Then real processes: a refused request never reaches the upstream, an allowed one gets
its answer; malformed scopes and Authorization headers.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import quote

import httpx
import jwt
import pytest
import yaml

from gateway.api.auth import OPEN_PATHS
from gateway.api.route_table import TABLE
from gateway.scopes import entity_scopes, key_scopes
from gateway.settings import DEMO_LOCAL, ConfigError, Settings, load_settings
from tests.pools import answered_by, gateway_config, start_gateway
from tests.processes import Server

JWT_SECRET = "scopes-oracle-secret-0123456789abcdef"
ORACLE_ID = "scopes-oracle"

# name -> (scopes, entities) of a client key; the oracle's JWT holds key_scopes(scopes, entities).
KEYS: Dict[str, Tuple[Optional[List[str]], Optional[List[str]]]] = {
    "admin": (None, None),  # neither: agent_os:admin
    "explicit-admin": (["agent_os:admin"], None),
    "entities": (None, ["echo-agent", "echo-team"]),
    "agent-run": (["agents:echo-agent:run"], None),
    "agent-read": (["agents:echo-agent:read"], None),
    "sessions-read": (["sessions:read"], None),
    "any-agent-run": (["agents:*:run"], None),
    "memories-write": (["memories:write"], None),
    "readers": (["agents:read", "teams:*:read", "system:read"], None),  # system: agno's legacy alias of config
    "both": (["sessions:read", "sessions:delete"], ["echo-workflow"]),
    "other-team": (["teams:other-team:run", "teams:other-team:read"], None),
    "nothing": ([], None),
}
SAMPLE_IDS = {"agents": ("echo-agent", "other-agent"), "teams": ("echo-team", "other-team"), "workflows": ("echo-workflow", "x")}


def _secret(name: str) -> str:
    return f"scopes-test-key-{name}-0123456789"


def _key_config(name: str) -> Dict[str, Any]:
    scopes, entities = KEYS[name]
    entry: Dict[str, Any] = {"name": name, "key": _secret(name)}
    if scopes is not None:
        entry["scopes"] = scopes
    if entities is not None:
        entry["entities"] = entities
    return entry


def _samples() -> Iterator[Tuple[str, str, str]]:
    """(method, path at the gateway, the same request's path at AgentOS) for every route."""
    for route in TABLE.routes:
        if route.template in OPEN_PATHS or route.door == "mcp":
            continue  # the gateway's own (/health): open; MCP: gated per tool (tests/test_door_mcp.py)
        family = f"{route.entity.kind}s" if route.runnable_entity and route.entity is not None else None
        for method in sorted(route.methods):
            for entity_id in SAMPLE_IDS[family] if family else (None,):
                values = {name: "1" for name in route.parameters}
                if family:
                    values[route.parameters[0]] = entity_id
                path = route.path(values, lambda value: quote(value, safe=""))
                yield method, path, path
    for family, ids in SAMPLE_IDS.items():
        for entity_id in ids:
            yield "POST", f"/v1/{family}/{entity_id}/run", f"/{family}/{entity_id}/runs"


SAMPLES = list(_samples())


@pytest.fixture(scope="module")
def oracle_app(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real AgentOS with agno's JWT authorization, serving the demo components, AG-UI (the
    agent) and A2A."""
    from agno.os import AgentOS
    from agno.os.config import AuthorizationConfig
    from agno.os.interfaces.agui import AGUI

    from gateway.demo import build_demo, open_db

    db = open_db(f"sqlite:///{tmp_path_factory.mktemp('oracle') / 'oracle.db'}")
    demo = build_demo(instance=ORACLE_ID, db=db)
    agent_os = AgentOS(
        id=ORACLE_ID, agents=[demo.agent], teams=[demo.team], workflows=[demo.workflow], db=db, telemetry=False,
        interfaces=[AGUI(agent=demo.agent)], a2a_interface=True, authorization=True, authorization_config=AuthorizationConfig(verification_keys=[JWT_SECRET], algorithm="HS256"),
    )  # fmt: skip
    return agent_os.get_app()


@pytest.fixture(scope="module")
def gateway_app():  # type: ignore[no-untyped-def]
    """The gateway in-process: the demo components local, every key of KEYS."""
    from gateway.api.app import create_app

    settings = Settings(local=DEMO_LOCAL.model_dump(), auth={"keys": [_key_config(name) for name in KEYS]})
    return create_app(settings)


def _token(scopes: List[str]) -> str:
    return jwt.encode({"sub": "scopes-test", "aud": ORACLE_ID, "scopes": scopes}, JWT_SECRET, algorithm="HS256")


def _ids(answer: httpx.Response, family: str) -> Optional[List[str]]:
    if answer.status_code != 200:
        return None
    body = answer.json()
    items = body.get(family, []) if isinstance(body, dict) else body
    return sorted(item["id"] for item in items)


@pytest.mark.parametrize("name", list(KEYS))
async def test_the_gateway_refuses_exactly_where_agentos_does(name: str, oracle_app, gateway_app) -> None:  # type: ignore[no-untyped-def]
    scopes = key_scopes(*KEYS[name])
    to_oracle = {"Authorization": f"Bearer {_token(scopes)}"}
    to_gateway = {"Authorization": f"Bearer {_secret(name)}"}
    oracle_transport = httpx.ASGITransport(app=oracle_app, raise_app_exceptions=False)
    gateway_transport = httpx.ASGITransport(app=gateway_app, raise_app_exceptions=False)
    mismatches, refused = [], 0
    async with (
        httpx.AsyncClient(transport=oracle_transport, base_url="http://agentos", timeout=30) as oracle,
        httpx.AsyncClient(transport=gateway_transport, base_url="http://gateway", timeout=30) as gateway,
    ):
        for method, path, agentos_path in SAMPLES:
            expected = await oracle.request(method, agentos_path, headers=to_oracle)
            got = await gateway.request(method, path, headers=to_gateway)
            assert got.status_code != 401, (method, path, got.text)
            if (expected.status_code == 403) != (got.status_code == 403):
                mismatches.append(f"{method} {path}: AgentOS {expected.status_code}, gateway {got.status_code} {got.text[:120]}")
            if got.status_code == 403:
                refused += 1
                assert set(got.json()) == {"detail"} and name in got.json()["detail"]
        for family in SAMPLE_IDS:  # what a key may read is what it is shown
            listed = (_ids(await oracle.get(f"/{family}", headers=to_oracle), family), _ids(await gateway.get(f"/{family}", headers=to_gateway), family))
            assert listed[0] == listed[1], (family, listed)
            configured = [_ids(await client.get("/config", headers=headers), family) for client, headers in ((oracle, to_oracle), (gateway, to_gateway))]
            assert configured[0] == configured[1], ("/config", family, configured)
    assert not mismatches, "\n".join(mismatches)
    print(f"{name}: {len(SAMPLES)} requests, {refused} refused by both")
    if name in ("admin", "explicit-admin"):
        assert refused == 0
    elif name == "nothing":
        assert refused > len(SAMPLES) // 2


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/no-such-family"),
        ("PUT", "/sessions/s-1"),  # the session routes forward methods AgentOS does not have
        ("GET", "/sessions/s-1/no/such/part"),
        ("POST", "/agents/echo-agent/sessions/s-1/delete"),  # fork and compact only
        ("HEAD", "/agents"),
    ],
)
async def test_a_limited_key_reaches_no_route_agentos_lacks(gateway_app, method: str, path: str) -> None:  # type: ignore[no-untyped-def]
    transport = httpx.ASGITransport(app=gateway_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as gateway:
        limited = await gateway.request(method, path, headers={"Authorization": f"Bearer {_secret('entities')}"})
        admin = await gateway.request(method, path, headers={"Authorization": f"Bearer {_secret('admin')}"})
    assert limited.status_code == 403, limited.text
    if method != "HEAD":
        assert limited.json() == {"detail": f"Key 'entities' may not {method} this path: no AgentOS route takes it"}
    assert admin.status_code in (404, 405, 501), admin.text


def test_entities_are_shorthand_for_the_run_and_read_scopes_of_each_kind() -> None:
    assert entity_scopes(["echo-agent"]) == [
        "agents:echo-agent:run", "agents:echo-agent:read", "teams:echo-agent:run", "teams:echo-agent:read",
        "workflows:echo-agent:run", "workflows:echo-agent:read", "config:read",
    ]  # fmt: skip
    assert key_scopes(None, None) == ["agent_os:admin"]
    assert key_scopes(["sessions:read"], None) == ["sessions:read"]
    assert key_scopes([], None) == []
    assert key_scopes(["sessions:read"], ["a"]) == ["sessions:read", *entity_scopes(["a"])]


@pytest.mark.parametrize(
    "scope, problem",
    [
        ("agent:echo-agent:run", "no AgentOS route needs agent:run"),
        ("traces:write", "no AgentOS route needs traces:write"),
        ("agents::run", "not a scope"),
        ("agents:echo-agent:run:now", "not a scope"),
        ("agents", "not a scope"),
        ("", "not a scope"),
        ("sessions:s-1:read", "only agents, teams, workflows take an id"),
        ("agents:echo agent:run", "the id must match"),
        ("admin", "not a scope"),
    ],
)
def test_a_bad_scope_is_a_config_error_naming_it(tmp_path: Path, scope: str, problem: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"auth": {"keys": [{"name": "k", "key": _secret("k"), "scopes": ["sessions:read", scope]}]}}))
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert "auth.keys.0.scopes" in str(raised.value) and problem in str(raised.value), str(raised.value)


def test_check_config_refuses_a_bad_scope_and_shows_each_keys_scopes(tmp_path: Path) -> None:
    keys = [{"name": "runner", "key": _secret("runner"), "entities": ["echo-agent"]}, {"name": "ops", "key": _secret("ops"), "scopes": ["sessions:read"]}]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"auth": {"keys": keys}}))
    good = _check_config(path)
    assert good.returncode == 0, good.stderr
    assert "key ops: sessions:read\n" in good.stdout and "key runner: agents:echo-agent:run agents:echo-agent:read" in good.stdout
    assert _secret("runner") not in good.stdout
    keys[1]["scopes"] = ["sessions:raed"]
    path.write_text(yaml.safe_dump({"auth": {"keys": keys}}))
    bad = _check_config(path)
    assert bad.returncode != 0 and "'sessions:raed': no AgentOS route needs sessions:raed" in bad.stderr, bad.stderr


def test_an_entity_id_in_the_shorthand_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"auth": {"keys": [{"name": "k", "key": _secret("k"), "entities": ["echo-agent", "a:b"]}]}}))
    with pytest.raises(ConfigError, match="'a:b': an id must match"):
        load_settings(path)


def _check_config(path: Path) -> subprocess.CompletedProcess:
    import os

    clean = {name: value for name, value in os.environ.items() if not name.upper().startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, env={**clean, "AGNO_TELEMETRY": "false"},
    )  # fmt: skip


# -- real processes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scoped_gateway(log_dir: Path, pool_upstreams: List[Server]) -> Iterator[Server]:
    names = ["entities", "sessions-read", "any-agent-run"]
    keys = [{**_key_config(name)} for name in names]
    server = start_gateway("scoped-keys-gateway", gateway_config(pool_upstreams, auth={"keys": keys}), log_dir)
    yield server
    server.stop()


def _as(name: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {_secret(name)}"}


async def _held_by(upstreams: List[Server], session_id: str, kind: str) -> List[str]:
    """The upstreams that hold ``session_id``, asked directly."""
    held = []
    async with httpx.AsyncClient(timeout=30) as direct:
        for upstream in upstreams:
            answer = await direct.get(f"{upstream.url}/sessions/{session_id}", params={"type": kind})
            assert answer.status_code in (200, 404), answer.text
            if answer.status_code == 200:
                held.append(upstream.name)
    return held


async def test_a_refused_run_never_reaches_an_upstream_and_an_allowed_one_gets_its_answer(scoped_gateway, pool_upstreams) -> None:
    refused_session, allowed_session = f"scopes-{uuid.uuid4()}", f"scopes-{uuid.uuid4()}"
    async with httpx.AsyncClient(base_url=scoped_gateway.url, timeout=60) as client:
        refused = await client.post(
            "/v1/workflows/echo-workflow/run", json={"input": "hi", "session_id": refused_session}, headers=_as("entities")
        )
        assert refused.status_code == 403, refused.text
        assert refused.json() == {"detail": "Key 'entities' may not use workflows 'echo-workflow'"}
        native = await client.post(
            "/teams/echo-team/runs", data={"message": "hi", "session_id": refused_session, "stream": "false"}, headers=_as("any-agent-run")
        )
        assert native.status_code == 403 and "x-agentos-gateway-upstream" not in native.headers, native.text
        allowed = await client.post(
            "/v1/agents/echo-agent/run", json={"input": "hi", "session_id": allowed_session}, headers=_as("any-agent-run")
        )
        assert allowed.status_code == 200, allowed.text
        assert answered_by(allowed.json()["content"])[0] == allowed.headers["x-agentos-gateway-upstream"]
    assert await _held_by(pool_upstreams, refused_session, "workflow") == []
    assert await _held_by(pool_upstreams, refused_session, "team") == []
    assert await _held_by(pool_upstreams, allowed_session, "agent") == [allowed.headers["x-agentos-gateway-upstream"]]


async def test_session_scopes_through_a_real_gateway(scoped_gateway, pool_upstreams) -> None:
    session_id = f"scopes-{uuid.uuid4()}"
    async with httpx.AsyncClient(base_url=scoped_gateway.url, timeout=60) as client:
        ran = await client.post("/v1/agents/echo-agent/run", json={"input": "keep me", "session_id": session_id}, headers=_as("entities"))
        assert ran.status_code == 200, ran.text
        (owner,) = await _held_by(pool_upstreams, session_id, "agent")
        # the run key holds no session scope; the reader may read but not delete
        assert (await client.get(f"/sessions/{session_id}", headers=_as("entities"))).status_code == 403
        deleted = await client.delete(f"/sessions/{session_id}", headers=_as("sessions-read"))
        assert deleted.status_code == 403 and deleted.json()["detail"] == (
            "Key 'sessions-read' may not DELETE /sessions/{session_id}: it needs sessions:delete"
        )
        assert await _held_by(pool_upstreams, session_id, "agent") == [owner]  # never reached it
        read = await client.get(f"/sessions/{session_id}", params={"type": "agent"}, headers=_as("sessions-read"))
        assert read.status_code == 200 and read.json()["session_id"] == session_id, read.text
        # listings and /config show the entities key only its own ids
        agents = await client.get("/agents", headers=_as("entities"))
        assert [item["id"] for item in agents.json()] == ["echo-agent"], agents.text
        # it may read workflows named echo-agent or echo-team (the shorthand names each id in each
        # kind): none exists, so an empty list, as AgentOS answers
        assert (await client.get("/workflows", headers=_as("entities"))).json() == []
        assert (await client.get("/workflows", headers=_as("any-agent-run"))).status_code == 403  # no read scope
        config = (await client.get("/config", headers=_as("entities"))).json()
        assert ([a["id"] for a in config["agents"]], [t["id"] for t in config["teams"]], config["workflows"]) == (["echo-agent"], ["echo-team"], [])
        assert (await client.get("/config", headers=_as("any-agent-run"))).status_code == 403  # no config:read


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks: List[bytes] = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer \xff\xfe\x00garbage",
        b"\xc3\x28",
        b"Bearer " + b"A" * 8000,
        b"Bearer  ",
        b"Basic Og==",
        b"Bearer " + _secret("entities").encode() + b"\t",  # a tab is trimmed by the server: the key itself
    ],
)
async def test_a_garbage_authorization_header_is_a_401(scoped_gateway, authorization: bytes) -> None:
    request = (
        b"POST /v1/agents/echo-agent/run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: " + authorization + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    answer = await asyncio.to_thread(_raw_request, scoped_gateway.port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if authorization.endswith(b"\t"):
        assert status == 422, answer[:300]  # authorized: the body {} lacks input
    else:
        assert status in (400, 401), answer[:300]  # 400: the HTTP parser's own refusal of the header
        assert b"x-agentos-gateway-upstream" not in head.lower()
        assert b'"detail"' in body

"""CORS as AgentOS sets it up, so agno's Agent UI (http://localhost:3000) and agno's hosted UI work
against the gateway: AgentOS's default origins, checked against a real AgentOS answering the same
requests; ``cors_origins`` adds to them, ``cors_defaults: false`` turns them off."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import httpx
import pytest

from gateway.settings import Settings, agentos_default_origins
from tests.pools import gateway_config, start_gateway
from tests.processes import Server

AGENT_UI = "http://localhost:3000"
ADDED = "http://ui.example"
NOT_ALLOWED = "http://evil.example"
# What agno's UIs call: health, the listings, the sessions of agents, and the form run.
ROUTES: List[Tuple[str, str]] = [
    ("GET", "/health"),
    ("GET", "/agents"),
    ("GET", "/sessions?type=agent"),
    ("POST", "/agents/echo-agent/runs"),
]


@pytest.fixture(scope="module")
def cors_gateway(log_dir: Path, pool_upstreams: List[Server]) -> Iterator[Server]:
    """A gateway with AgentOS's default origins and one added."""
    server = start_gateway("cors-defaults-gateway", gateway_config(pool_upstreams, cors_origins=[ADDED]), log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def agentos(pool_upstreams: List[Server]) -> Server:
    """A real AgentOS with its own CORS defaults (one of the gateway's upstreams, asked directly)."""
    return pool_upstreams[0]


def preflight(server: Server, method: str, path: str, origin: str) -> httpx.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    return httpx.options(f"{server.url}{path}", headers=headers, timeout=30)


def cors_headers(response: httpx.Response) -> Dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("access-control-")}


def test_the_default_origins_are_agentos_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from agno.os.settings import AgnoAPISettings

    monkeypatch.delenv("CORS_ORIGIN_LIST", raising=False)  # AgentOS's own variable, which adds to them
    assert agentos_default_origins() == AgnoAPISettings().cors_origin_list
    assert AGENT_UI in agentos_default_origins() and "https://os.agno.com" in agentos_default_origins()
    assert Settings().allowed_origins() == agentos_default_origins()
    assert Settings(cors_origins=[ADDED, AGENT_UI]).allowed_origins() == [*agentos_default_origins(), ADDED]
    assert Settings(cors_defaults=False).allowed_origins() == []


@pytest.mark.parametrize("method, path", ROUTES)
def test_a_preflight_from_the_agent_ui_is_answered_as_agentos_answers_it(
    cors_gateway: Server, agentos: Server, method: str, path: str
) -> None:
    through_gateway = preflight(cors_gateway, method, path, AGENT_UI)
    direct = preflight(agentos, method, path, AGENT_UI)
    assert (through_gateway.status_code, through_gateway.text) == (direct.status_code, direct.text) == (200, "OK")
    assert cors_headers(through_gateway) == cors_headers(direct)
    assert through_gateway.headers["access-control-allow-origin"] == AGENT_UI
    assert through_gateway.headers["access-control-allow-credentials"] == "true"
    assert method in through_gateway.headers["access-control-allow-methods"]
    assert through_gateway.headers["access-control-allow-headers"] == "authorization,content-type"


@pytest.mark.parametrize("origin", agentos_default_origins())
def test_every_default_origin_is_allowed_as_on_agentos(cors_gateway: Server, agentos: Server, origin: str) -> None:
    through_gateway = preflight(cors_gateway, "POST", "/agents/echo-agent/runs", origin)
    direct = preflight(agentos, "POST", "/agents/echo-agent/runs", origin)
    assert through_gateway.headers["access-control-allow-origin"] == origin
    assert cors_headers(through_gateway) == cors_headers(direct)


def test_the_answers_carry_the_cors_headers(cors_gateway: Server, agentos: Server) -> None:
    origin = {"Origin": AGENT_UI}
    with httpx.Client(timeout=30) as client:
        for method, path in ROUTES:
            data = {"message": "hello", "stream": "true"} if method == "POST" else None
            through_gateway = client.request(method, f"{cors_gateway.url}{path}", headers=origin, data=data)
            direct = client.request(method, f"{agentos.url}{path}", headers=origin, data=data)
            assert through_gateway.status_code == direct.status_code == 200, (path, through_gateway.text)
            for name in ("access-control-allow-origin", "access-control-allow-credentials"):
                assert through_gateway.headers[name] == direct.headers[name], (path, name)
            # The gateway's own headers readable by the page, even with credentials ("*" is not).
            exposed = {name.strip() for name in through_gateway.headers["access-control-expose-headers"].split(",")}
            assert {"*", "x-request-id", "x-agentos-gateway-upstream", "x-agentos-gateway-affinity"} <= exposed
    assert "event: RunCompleted" in through_gateway.text  # the streamed form run went through


def test_a_run_without_an_origin_varies_on_origin_as_through_the_cors_layer(cors_gateway: Server) -> None:
    """A run the fast path takes (no Origin) says ``Vary: Origin`` as the CORS layer writes it for
    every other answer: a cache must not serve it to a page of another origin."""
    with httpx.Client(timeout=30) as client:
        data = {"message": "hello", "stream": "false"}
        run = client.post(f"{cors_gateway.url}/agents/echo-agent/runs", data=data)
        refused = client.post(f"{cors_gateway.url}/agents/echo-agent/runs", data={"stream": "maybe", "message": "x"})
        listing = client.get(f"{cors_gateway.url}/sessions?type=agent")
    for answer in (run, refused, listing):
        varies = [value.strip() for value in answer.headers.get_list("vary") for value in value.split(",")]
        assert "Origin" in varies, (answer.request.url, answer.headers)
        assert "access-control-allow-origin" not in answer.headers
    assert run.status_code == 200 and run.json()["status"] == "COMPLETED"
    assert refused.status_code in (400, 422), refused.text


def test_an_origin_not_allowed_gets_no_cors_headers(cors_gateway: Server, agentos: Server) -> None:
    through_gateway = preflight(cors_gateway, "POST", "/agents/echo-agent/runs", NOT_ALLOWED)
    direct = preflight(agentos, "POST", "/agents/echo-agent/runs", NOT_ALLOWED)
    assert through_gateway.status_code == direct.status_code == 400
    assert "access-control-allow-origin" not in through_gateway.headers
    answer = httpx.get(f"{cors_gateway.url}/sessions?type=agent", headers={"Origin": NOT_ALLOWED}, timeout=30)
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_an_added_origin_is_allowed(cors_gateway: Server) -> None:
    answer = preflight(cors_gateway, "POST", "/agents/echo-agent/runs", ADDED)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ADDED


async def test_without_the_defaults_and_without_origins_there_is_no_cors(
    log_dir: Path, pool_upstreams: List[Server]
) -> None:
    import asyncio

    config = gateway_config(pool_upstreams, cors_defaults=False)
    gateway = await asyncio.to_thread(start_gateway, "cors-off-gateway", config, log_dir)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            answer = await client.options(
                "/agents/echo-agent/runs", headers={"Origin": AGENT_UI, "Access-Control-Request-Method": "POST"}
            )
            # A real request forwarded to an upstream: the upstream's own CORS policy does not show
            # through (the gateway does not forward Origin).
            listing = await client.get("/sessions?type=agent", headers={"Origin": AGENT_UI})
        assert not cors_headers(answer)
        assert listing.status_code == 200 and not cors_headers(listing)
    finally:
        gateway.stop()

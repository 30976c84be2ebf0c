"""The admin listener (Envoy's admin port), against real processes: the Prometheus scrape and the
``/admin`` API on a port of their own, nothing of them on the public port, where ``GET /metrics``
is AgentOS's usage metrics, passed to an upstream as any of its routes; where the listener binds
(``--admin-port``, ``GATEWAY_ADMIN__PORT``), and a bad admin port refused clearly."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import httpx
import pytest
from agno.client import AgentOSClient

from tests.helpers import eventually_async
from tests.pools import ADMIN_KEY, FAST_HEALTH, start_gateway, start_upstreams
from tests.processes import Server, start_server

CLIENT_KEY = "admin-port-client-key-0123456789"
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PROMETHEUS_TEXT = "text/plain; version="  # the exposition format (prometheus-client picks its version)
_ADMIN_LINE = re.compile(r"Admin listener on http://127\.0\.0\.1:(\d+): GET /metrics")


@pytest.fixture(scope="module")
def stored_upstream(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real AgentOS with a SQLite database: its usage metrics have something to count."""
    (server,) = start_upstreams(["metrics-os"], log_dir, db_dir=tmp_path_factory.mktemp("admin-port"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyed_gateway(log_dir: Path, stored_upstream: Server) -> Iterator[Server]:
    """The gateway in front of it, with a client key (so the public port asks for one) and an admin key."""
    config = {
        "upstreams": [{"name": stored_upstream.name, "url": stored_upstream.url}],
        "health": FAST_HEALTH,
        "admin_key": ADMIN_KEY,
        "auth": {"keys": [{"name": "client", "key": CLIENT_KEY}]},
    }
    server = start_gateway("admin-port-gateway", config, log_dir)
    yield server
    server.stop()


def _cli(*args: str, env: Dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items() if not key.upper().startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "AGNO_TELEMETRY": "false", **(env or {})},
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the admin port --------------------------------------------------------------------------------


async def test_the_scrape_is_on_the_admin_port_open_and_passes_promtool(keyed_gateway: Server) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: run deploy/tools.sh (Debian package prometheus)")
    async with httpx.AsyncClient(timeout=30) as client:
        ran = await client.post(f"{keyed_gateway.url}/v1/agents/echo-agent/run", json={"input": "hi"}, headers=CLIENT)
        assert ran.status_code == 200, ran.text
        await client.get(f"{keyed_gateway.admin_url}/metrics")  # counted by the next scrape
        scrape = await client.get(f"{keyed_gateway.admin_url}/metrics")  # no key: Prometheus scrapes without one
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith(PROMETHEUS_TEXT)
    checked = subprocess.run([promtool, "check", "metrics"], input=scrape.text, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = scrape.text
    assert 'agentos_gateway_requests_total{code="200",entity="echo-agent",kind="agent",route="/v1/agents/{entity_id}/run"}' in text
    # the admin listener's own requests are apart from the public port's (whose /metrics is AgentOS's)
    assert 'agentos_gateway_requests_total{code="200",entity="unknown",kind="admin",route="/metrics"}' in text
    assert 'agentos_gateway_upstream_healthy{upstream="metrics-os"} 1.0' in text


@pytest.mark.parametrize(
    "headers, status",
    [
        (ADMIN, 200),
        ({}, 401),
        ({"Authorization": "Bearer wrong-admin-key-0123456789"}, 401),
        ({"Authorization": f"Bearer {ADMIN_KEY}x"}, 401),
        (CLIENT, 401),  # a client key is not the admin key
    ],
)
async def test_the_admin_api_on_the_admin_port_takes_the_admin_key(keyed_gateway: Server, headers, status) -> None:
    async with httpx.AsyncClient(base_url=keyed_gateway.admin_url, timeout=30) as client:
        upstreams = await client.get("/admin/upstreams", headers=headers)
        runtime = await client.get("/admin/runtime", headers=headers)
    assert (upstreams.status_code, runtime.status_code) == (status, status), upstreams.text
    if status == 200:
        assert [upstream["name"] for upstream in upstreams.json()] == ["metrics-os"]
        assert runtime.json()["pid"] == keyed_gateway.process.pid
    else:
        assert upstreams.json() == {"detail": "Invalid admin key"}


async def test_the_admin_port_serves_nothing_of_the_public_api(keyed_gateway: Server) -> None:
    async with httpx.AsyncClient(base_url=keyed_gateway.admin_url, timeout=30) as client:
        for method, path in (("GET", "/config"), ("GET", "/health"), ("POST", "/v1/agents/echo-agent/run")):
            answer = await client.request(method, path, headers=CLIENT, json={"input": "hi"})
            assert answer.status_code == 404, (method, path, answer.text)
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/metrics" in paths and "/admin/upstreams" in paths and "/config" not in paths


# -- the public port -------------------------------------------------------------------------------


async def test_nothing_of_the_admin_listener_is_on_the_public_port(keyed_gateway: Server) -> None:
    async with httpx.AsyncClient(base_url=keyed_gateway.url, timeout=30) as client:
        for method, path in (("GET", "/admin/upstreams"), ("GET", "/admin/runtime"), ("POST", "/admin/reload"),
                             ("POST", "/admin/upstreams/metrics-os/drain")):  # fmt: skip
            answer = await client.request(method, path, headers=CLIENT)
            assert (answer.status_code, answer.json()) == (404, {"detail": "Not Found"}), (method, path)
            # the admin key is no client key: refused as any other, before routing
            assert (await client.request(method, path, headers=ADMIN)).status_code == 401
        metrics = await client.get("/metrics", headers=CLIENT)
        schema = (await client.get("/openapi.json")).json()["paths"]
    assert metrics.status_code == 200 and metrics.headers["content-type"] == "application/json"
    assert "# HELP" not in metrics.text and set(metrics.json()) == {"metrics", "updated_at"}
    assert not [path for path in schema if path.startswith("/admin")]
    states = await _admin_states(keyed_gateway)
    assert states["metrics-os"]["draining"] is False  # the drain above reached nothing


async def _admin_states(gateway: Server) -> Dict[str, Any]:
    async with httpx.AsyncClient(base_url=gateway.admin_url, timeout=30) as client:
        answer = await client.get("/admin/upstreams", headers=ADMIN)
    return {upstream["name"]: upstream for upstream in answer.json()}


async def test_public_metrics_is_agentos_and_takes_a_client_key(keyed_gateway: Server, stored_upstream: Server) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        refused = await client.get(f"{keyed_gateway.url}/metrics")
        assert (refused.status_code, refused.json()) == (401, {"detail": "Authorization header required"})
        for path in ("/health", "/ready"):  # still open on the public port
            assert (await client.get(f"{keyed_gateway.url}{path}")).status_code == 200, path
        for method, path, fields in (("GET", "/metrics", {"metrics", "updated_at"}),
                                     ("GET", "/metrics/refresh/status", {"status", "started_at", "finished_at", "error"})):  # fmt: skip
            through = await client.request(method, f"{keyed_gateway.url}{path}", headers=CLIENT)
            direct = await client.request(method, f"{stored_upstream.url}{path}")
            assert through.status_code == direct.status_code == 200, (path, through.text)
            assert through.headers["x-agentos-gateway-upstream"] == stored_upstream.name
            assert set(through.json()) == set(direct.json()) == fields


def _dumped(value: Any) -> Any:
    if isinstance(value, list):
        return [_dumped(item) for item in value]
    return value.model_dump() if hasattr(value, "model_dump") else value


async def test_agentos_client_metrics_through_the_gateway_answer_as_agentos(
    keyed_gateway: Server, stored_upstream: Server
) -> None:
    async with httpx.AsyncClient(timeout=60) as client:  # something for the metrics to count
        for text in ("6 * 7", "hello"):
            ran = await client.post(f"{keyed_gateway.url}/v1/agents/echo-agent/run", json={"input": text}, headers=CLIENT)
            assert ran.status_code == 200, ran.text
    through, direct = AgentOSClient(keyed_gateway.url), AgentOSClient(stored_upstream.url)

    refreshed = await through.refresh_metrics(headers=CLIENT)
    again = await direct.refresh_metrics()
    assert isinstance(refreshed, list) and refreshed, "the runs above are counted"
    assert _comparable_days(refreshed) == _comparable_days(again)

    from_gateway = await through.get_metrics(headers=CLIENT)
    from_upstream = await direct.get_metrics()
    assert from_gateway.model_dump() == from_upstream.model_dump()
    assert from_gateway.metrics and from_gateway.metrics[0].agent_runs_count >= 2

    async def finished(client: AgentOSClient, **kwargs: Any) -> Any:
        status = await client.get_metrics_refresh_status(**kwargs)
        return status if status.status != "running" else None

    # one background refresh at a time per database (AgentOS answers "already_running" otherwise)
    background = await through.refresh_metrics(background=True, headers=CLIENT)
    seen = await eventually_async(lambda: finished(through, headers=CLIENT), what="the refresh through the gateway")
    assert _dumped(background) == _dumped(await direct.refresh_metrics(background=True))
    direct_seen = await eventually_async(lambda: finished(direct), what="the refresh on the upstream")
    assert (seen.status, seen.model_dump().keys()) == (direct_seen.status, direct_seen.model_dump().keys())


def _comparable_days(days: List[Any]) -> List[Dict[str, Any]]:
    """Each day's metrics without the row's bookkeeping (a refresh writes it anew)."""
    return [{k: v for k, v in day.model_dump().items() if k not in ("id", "updated_at", "created_at")} for day in days]


# -- where it binds --------------------------------------------------------------------------------


async def test_the_admin_port_flag_takes_effect(log_dir: Path) -> None:
    """``--admin-port 0``: any free port, named in the log (the default would be 9901)."""
    server = start_server("admin-flag-gateway", ["serve", "--admin-port", "0"], log_dir, admin_fd=False)
    try:
        (port,) = _ADMIN_LINE.findall(server.log())  # logged before the first request is answered
        assert int(port) not in (9901, server.port)
        server.admin_port = int(port)
        async with httpx.AsyncClient(timeout=30) as client:
            scrape = await client.get(f"{server.admin_url}/metrics")
            public = await client.get(f"{server.url}/metrics")
        assert scrape.status_code == 200 and "agentos_gateway_requests_total" in scrape.text
        # the embedded default's usage metrics: its local components' AgentOS answers them
        assert public.status_code == 200 and "metrics" in public.json()
    finally:
        server.stop()


async def test_the_admin_port_environment_variable_takes_effect(log_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text("admin:\n  port: 9901\n")  # the environment wins over the file
    env = {"GATEWAY_ADMIN__PORT": str(port)}
    server = start_server("admin-env-gateway", ["serve", "--config", str(config)], log_dir, env=env, admin_fd=False)
    try:
        assert f"Admin listener on http://127.0.0.1:{port}: GET /metrics" in server.log()
        server.admin_port = port
        async with httpx.AsyncClient(timeout=30) as client:
            scrape = await client.get(f"{server.admin_url}/metrics")
        assert scrape.status_code == 200 and scrape.headers["content-type"].startswith(PROMETHEUS_TEXT)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "config, env, message",
    [
        ("admin:\n  port: 70000\n", {}, "admin.port: Input should be less than or equal to 65535"),
        ("admin:\n  port: -1\n", {}, "admin.port: Input should be greater than or equal to 0"),
        ("admin:\n  port: nine\n", {}, "admin.port: Input should be a valid integer"),
        ("admin:\n  host: 0.0.0.0\n", {}, "admin.host: Extra inputs are not permitted"),
        ("admin: 9901\n", {}, "admin: Input should be a valid dictionary"),
        ("port: 9000\nadmin:\n  port: 9000\n", {}, "admin.port 9000 is the public port too"),
        ("", {"GATEWAY_ADMIN__PORT": "http"}, "GATEWAY_ADMIN__PORT: admin.port: Input should be a valid integer"),
        ("", {"GATEWAY_ADMIN__PORT": "7777"}, "admin.port 7777 is the public port too"),
    ],
)
def test_a_bad_admin_port_is_a_config_error(tmp_path: Path, config: str, env: Dict[str, str], message: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(config or "port: 7777\n")
    result = _cli("check-config", str(path), env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--admin-port", "70000"], "argument --admin-port: 70000 is not a port number (0-65535)"),
        (["--admin-port", "x"], "argument --admin-port: 'x' is not a port number"),
        (["--port", "9100", "--admin-port", "9100"], "admin.port 9100 is the public port too"),
    ],
)
def test_a_bad_admin_port_option_fails_at_start(args: List[str], message: str) -> None:
    result = _cli("serve", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_a_taken_admin_port_fails_at_start_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _cli("serve", "--port", "0", "--admin-port", str(port))
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port} (the admin listener)" in result.stderr

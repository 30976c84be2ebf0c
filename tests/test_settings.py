"""Configuration: YAML plus GATEWAY_* env, the embedded default, and one clear line per bad field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway.local import LocalRegistry
from gateway.settings import DEMO_LOCAL, ConfigError, LocalEntities, load_settings
from gateway.wire.kinds import EntityKind
from tests.processes import start_server


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def no_gateway_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):  # pydantic-settings reads them in any case
            monkeypatch.delenv(name)


def test_no_file_serves_the_demo() -> None:
    settings = load_settings(None)
    assert settings.local == DEMO_LOCAL
    assert settings.port == 7777
    assert settings.max_body_bytes == 10 * 1024 * 1024


def test_file_values_and_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "port: 8080\nmax_body_bytes: 2048\nlocal:\n  agents: ['tests.fixtures.only_agent:agent']\n")
    settings = load_settings(path)
    assert (settings.port, settings.max_body_bytes) == (8080, 2048)
    assert settings.local.agents == ["tests.fixtures.only_agent:agent"]
    assert settings.local.teams == []  # a file serves only what it names
    monkeypatch.setenv("GATEWAY_PORT", "9090")
    monkeypatch.setenv("GATEWAY_LOCAL__AGENTS", '["gateway.demo.components:echo_agent"]')
    settings = load_settings(path)
    assert settings.port == 9090
    assert settings.local.agents == ["gateway.demo.components:echo_agent"]


def test_config_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_CONFIG", str(write(tmp_path, "port: 8181\n")))
    assert load_settings().port == 8181


@pytest.mark.parametrize(
    "text, named",
    [
        ("port: seventy\n", "port"),
        ("port: 70000\n", "port"),
        ("max_body_bytes: 0\n", "max_body_bytes"),
        ("prot: 1\n", "prot"),
        ("local:\n  agent: []\n", "local.agent"),
        ("local:\n  agents: 'not-a-list'\n", "local.agents"),
        ("storage:\n  mode: sharded\n", "storage.mode"),
        ("storage:\n  merge_max_items: 0\n", "storage.merge_max_items"),
    ],
)
def test_bad_field_is_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, text))
    lines = str(raised.value).splitlines()
    assert len(lines) == 1
    assert f": {named}: " in lines[0]


@pytest.mark.parametrize(
    "name, value, field",
    [
        ("GATEWAY_PORT", "seventy", "port"),
        ("gateway_port", "70000", "port"),  # read in any case: named as it is spelled
        ("GATEWAY_MAX_BODY_BYTES", "0", "max_body_bytes"),
        ("GATEWAY_LOCAL__AGENTS", "5", "local.agents"),
        ("GATEWAY_LOCAL__AGENTS", "[5]", "local.agents.0"),
        ("GATEWAY_LOCAL__AGENT", "[]", "local.agent"),
        ("GATEWAY_LOCAL", '{"agents": 5}', "local.agents"),
        ("GATEWAY_LOCAL__AGENTS", "not json", "local"),
        ("GATEWAY_LIMITS__CLIENT_BODY_TIMEOUT_S", "0", "limits.client_body_timeout_s"),
        ("GATEWAY_LIMITS__CLIENT_HEADER_TIMEOUT_S", "soon", "limits.client_header_timeout_s"),
        ("GATEWAY_STORAGE__MODE", "one", "storage.mode"),
    ],
)
def test_a_bad_env_value_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str
) -> None:
    path = write(tmp_path, "port: 8080\nmax_body_bytes: 2048\nlocal:\n  agents: []\n")  # all good
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    (line,) = str(raised.value).splitlines()
    assert line.startswith(f"{name}: {field}: "), line
    assert str(path) not in line


def test_each_line_names_its_own_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "port: seventy\nmax_body_bytes: 0\nlocal:\n  teams: 'x'\n")
    monkeypatch.setenv("GATEWAY_PORT", "9090")  # a good value over the file's bad one: no error
    monkeypatch.setenv("GATEWAY_MAX_BODY_BYTES", "-1")
    monkeypatch.setenv("GATEWAY_LOCAL__AGENTS", "5")
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    sources = {tuple(line.split(": ")[:2]) for line in str(raised.value).splitlines()}
    assert sources == {
        ("GATEWAY_LOCAL__AGENTS", "local.agents"),
        ("GATEWAY_MAX_BODY_BYTES", "max_body_bytes"),
        (str(path), "local.teams"),
    }


def test_every_bad_field_gets_its_own_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, "port: x\nmax_body_bytes: -1\n"))
    assert len(str(raised.value).splitlines()) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("port: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_unreadable_config(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    "agents, message",
    [
        (["no_colon_here"], "not a module:attribute"),
        (["tests.fixtures.absent_module:agent"], "cannot import module"),
        (["tests.fixtures.only_agent:missing"], "has no attribute"),
        (["tests.fixtures.only_agent:not_a_component"], "not an agno Agent"),
        (["tests.fixtures.only_agent:team"], "not an agno Agent"),
        (["tests.fixtures.only_agent:agent", "gateway.demo.components:echo_agent"], "already served"),
    ],
)
def test_bad_local_entity_is_named(agents: list, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        LocalRegistry.from_config(LocalEntities(agents=agents))
    assert "local.agents[" in str(raised.value)
    assert message in str(raised.value)


def test_registry_lists_in_agentos_shape() -> None:
    registry = LocalRegistry.from_config(DEMO_LOCAL)
    assert registry.ids(EntityKind.TEAM) == ["echo-team"]
    (team,) = registry.summaries(EntityKind.TEAM)
    assert team["id"] == "echo-team" and team["mode"] == "coordinate"
    assert team["model"] == {"id": "deterministic-v1", "provider": "Deterministic"}


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_serve_with_a_bad_config_fails_at_start_with_the_field(tmp_path: Path) -> None:
    result = _run_cli("serve", "--config", str(write(tmp_path, "port: seventy\n")))
    assert result.returncode == 2
    assert "port" in result.stderr and "configuration error" in result.stderr


def test_serve_with_a_bad_local_entity_fails_at_start(tmp_path: Path) -> None:
    result = _run_cli("serve", "--config", str(write(tmp_path, "local:\n  teams: ['nowhere:team']\n")))
    assert result.returncode == 2
    assert "local.teams[0]" in result.stderr


@pytest.mark.parametrize(
    "command, port, message",
    [
        ("serve", "70000", "70000 is not a port number (0-65535)"),
        ("serve", "-1", "-1 is not a port number"),
        ("serve", "http", "'http' is not a port number"),
        ("upstream --name x", "65536", "65536 is not a port number"),
        ("demo", "99999", "99999 is not a port number"),
    ],
)
def test_a_bad_port_option_fails_at_start_naming_it(command: str, port: str, message: str) -> None:
    result = _run_cli(*command.split(), "--port", port)
    assert result.returncode == 2, result.stderr
    assert f"argument --port: {message}" in result.stderr


async def test_a_configured_gateway_serves_what_the_file_says(tmp_path: Path, log_dir: Path) -> None:
    config = write(tmp_path, "max_body_bytes: 2048\nlocal:\n  agents: ['tests.fixtures.only_agent:agent']\n")
    server = start_server("configured-gateway", ["serve", "--config", str(config)], log_dir)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            answer = await client.post("/v1/agents/echo-agent/run", json={"input": "2 * 3"})
            assert answer.json()["content"] == "2 * 3 = 6 [instance=only-agent history=0]"
            assert (await client.post("/v1/teams/echo-team/run", json={"input": "x"})).status_code == 404
            too_big = await client.post("/v1/agents/echo-agent/run", json={"input": "x" * 3000})
            assert too_big.status_code == 413
            config_listing = (await client.get("/config")).json()
            assert [agent["id"] for agent in config_listing["agents"]] == ["echo-agent"]
            assert config_listing["teams"] == [] and config_listing["workflows"] == []
    finally:
        server.stop()


UPSTREAMS_YAML = """\
upstreams:
  - {name: os-a, url: "http://127.0.0.1:7001", weight: 2}
  - {name: os.b, url: "http://127.0.0.1:7002"}
timeouts: {run_s: 60}
affinity: {mode: bounded}
"""


def test_upstreams_and_their_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, UPSTREAMS_YAML)
    settings = load_settings(path)
    assert [(u.name, u.base_url, u.weight, u.api_key) for u in settings.upstreams] == [
        ("os-a", "http://127.0.0.1:7001", 2.0, None),
        ("os.b", "http://127.0.0.1:7002", 1.0, None),
    ]
    assert settings.timeouts.run_s == 60 and settings.timeouts.connect_s == 2.0  # named defaults stay
    assert settings.affinity.mode == "bounded" and settings.health.unhealthy_threshold == 3
    monkeypatch.setenv("GATEWAY_UPSTREAM_OS_A_API_KEY", "from-the-environment")
    monkeypatch.setenv("GATEWAY_UPSTREAM_OS_B_URL", "http://10.0.0.2:7777")
    monkeypatch.setenv("GATEWAY_UPSTREAM_OS_B_WEIGHT", "3")
    monkeypatch.setenv("GATEWAY_AFFINITY__MODE", "strict")
    settings = load_settings(path)
    assert settings.upstreams[0].api_key == "from-the-environment"
    assert "from-the-environment" not in repr(settings)  # never in logs or tracebacks
    assert (settings.upstreams[1].base_url, settings.upstreams[1].weight) == ("http://10.0.0.2:7777", 3.0)
    assert settings.affinity.mode == "strict"


@pytest.mark.parametrize(
    "text, env, expected",
    [
        (UPSTREAMS_YAML, {"GATEWAY_UPSTREAM_OS_A_WEIGHT": "heavy"}, "GATEWAY_UPSTREAM_OS_A_WEIGHT: upstreams.0.weight"),
        (UPSTREAMS_YAML, {"GATEWAY_UPSTREAM_OS_B_URL": "ftp://x"}, "GATEWAY_UPSTREAM_OS_B_URL: upstreams.1.url"),
        (UPSTREAMS_YAML.replace("weight: 2", "weight: -2"), {}, "gateway.yaml: upstreams.0.weight"),
        ("upstreams: [{name: a, url: 'http://x'}, {name: a, url: 'http://y'}]\n", {}, "upstream names must be unique: a"),
        ("upstreams: [{name: 'bad name', url: 'http://x'}]\n", {}, "upstreams.0.name"),
        ("on_conflict: maybe\n", {}, "on_conflict"),
        ("affinity: {mode: sticky}\n", {}, "affinity.mode"),
        ("health: {interval_s: 0}\n", {}, "health.interval_s"),
        ("timeouts: {run_s: -1}\n", {}, "timeouts.run_s"),
        ("retry: {max_attempts: 0}\n", {}, "retry.max_attempts"),
        ("outlier: {max_ejection_percent: 150}\n", {}, "outlier.max_ejection_percent"),
        ("admin_key: short\n", {}, "admin_key"),
    ],
)
def test_bad_upstream_settings_name_their_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: dict, expected: str
) -> None:
    path = write(tmp_path, text)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert expected in str(raised.value)

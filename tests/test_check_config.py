"""``agentos-gateway check-config``: bad fields named, the routing table from real upstreams, id
conflicts by ``on_conflict``, down upstreams shown as down, and api keys never printed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml

from tests.processes import Server

FILE_KEY = "file-secret-4f1c9a"
ENV_KEY = "env-secret-b83e27"


def run_check(path: Path, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    clean = {name: value for name, value in os.environ.items() if not name.upper().startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "AGNO_TELEMETRY": "false", **(env or {})},
    )


def write(tmp_path: Path, config: Any) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def upstream_entries(servers: List[Server]) -> List[Dict[str, Any]]:
    return [{"name": server.name, "url": server.url} for server in servers]


def closed_port() -> int:
    """A port nothing listens on: connections to it are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def table_row(stdout: str, entity_id: str) -> str:
    """The routing table's line for ``entity_id`` (after the ``routing:`` heading)."""
    table = stdout.split("\nrouting:\n", 1)[1]
    (row,) = [line for line in table.splitlines() if line.split()[:1] == [entity_id]]
    return row.split(None, 1)[1]


def test_a_good_config_shows_settings_upstreams_and_who_serves_each_id(tmp_path: Path, pool_upstreams: list) -> None:
    a, b = pool_upstreams
    entries = upstream_entries(pool_upstreams)
    entries[0].update(weight=3, api_key=FILE_KEY)
    path = write(tmp_path, {"upstreams": entries, "retry": {"max_attempts": 2}, "affinity": {"mode": "bounded"}})
    result = run_check(path, env={"GATEWAY_UPSTREAM_POOL_B_API_KEY": ENV_KEY})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"  {a.name}  url={a.url} weight=3 api_key=set  up\n" in out
    assert f"  {b.name}  url={b.url} weight=1 api_key=set  up\n" in out  # set from the environment
    assert FILE_KEY not in out + result.stderr and ENV_KEY not in out + result.stderr
    assert "retry: max_attempts=2 " in out and "affinity: mode=bounded load_factor=1.25 headers=true" in out
    assert "health: interval_s=5 timeout_s=2 " in out and "timeouts: connect_s=2 first_byte_s=30 " in out
    assert "outlier: consecutive_failures=5 " in out
    for entity_id in ("echo-agent", "echo-team", "echo-workflow"):
        assert table_row(out, entity_id) == f"{a.name}, {b.name}"


def test_every_bad_field_is_named_and_exits_2(tmp_path: Path) -> None:
    config = {
        "upstreams": [{"name": "os-a", "url": "http://127.0.0.1:1", "weight": -1}, {"name": "os-b"}],
        "surprise": True,
    }
    result = run_check(write(tmp_path, config))
    assert result.returncode == 2
    errors = result.stderr.split("configuration error:\n", 1)[1].splitlines()
    fields = sorted(line.split(": ")[1] for line in errors)
    assert fields == ["surprise", "upstreams.0.weight", "upstreams.1"], result.stderr
    assert "give exactly one of url and dns" in result.stderr
    assert result.stdout == ""  # nothing is probed or shown for a file that does not load


@pytest.mark.parametrize(
    "config, field, message",
    [
        (
            {"upstreams": [{"name": "os-a", "url": "http://127.0.0.1:1"}, {"name": "os-a", "url": "http://127.0.0.1:2"}]},
            "upstreams",
            "upstream names must be unique: os-a",
        ),
        ({"upstreams": [{"name": "os a", "url": "http://127.0.0.1:1"}]}, "upstreams.0.name", "should match pattern"),
        ({"on_conflict": "both"}, "on_conflict", "'error', 'local' or 'upstream'"),
        ({"local": {"agents": ["nowhere:agent"]}}, "local.agents[0]", "cannot import module"),
    ],
)
def test_a_bad_field_is_named(tmp_path: Path, config: Dict[str, Any], field: str, message: str) -> None:
    result = run_check(write(tmp_path, config))
    assert result.returncode == 2
    (line,) = result.stderr.split("configuration error:\n", 1)[1].splitlines()
    assert f"{field}: " in line and message in line, line


@pytest.mark.parametrize(
    "on_conflict, code, shown",
    [
        ("error", 2, "CONFLICT: local and pool-a, pool-b (on_conflict=error)"),
        ("local", 0, "local (wins over pool-a, pool-b: on_conflict=local)"),
        ("upstream", 0, "pool-a, pool-b (wins over local: on_conflict=upstream)"),
    ],
)
def test_an_id_served_locally_and_upstream(
    tmp_path: Path, pool_upstreams: list, on_conflict: str, code: int, shown: str
) -> None:
    config = {
        "upstreams": upstream_entries(pool_upstreams),
        "local": {"agents": ["gateway.demo.components:echo_agent"]},
        "on_conflict": on_conflict,
    }
    result = run_check(write(tmp_path, config))
    assert result.returncode == code, result.stderr
    assert table_row(result.stdout, "echo-agent") == shown
    assert table_row(result.stdout, "echo-team") == "pool-a, pool-b"  # no conflict there
    conflict = "agents 'echo-agent' is served locally and by upstream pool-a, pool-b"
    assert (conflict in result.stderr) is (on_conflict == "error")


def test_a_down_upstream_is_shown_down_and_is_no_error(tmp_path: Path, pool_upstreams: list) -> None:
    up = pool_upstreams[0]
    config = {"upstreams": [upstream_entries([up])[0], {"name": "gone", "url": f"http://127.0.0.1:{closed_port()}"}]}
    result = run_check(write(tmp_path, config))
    assert result.returncode == 0, result.stderr
    assert "  gone  url=" in result.stdout
    assert "down (GET /health failed): its entities are unknown" in result.stdout
    assert table_row(result.stdout, "echo-agent") == up.name

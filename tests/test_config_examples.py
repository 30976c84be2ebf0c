"""The example configurations in ``config/``: each loads and checks with ``agentos-gateway
check-config`` as it is (its upstreams' loopback ports may be down: shown as down, no error)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from gateway.settings import load_settings
from tests.processes import Server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(path.name for path in (ROOT / "config").glob("*.yaml") if not path.name.startswith("keys."))


def run_check(name: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """check-config on ``config/<name>`` from the repository's root (keys_file paths are relative
    to the working directory), without the caller's GATEWAY_* variables."""
    clean = {key: value for key, value in os.environ.items() if not key.upper().startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", f"config/{name}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**clean, "AGNO_TELEMETRY": "false", **(env or {})},
    )


def test_the_examples_are_there() -> None:
    assert EXAMPLES == [
        "admin-port.yaml", "cors-ui.yaml", "hybrid.yaml", "pool-own-dbs.yaml", "pool-shared-db.yaml", "scoped-keys.yaml"
    ]  # fmt: skip


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_checks_as_it_is(name: str) -> None:
    text = (ROOT / "config" / name).read_text()
    assert text.startswith("# "), "each example says when to use it, at the top"
    result = run_check(name)
    assert result.returncode == 0, result.stderr
    assert "\nrouting:\n" in result.stdout


def test_the_hybrid_example_serves_its_components_locally_next_to_real_upstreams(pool_upstreams: List[Server]) -> None:
    a, b = pool_upstreams  # real AgentOS servers with the demo components, in place of os-a and os-b
    env = {"GATEWAY_UPSTREAM_OS_A_URL": a.url, "GATEWAY_UPSTREAM_OS_B_URL": b.url}
    result = run_check("hybrid.yaml", env)
    assert result.returncode == 0, result.stderr
    assert f"  os-a  url={a.url} weight=1 api_key=none  up\n" in result.stdout
    assert "echo-agent  local (wins over os-a, os-b: on_conflict=local)" in result.stdout


def test_the_scoped_keys_example_reads_its_keys_from_the_keys_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(ROOT)
    assert "key:" not in (ROOT / "config" / "scoped-keys.yaml").read_text()  # no secret inline
    keys = {key.name: key for key in load_settings("config/scoped-keys.yaml").auth.keys}
    assert sorted(keys) == ["agent-runner", "batch-jobs", "internal", "session-viewer", "support-ui"]
    assert keys["session-viewer"].scopes == ["sessions:read", "memories:read", "agents:read", "teams:read", "config:read"]
    assert (keys["support-ui"].entities, keys["support-ui"].rate_per_s, keys["support-ui"].burst) == (["echo-agent"], 5, 10)
    assert keys["internal"].entities is None and keys["internal"].rate_per_s is None


def test_the_cors_example_adds_to_agentos_defaults() -> None:
    result = run_check("cors-ui.yaml")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("cors: ")]
    assert "http://localhost:3000" in line and "https://os.agno.com" in line
    assert line.endswith(" https://agent-ui.example.com")


def test_the_admin_port_example_moves_the_admin_listener() -> None:
    result = run_check("admin-port.yaml")
    assert result.returncode == 0, result.stderr
    assert "admin: port=9100 (GET /metrics for Prometheus, /admin)" in result.stdout
    moved = run_check("admin-port.yaml", {"GATEWAY_ADMIN__PORT": "9200"})  # the environment wins
    assert "admin: port=9200 " in moved.stdout, moved.stdout
    clash = run_check("admin-port.yaml", {"GATEWAY_ADMIN__PORT": "7777"})
    assert clash.returncode == 2 and "admin.port 7777 is the public port too" in clash.stderr

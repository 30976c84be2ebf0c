"""Real AgentOS upstreams and a real gateway in front of them, for the pool tests."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import httpx
import yaml

from tests.processes import Server, spawn_server, start_servers, stop_servers

# Fast probes, so state changes show within a second or two.
FAST_HEALTH = {"interval_s": 0.5, "timeout_s": 0.5, "jitter_percent": 0, "healthy_threshold": 2, "unhealthy_threshold": 2}

ADMIN_KEY = "test-admin-key-0123456789"

_INSTANCE = re.compile(r"\[instance=(?P<name>\S+) history=(?P<history>\d+)\]")


def start_upstreams(
    names: Sequence[str], log_dir: Path, *, db_dir: Optional[Path] = None, shared_db: Optional[Path] = None,
    doors: str = "none",
) -> List[Server]:
    """Upstreams with in-memory storage; each with its own SQLite file in ``db_dir``; or all with
    the one SQLite file ``shared_db`` (the deployment where every upstream sees every session).
    ``doors``: ``all`` (AG-UI, A2A, MCP besides the WebSocket) or ``stateless-mcp``. They start
    together: each spends a second or more importing agno before it answers."""
    spawned: List[Server] = []
    try:
        for name in names:
            args = ["upstream", "--name", name, "--doors", doors]
            if shared_db is not None:
                args += ["--db", f"sqlite:///{shared_db}"]
            elif db_dir is not None:
                args += ["--db", f"sqlite:///{db_dir / (name + '.db')}"]
            spawned.append(spawn_server(name, args, log_dir))
    except BaseException:
        stop_servers(spawned)
        raise
    return start_servers(spawned)


def gateway_config(
    upstreams: Sequence[Server], weights: Optional[Dict[str, float]] = None, **settings: Any
) -> Dict[str, Any]:
    config: Dict[str, Any] = {
        "upstreams": [
            {"name": server.name, "url": server.url, "weight": (weights or {}).get(server.name, 1)}
            for server in upstreams
        ],
        "health": FAST_HEALTH,
        "admin_key": ADMIN_KEY,
        # No load balancer watches /ready here: a stop need not wait for one (the drain delay's
        # own test sets it).
        "shutdown": {"drain_delay_s": 0},
    }
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def start_gateway(name: str, config: Dict[str, Any], log_dir: Path, env: Optional[Dict[str, str]] = None) -> Server:
    return spawn_gateway(name, config, log_dir, env=env).wait_ready()


def spawn_gateway(name: str, config: Dict[str, Any], log_dir: Path, env: Optional[Dict[str, str]] = None) -> Server:
    """``start_gateway`` without the wait (``start_servers`` waits for several together)."""
    path = log_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return spawn_server(name, ["serve", "--config", str(path)], log_dir, env=env)


def answered_by(content: str) -> Tuple[str, int]:
    """(instance, history) from an answer's ``[instance=NAME history=H]`` suffix."""
    match = _INSTANCE.search(content)
    assert match, f"no instance suffix in {content!r}"
    return match["name"], int(match["history"])


def wait_for_door(gateway: Server, door: str, names: Sequence[str], timeout_s: float = 30.0) -> None:
    """Until the gateway's probes have seen ``door`` on every upstream of ``names`` (MCP's comes
    from a second answer, ``/info``, which a busy upstream may not give on the first probe)."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    while True:
        states = httpx.get(f"{gateway.admin_url}/admin/upstreams", headers=headers, timeout=10).json()
        serving = {state["name"] for state in states if any(d["door"] == door for d in state["doors"])}
        if set(names) <= serving:
            return
        assert time.monotonic() < deadline, f"{gateway.name}: no {door} door on {sorted(set(names) - serving)} in {timeout_s:g} s"
        time.sleep(0.1)


async def upstream_states(gateway: Server) -> Dict[str, Dict[str, Any]]:
    """``GET /admin/upstreams`` of a gateway (its admin listener), by upstream name."""
    async with httpx.AsyncClient(base_url=gateway.admin_url, timeout=10) as client:
        response = await client.get("/admin/upstreams", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    response.raise_for_status()
    return {upstream["name"]: upstream for upstream in response.json()}

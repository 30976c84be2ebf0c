"""docker-compose.yml's stack as local processes: no Docker engine runs here, so its gateway and
upstream services are started from the compose file itself, with the same commands and environment,
service host names rewritten to loopback ports (``--fd`` sockets), and the ``postgres`` service
replaced by a private cluster of Debian's PostgreSQL (``deploy/tools.sh`` installs it). Only when
PostgreSQL cannot be had at all do the upstreams share one SQLite file instead; the test says which.

It proves the services work together as composed: a session's upstream is killed (-9) and the next
run of that session, on another upstream, continues its history from the shared database.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import httpx
import pytest
import yaml

from tests.pools import answered_by
from tests.processes import Server, start_server

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
UPSTREAMS = ("os-a", "os-b", "os-c")
PG_TIMEOUT_S = 60
COMPOSE_DB_HOST = "@postgres:5432/"  # the postgres service as the upstreams' --db URLs name it


def interpolate(value: Any) -> Any:
    """Compose's ``${NAME:-default}`` with the default: the stack as the file defines it."""
    if isinstance(value, str):
        return re.sub(r"\$\{\w+:-([^}]*)\}", lambda match: match.group(1), value)
    if isinstance(value, list):
        return [interpolate(item) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item) for key, item in value.items()}
    return value


def compose_services() -> Dict[str, Dict[str, Any]]:
    return interpolate(yaml.safe_load(COMPOSE.read_text())["services"])


# -- the postgres service: a private cluster of Debian's PostgreSQL -------------------------------------


@dataclass
class PrivateCluster:
    bin_dir: Path
    directory: Path
    port: int
    as_postgres: List[str]

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def run(self, tool: str, *args: str) -> None:
        command = [*self.as_postgres, str(self.bin_dir / tool), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=PG_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def start(self, user: str, password: str, database: str) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-k {self.directory} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.directory / "postgres.log"), "-o", options,
                 "-w", "-t", str(PG_TIMEOUT_S), "start")  # fmt: skip
        psql = ["-h", str(self.directory), "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"]
        self.run("psql", *psql, "-c", f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        self.run("psql", *psql, "-c", f"CREATE DATABASE {database} OWNER {user}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(PG_TIMEOUT_S), "stop")


def postgres_bin_dir() -> Optional[Path]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Database:
    kind: str  # "postgresql" or "sqlite"
    rewrite: Callable[[str], str]  # the compose --db URL -> the one this machine serves


@pytest.fixture(scope="session")
def compose_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """The ``postgres`` service's stand-in, the same role, password and database name as composed."""
    url = next(
        arg for name in UPSTREAMS for arg in compose_services()[name]["command"] if arg.startswith("postgresql")
    )
    match = re.fullmatch(r"postgresql\+psycopg://(\w+):([^@]+)@postgres:5432/(\w+)", url)
    assert match, f"unexpected database URL in docker-compose.yml: {url}"
    user, password, database = match.groups()

    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        shared = tmp_path_factory.mktemp("compose-db") / "sessions.db"
        message = (
            "compose stack: PostgreSQL is not installed (deploy/tools.sh installs it), so the upstreams "
            f"share one SQLite file instead: {shared}"
        )
        print(message)
        warnings.warn(message)
        yield Database("sqlite", lambda _url: f"sqlite:///{shared}")
        return

    # The cluster's files must belong to the user the server runs as: postgres when we are root.
    directory = Path(tempfile.mkdtemp(prefix="agentos-compose-pg-"))
    as_postgres: List[str] = []
    if os.geteuid() == 0:
        shutil.chown(directory, user="postgres", group="postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    cluster = PrivateCluster(bin_dir=bin_dir, directory=directory, port=free_port(), as_postgres=as_postgres)
    try:
        cluster.start(user, password, database)
        print(f"compose stack: PostgreSQL from {bin_dir} on 127.0.0.1:{cluster.port}")
        yield Database("postgresql", lambda url: url.replace(COMPOSE_DB_HOST, f"@127.0.0.1:{cluster.port}/"))
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


# -- the gateway and upstream services ----------------------------------------------------------------


@dataclass
class Stack:
    gateway: Server
    upstreams: Dict[str, Server]
    database: Database


def start_service(name: str, service: Dict[str, Any], log_dir: Path, rewrite: Callable[[List[str]], List[str]]) -> Server:
    """A compose service's command and environment, listening on an inherited loopback socket
    (``--fd`` wins over the command's ``--host``/``--port``: the container's 0.0.0.0:7777)."""
    environment = {key: str(value) for key, value in (service.get("environment") or {}).items()}
    return start_server(f"compose-{name}", rewrite(list(service["command"])), log_dir, env=environment)


def local_gateway_config(service: Dict[str, Any], upstreams: Dict[str, Server], into: Path) -> Path:
    """The file the gateway service mounts at its --config path, each upstream service's URL
    (http://os-a:7777) replaced by that upstream's local one."""
    command = service["command"]
    target = command[command.index("--config") + 1]
    (source,) = [v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == target]
    config = yaml.safe_load((ROOT / source).read_text())
    for entry in config["upstreams"]:
        host = httpx.URL(entry["url"]).host
        entry["url"] = upstreams[host].url
    path = into / "gateway.compose.local.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def compose_stack(compose_database: Database, log_dir: Path) -> Iterator[Stack]:
    services = compose_services()

    def upstream_command(command: List[str]) -> List[str]:
        index = command.index("--db") + 1
        return command[:index] + [compose_database.rewrite(command[index])] + command[index + 1 :]

    upstreams: Dict[str, Server] = {}
    try:
        with ThreadPoolExecutor(max_workers=len(UPSTREAMS)) as pool:
            futures = {
                name: pool.submit(start_service, name, services[name], log_dir, upstream_command) for name in UPSTREAMS
            }
            for name, future in futures.items():
                upstreams[name] = future.result()
        config = local_gateway_config(services["gateway"], upstreams, log_dir)

        def gateway_command(command: List[str]) -> List[str]:
            index = command.index("--config") + 1
            return command[:index] + [str(config)] + command[index + 1 :]

        gateway = start_service("gateway", services["gateway"], log_dir, gateway_command)
        try:
            yield Stack(gateway=gateway, upstreams=upstreams, database=compose_database)
        finally:
            gateway.stop()
    finally:
        for server in upstreams.values():
            server.stop()


def run(client: httpx.Client, session_id: str, text: str) -> httpx.Response:
    response = client.post("/v1/agents/echo-agent/run", json={"input": text, "session_id": session_id})
    assert response.status_code == 200, response.text
    return response


def test_a_session_continues_on_another_upstream_after_its_own_is_killed(compose_stack: Stack) -> None:
    print(f"compose stack: sessions in {compose_stack.database.kind}")
    with httpx.Client(base_url=compose_stack.gateway.url, timeout=30) as client:
        session_id = "compose-failover-1"
        first = run(client, session_id, "what is 6 * 7")
        home, history = answered_by(first.json()["content"])
        assert history == 0 and home in UPSTREAMS
        assert first.headers["x-agentos-gateway-upstream"] == home

        victim = compose_stack.upstreams[home].process
        victim.kill()  # kill -9: no goodbye, its socket closes with it
        victim.wait(timeout=10)

        second = run(client, session_id, "hello again")
        instance, history = answered_by(second.json()["content"])
        assert instance != home and instance in UPSTREAMS, second.json()["content"]
        assert history == 2, f"the session's history did not follow it to {instance}: {second.json()['content']}"
        assert second.headers["x-agentos-gateway-upstream"] == instance
        assert second.headers["x-agentos-gateway-affinity"] == "moved"

        third = run(client, session_id, "and once more")
        assert answered_by(third.json()["content"]) == (instance, 4)

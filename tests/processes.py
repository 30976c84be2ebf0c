"""Real gateway and AgentOS processes on loopback, for the tests.

Each server gets a listening socket bound here and inherited (``--fd``): the port is known before
the process starts and cannot be taken by anyone else. A connection made before the app is up
waits in the socket's backlog, so the first request is itself the readiness signal: no polling.
If the process dies, its socket closes and that request fails at once. A gateway (``serve``) also
gets its admin listener's socket so (``--admin-fd``): ``Server.admin_url`` serves ``GET /metrics``
(Prometheus) and ``/admin``.

Starting is two steps, ``spawn_server`` and ``Server.wait_ready``, so several servers can import
Python and agno at the same time (``start_servers``): each takes a second or more of CPU before it
answers. A test gateway stops without the 2 s drain delay (no load balancer watches its
``/ready``) unless its configuration or environment sets one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import httpx
import yaml

STARTUP_TIMEOUT_S = 60.0

# Every server the tests started, so the session can check at its end that none is left running.
STARTED: List["Server"] = []


@dataclass
class Server:
    name: str
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    args: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    admin_port: Optional[int] = None  # a gateway's admin listener (the Prometheus scrape, /admin)
    terminated: bool = field(default=False, init=False, repr=False)  # SIGTERM sent by stop/terminate

    @property
    def admin_url(self) -> str:
        assert self.admin_port is not None, f"{self.name} has no admin listener"
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self) -> "Server":
        """Blocks until the server answers ``GET /health`` (its first request: the socket's backlog
        holds it until the app is up); stops it and raises with its log if it does not."""
        try:
            httpx.get(f"{self.url}/health", timeout=STARTUP_TIMEOUT_S).raise_for_status()
        except Exception as error:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {error}\n--- log ---\n{self.log()}") from error
        return self

    def terminate(self) -> None:
        """SIGTERM, once (a second one would make uvicorn skip its graceful shutdown), without
        waiting: ``stop`` waits (``stop_servers`` ends several at once)."""
        if not self.terminated and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self) -> None:
        self.terminate()
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def restart(server: Server, log_dir: Path) -> Server:
    """The same server again, on the same ports (after it was stopped or killed)."""
    server.stop()
    return start_server(
        server.name, server.args, log_dir, env=server.env, port=server.port, admin_port=server.admin_port or 0
    )


def _listening_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


DRAIN_DELAY_ENV = "GATEWAY_SHUTDOWN__DRAIN_DELAY_S"


def _without_drain_delay(args: List[str], env: Dict[str, str]) -> Dict[str, str]:
    """``env`` for a gateway, with a drain delay of 0 unless ``env`` or its configuration file
    (``--config``, else ``GATEWAY_CONFIG``) sets one: the environment wins over the file, so the
    variable is only added where the file is silent."""
    if DRAIN_DELAY_ENV in env:
        return env
    path = args[args.index("--config") + 1] if "--config" in args else env.get("GATEWAY_CONFIG")
    if path:
        try:
            config = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            config = None  # the gateway will say what is wrong with it
        shutdown = config.get("shutdown") if isinstance(config, dict) else None
        if isinstance(shutdown, dict) and "drain_delay_s" in shutdown:
            return env
    return {**env, DRAIN_DELAY_ENV: "0"}


def start_server(
    name: str, args: List[str], log_dir: Path, env: Optional[Dict[str, str]] = None, port: int = 0, admin_port: int = 0,
    admin_fd: bool = True,
) -> Server:  # fmt: skip
    """``agentos-gateway <args> --fd N`` (and ``--admin-fd M`` for ``serve``, unless ``admin_fd``
    is false: the command line or the configuration then says where the admin listener binds),
    answering ``GET /health`` before this returns. A port 0 picks a free one; given ports restart
    a server where it was."""
    return spawn_server(name, args, log_dir, env=env, port=port, admin_port=admin_port, admin_fd=admin_fd).wait_ready()


def spawn_server(
    name: str, args: List[str], log_dir: Path, env: Optional[Dict[str, str]] = None, port: int = 0, admin_port: int = 0,
    admin_fd: bool = True,
) -> Server:  # fmt: skip
    """``start_server`` without the wait: the process runs and its sockets listen, but it may not
    answer yet (``Server.wait_ready``)."""
    sock = _listening_socket(port)
    port = sock.getsockname()[1]
    sockets = [sock]
    fd_args = ["--fd", str(sock.fileno())]
    if args[:1] == ["serve"] and admin_fd:
        admin = _listening_socket(admin_port)
        admin_port = admin.getsockname()[1]
        sockets.append(admin)
        fd_args += ["--admin-fd", str(admin.fileno())]
    log_path = log_dir / f"{name}.log"
    if log_path.exists():  # a restart: keep the earlier life's log
        log_path.rename(log_path.with_suffix(f".{int(time.time() * 1000)}.log"))
    given_env = env or {}
    process_env = _without_drain_delay(args, given_env) if args[:1] == ["serve"] else given_env
    full_env = {**os.environ, "AGNO_TELEMETRY": "false", **process_env}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *args, *fd_args],
            pass_fds=[s.fileno() for s in sockets],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    for s in sockets:
        s.close()  # the child holds the only copies now
    server = Server(
        name=name, url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path, args=args,
        env=env or {}, admin_port=admin_port if len(sockets) > 1 else None,
    )  # fmt: skip
    STARTED.append(server)
    return server


def start_servers(spawned: Sequence[Server]) -> List[Server]:
    """Waits for servers spawned together (their imports overlap). If one does not start, every
    one of them is stopped and the first failure raised."""
    try:
        with ThreadPoolExecutor(max_workers=max(1, len(spawned))) as pool:
            for future in [pool.submit(server.wait_ready) for server in spawned]:
                future.result()
    except BaseException:
        stop_servers(spawned)
        raise
    return list(spawned)


def stop_servers(servers: Sequence[Server]) -> None:
    """Stops servers together: SIGTERM to each, then the waits (each exits on its own time)."""
    for server in servers:
        server.terminate()
    for server in servers:
        server.stop()


# /proc/net/tcp states of a connection a server still holds: ESTABLISHED, CLOSE_WAIT.
_HELD_STATES = {"01", "08"}


def held_connections(port: int) -> int:
    """How many TCP connections to ``port`` on this machine the server side still holds open."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] in _HELD_STATES:
                count += 1
    return count


def left_running() -> List[Server]:
    """Servers started by the tests and still running: a fixture that forgot one. They are stopped."""
    running = [server for server in STARTED if server.process.poll() is None]
    for server in running:
        server.stop()
    return running

"""The demo's upstream processes: real AgentOS servers (``agentos-gateway upstream``) started and
stopped by the demo, so ``make demo`` shows a gateway balancing sessions over a pool.

Each upstream listens on a socket bound here and inherited (``--fd``): a port in use fails here,
naming it, before any process starts; a request made before the app is up waits in the backlog,
so the readiness check is one ``GET /health`` and a crashed child fails it at once.

No orphans: the children live in their own session (a terminal's Ctrl-C reaches the demo, which
stops the gateway first and then them), are stopped by ``UpstreamProcesses.stop`` (SIGTERM, a
wait with a timeout, then SIGKILL), and on Linux also die with the demo if it is killed outright.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import httpx

from gateway.balancing import rank

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
MAX_UPSTREAMS = len(string.ascii_lowercase)
_PR_SET_PDEATHSIG = 1


class DemoStartError(RuntimeError):
    """The demo's pool could not start; the message says which upstream and why."""


def doors_installed() -> bool:
    """Whether the ``doors`` extra is there (agno's AG-UI and A2A dependencies, fastmcp)."""
    import importlib.util

    return all(importlib.util.find_spec(module) is not None for module in ("ag_ui", "a2a", "fastmcp"))


def upstream_names(count: int) -> List[str]:
    """``os-a``, ``os-b``, ...: one per upstream."""
    if not 0 <= count <= MAX_UPSTREAMS:
        raise ValueError(f"between 0 and {MAX_UPSTREAMS} upstreams")
    return [f"os-{letter}" for letter in string.ascii_lowercase[:count]]


def upstream_ports(gateway_port: int, base_port: Optional[int], count: int) -> List[int]:
    """The ports after the gateway's (7777: 7778, 7779, ...), or from ``base_port``; 0 lets the
    system pick each one."""
    base = gateway_port + 1 if base_port is None else base_port
    return [0 if base == 0 else base + index for index in range(count)]


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening, inheritable socket; ``OSError`` when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024)
    sock.set_inheritable(True)
    return sock


def connect_host(host: str) -> str:
    """Where to reach a server bound to ``host``, as a URL's host."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def sessions_on_different_upstreams(names: Sequence[str], prefix: str = "demo-") -> List[Tuple[str, str]]:
    """Two (session id, upstream) pairs whose sessions hash to different upstreams (weight 1
    each, as the demo configures them), so the demo's lines always show two instances. With one
    upstream both go to it."""
    members = [(name, 1.0) for name in names]
    first = f"{prefix}1"
    home = rank(first, members)[0]
    for number in range(2, 1000):
        candidate = f"{prefix}{number}"
        other = rank(candidate, members)[0]
        if other != home:
            return [(first, home), (candidate, other)]
    return [(first, home), (f"{prefix}2", rank(f"{prefix}2", members)[0])]


@dataclass
class UpstreamProcess:
    name: str
    url: str
    process: subprocess.Popen

    def exit_description(self) -> str:
        code = self.process.poll()
        if code is None:
            return "is running"
        return f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"


class UpstreamProcesses:
    """The demo's upstream children; a context manager that always stops them."""

    def __init__(self) -> None:
        self.children: List[UpstreamProcess] = []

    def __enter__(self) -> "UpstreamProcesses":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, name: str, host: str, port: int) -> UpstreamProcess:
        """``agentos-gateway upstream --name NAME`` with in-memory sessions, on a socket bound
        here; with all its doors (AG-UI, A2A, MCP) when the ``doors`` extra is installed."""
        try:
            sock = listening_socket(host, port)
        except OSError as error:
            raise DemoStartError(f"upstream {name}: cannot listen on {host}:{port}: {error.strerror or error}") from None
        with sock:
            bound_port = sock.getsockname()[1]
            env = {**os.environ, "AGNO_TELEMETRY": "false"}
            env.setdefault("GATEWAY_LOG_LEVEL", "warning")  # three servers' access logs would drown the lines
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "upstream", "--name", name, "--fd", str(sock.fileno()),
                 "--doors", "all" if doors_installed() else "none"],
                pass_fds=[sock.fileno()],
                stdout=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        # The child holds the only copy of the socket now: if it dies, connections fail at once.
        child = UpstreamProcess(name=name, url=f"http://{connect_host(host)}:{bound_port}", process=process)
        self.children.append(child)
        return child

    def wait_until_up(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Every child answers ``GET /health`` within ``timeout_s``, else ``DemoStartError``."""
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                httpx.get(f"{child.url}/health", timeout=remaining).raise_for_status()
            except httpx.HTTPError as error:
                if child.process.poll() is not None:
                    reason = f"{child.exit_description()} before answering GET /health"
                else:
                    reason = f"did not answer GET /health in {timeout_s:g} s: {error}"
                raise DemoStartError(f"upstream {child.name} {reason}") from None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to every child, then wait for each; SIGKILL for those still there at the deadline."""
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(timeout=timeout_s)


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, be sent SIGTERM if the demo dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # best effort: stop() is the main guarantee

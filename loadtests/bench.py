"""``make bench``: the gateway measured against the same load sent direct to an upstream, through
nginx and through a raw ASGI + aiohttp floor (under uvicorn and under granian), in one run; one
table, the goals checked (PASS or MISS with the figure), JSON saved.

    python loadtests/bench.py [--quick] [--only GROUPS] [--targets TARGETS] [--measure-s S]
                              [--streams N] [--loadgen auto|wrk|python] [--out FILE]

What runs (all on 127.0.0.1, every process stopped by pid on exit, error and Ctrl-C):

* ``replay``: ``loadtests/replay_upstream.py``, a fast AgentOS stand-in answering from recorded
  AgentOS answers (JSON run, SSE run, /health, /config, cancel, /stats counters);
* ``real-os``: ``agentos-gateway upstream`` (a real AgentOS with the demo model), and
  ``gateway-real``, a gateway in front of it, for the "CPU per real run" figure;
* the proxies under test, each in front of ``replay``: ``nginx`` (Debian's nginx-light,
  ``proxy_buffering off``, upstream keepalive, one worker), ``floor`` (``loadtests/floor_proxy.py``
  under uvicorn, as the gateway runs), ``floor-granian`` (the same ASGI app under granian, one
  worker: information beside the floor the goals use) and ``gateway`` (``python -m gateway.cli
  serve`` with affinity, health probes and, when this checkout has them, metrics and auth:
  detected with ``check-config``);
* ``gateway-2w``: the same gateway with ``--workers 2``, started for the ``workers`` group only;
* the load: ``wrk`` (Debian's package) with a Lua script, else a Python (aiohttp) generator.

Proxies run on core 0, the load generator, this script's own clients and the upstreams on core 1
(``taskset -c``); ``gateway-2w`` on both cores (its second worker shares core 1 with the load).
Groups (``--only``), in the order they run: idle, json, sse, first-event, delay, abort, workers,
real. ``--streams N``: the most idle streams held open (default 5,000; the ladder is 100, 1,000, N).
docs/performance.md explains each measure and the goals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlencode

from open_files import hard_limit, raise_soft_limit, soft_limit_of

ROOT = Path(__file__).resolve().parents[1]
LOADTESTS = ROOT / "loadtests"
RESULTS = LOADTESTS / "results"

PROXY_CORE = 0
LOAD_CORE = 1
BENCH_KEY = "bench-key-0123456789abcdef012345"  # 32 characters, sent as Authorization: Bearer
assert len(BENCH_KEY) == 32

GROUPS = ("idle", "json", "sse", "first-event", "delay", "abort", "workers", "real")  # the order they run in
TARGETS = ("direct", "nginx", "floor", "floor-granian", "gateway")
PROXIES = ("nginx", "floor", "floor-granian", "gateway")
JSON_CONNECTIONS = (1, 16, 64)
SSE_CONNECTIONS = 16
SSE_EVENTS = 50
RUN_PATH = "/agents/echo-agent/runs"
JSON_FORM = {"message": "what is 6 * 7", "stream": "false", "session_id": "bench-s1", "user_id": "bench"}
SSE_FORM = {"message": "hello there", "stream": "true", "session_id": "bench-s1", "bench_events": str(SSE_EVENTS)}
STAMP = re.compile(rb'"bench_sent_ns":(\d+)')
CLK_TCK = os.sysconf("SC_CLK_TCK")
OPTIONAL_GATEWAY_SECTIONS = ("auth", "admin")
IDLE_LADDER = (100, 1000)  # below --streams: the rungs of idle streams held open
DEFAULT_STREAMS = 5000
OPEN_FILES_MARGIN = 512  # besides the held streams' sockets: listeners, pooled connections, logs, imports


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)


def loud(message: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\nbench: {message}\n{bar}\n", flush=True)


# -- processes ----------------------------------------------------------------------------------------


def pinned(core: Union[int, str]) -> List[str]:
    """``taskset -c core`` (a core, or a list such as "0,1"), when there are cores to pin to."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > max(PROXY_CORE, LOAD_CORE):
        return ["taskset", "-c", str(core)]
    return []


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log: Path
    url: str = ""
    port: int = 0

    def pids(self) -> List[int]:
        """The process and its descendants (nginx's workers)."""
        return process_tree(self.process.pid)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Every child this run started; ``stop_all`` ends them by pid (SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: List[Child] = []

    def start(
        self, name: str, argv: Sequence[str], *, core: Union[int, str, None], sock: Optional[socket.socket] = None,
        port: Optional[int] = None, env: Optional[Dict[str, str]] = None,
    ) -> Child:  # fmt: skip
        """``sock``: served with ``--fd`` (bound here: no port race); ``port``: with ``--port``."""
        log = self.log_dir / f"{name}.log"
        command = [*(pinned(core) if core is not None else []), *argv]
        if sock is not None:
            command += ["--fd", str(sock.fileno())]
        if port is not None:
            command += ["--port", str(port)]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env or child_env(),
                pass_fds=[sock.fileno()] if sock is not None else [],
                start_new_session=True,  # Ctrl-C reaches this script, which stops them in order
            )
        child = Child(name, process, log)
        if sock is not None:
            port = sock.getsockname()[1]
            sock.close()  # the child holds the only copy now
        if port is not None:
            child.port = port
            child.url = f"http://127.0.0.1:{port}"
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        process = child.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=5)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            try:
                self.stop(child)
            except Exception as error:  # noqa: BLE001 - keep stopping the others
                say(f"could not stop {child.name} (pid {child.process.pid}): {error}")


def child_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"AGNO_TELEMETRY": "false", "GATEWAY_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def leaves(pids: Sequence[int]) -> List[int]:
    """The processes of a tree that start none: the ones serving (nginx's and granian's workers)."""
    return [pid for pid in pids if len(process_tree(pid)) == 1]


def process_tree(pid: int) -> List[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            pids.extend(process_tree(int(child)))
    return pids


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes (all their threads), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy since boot (``/proc/stat``: user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds(procs: "Processes") -> float:
    """This script, its finished children (wrk, check-config) and the live ones (servers)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = sum(cpu_seconds(child.pids()) for child in procs.children)
    return own.ru_utime + own.ru_stime + done.ru_utime + done.ru_stime + live


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def wait_http(url: str, child: Child, timeout_s: float = 90.0) -> None:
    """Until ``url`` answers 200 (a server on an inherited socket answers as soon as it is up)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.process.returncode}):\n{child.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=max(1.0, deadline - time.monotonic())) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last = error
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not answer {url} in {timeout_s:g} s ({last}):\n{child.tail()}")


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        return json.loads(answer.read())


# -- tools from Debian --------------------------------------------------------------------------------


_apt_updated = False


def ensure_tool(binary: str, package: str, also: Sequence[str] = ()) -> Optional[str]:
    """The path of ``binary``, installing Debian's ``package`` when it is missing (as root)."""
    global _apt_updated

    def find() -> Optional[str]:
        return shutil.which(binary) or next((p for p in also if os.access(p, os.X_OK)), None)

    found = find()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        say(f"{binary} is missing and cannot be installed here (needs root and apt-get)")
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(2):
        say(f"installing Debian's {package} (apt-get install {package})")
        done = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        if done.returncode == 0 and find():
            return find()
        if attempt == 0 and not _apt_updated:
            say("apt-get install failed; running apt-get update once")
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _apt_updated = True
        else:
            say(f"could not install {package}: {done.stderr.strip()[-300:]}")
            break
    return None


# -- the servers --------------------------------------------------------------------------------------


NGINX_CONF = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr warn;
worker_rlimit_nofile {open_files};
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    upstream agentos {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://agentos;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def start_nginx(procs: Processes, nginx: str, upstream_port: int, tmp: Path) -> Child:
    directory = tmp / "nginx"
    directory.mkdir(exist_ok=True)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=directory, upstream_port=upstream_port, port=port, open_files=hard_limit()))
    child = procs.start(
        "nginx", [nginx, "-p", str(directory), "-e", "stderr", "-c", str(conf), "-g", "daemon off;"], core=PROXY_CORE
    )
    child.port = port
    child.url = f"http://127.0.0.1:{port}"
    return child


def start_floor_granian(procs: Processes, upstream_url: str) -> Child:
    """``loadtests/floor_proxy.py``'s app under granian: one worker, HTTP/1 only, no access log, no
    websockets; its backpressure (requests at once per worker) above any idle-stream count."""
    port = free_port()
    child = procs.start(
        "floor-granian",
        [
            sys.executable, "-m", "granian", "--interface", "asgi", "--workers", "1", "--host", "127.0.0.1",
            "--port", str(port), "--http", "1", "--no-ws", "--no-access-log", "--log-level", "warning",
            "--backlog", "4096", "--backpressure", "65536", "--working-dir", str(LOADTESTS),
            "--factory", "floor_proxy:app_from_env",
        ],
        core=PROXY_CORE, env=child_env(FLOOR_UPSTREAM=upstream_url),
    )  # fmt: skip
    child.port = port
    child.url = f"http://127.0.0.1:{port}"
    return child


def gateway_config(
    name: str, upstreams: Sequence[Tuple[str, str]], drop: Sequence[str] = (), streams: int = 1000
) -> Dict[str, Any]:
    """The gateway with its features on: affinity, health probes, outlier ejection and retries
    (defaults), client keys; metrics and the access log are always on. ``streams``: the most idle
    streams the bench holds open through it (its limits and pool sized above that)."""
    config: Dict[str, Any] = {
        "host": "127.0.0.1",
        "gateway_id": name,
        "upstreams": [{"name": upstream, "url": url} for upstream, url in upstreams],
        "health": {"interval_s": 2.0, "timeout_s": 1.0},
        "affinity": {"mode": "bounded"},
        # The held streams plus the other runs must not wait for a pooled connection or a slot.
        "max_connections_per_upstream": max(4096, streams + 1000),
        "limits": {"max_streams": max(1000, streams + 500), "max_concurrent_runs": max(1000, streams + 500)},
        "auth": {"keys": [{"name": "bench", "key": BENCH_KEY}]},
        "admin": {"port": 0},  # the admin listener on any free port: never the fixed default
    }
    for section in drop:
        config.pop(section, None)
    return config


def write_yaml(path: Path, config: Dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))


def supported_sections(path: Path, config: Dict[str, Any]) -> Tuple[List[str], Dict[str, str]]:
    """Which optional sections this checkout refuses (``check-config`` names them): dropped, with
    a warning, so the harness runs before and after those features land."""
    dropped: Dict[str, str] = {}
    config = dict(config)
    while True:
        write_yaml(path, config)
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "check-config", str(path)],
            cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode == 0:
            return list(dropped), dropped
        lines = (done.stderr + done.stdout).splitlines()
        progress = False
        for section in OPTIONAL_GATEWAY_SECTIONS:
            if section not in config:
                continue
            bad = [line for line in lines if re.search(rf"(^|[\s:]){section}(\.[\w.]+)?:\s", line)]
            if bad:
                dropped[section] = bad[0].strip()
                config.pop(section)
                progress = True
                loud(f"this checkout does not support the gateway's `{section}` settings: measured without them\n"
                     f"bench:   ({bad[0].strip()})")  # fmt: skip
        if not progress:
            raise RuntimeError(f"check-config refused the generated gateway config {path}:\n{done.stderr}{done.stdout}")


# The Python servers under test listen with --port, as a deployment would.


def start_gateway(
    procs: Processes, name: str, config: Dict[str, Any], tmp: Path, workers: int = 1, cores: Union[int, str] = PROXY_CORE
) -> Child:
    path = tmp / f"{name}.yaml"
    write_yaml(path, config)
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    return procs.start(name, argv, core=cores, port=free_port())


# -- load generators ----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    generator: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


WRK_LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Bearer {key}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%.1f,"p99_us":%.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


class Wrk:
    name = "wrk"

    def __init__(self, binary: str, tmp: Path) -> None:
        self.binary = binary
        self.tmp = tmp
        self.scripts: Dict[str, Path] = {}

    def _script(self, body: str) -> Path:
        if body not in self.scripts:
            path = self.tmp / f"wrk-{len(self.scripts)}.lua"
            path.write_text(WRK_LUA.format(body=json.dumps(body), key=BENCH_KEY))
            self.scripts[body] = path
        return self.scripts[body]

    def run(self, url: str, body: str, connections: int, seconds: float) -> LoadResult:
        command = [
            *pinned(LOAD_CORE), self.binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "-s", str(self._script(body)), url,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
        match = re.search(r"BENCH_RESULT (\{.*\})", done.stdout)
        if done.returncode != 0 or not match:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-500:]}{done.stderr[-500:]}")
        result = json.loads(match.group(1))
        errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
        return LoadResult(
            requests=result["requests"] - result["status"] - result["read"],
            seconds=result["duration_us"] / 1e6,
            errors=errors,
            p50_ms=result["p50_us"] / 1000,
            p99_ms=result["p99_us"] / 1000,
            generator="wrk",
        )


class PythonLoad:
    """A bounded aiohttp load generator, in this process (pinned to the load core)."""

    name = "python (aiohttp)"

    def run(self, url: str, body: str, connections: int, seconds: float) -> LoadResult:
        return asyncio.run(self._run(url, body.encode(), connections, seconds))

    async def _run(self, url: str, body: bytes, connections: int, seconds: float) -> LoadResult:
        import aiohttp

        headers = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Bearer {BENCH_KEY}"}
        latencies: List[float] = []
        errors = 0
        connector = aiohttp.TCPConnector(limit=connections)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            started = time.perf_counter()
            deadline = started + seconds

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < deadline:
                    sent = time.perf_counter()
                    try:
                        async with session.post(url, data=body, headers=headers) as answer:
                            await answer.read()
                            ok = answer.status == 200
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        ok = False
                    if ok:
                        latencies.append(time.perf_counter() - sent)
                    else:
                        errors += 1

            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.perf_counter() - started
        return LoadResult(
            requests=len(latencies),
            seconds=elapsed,
            errors=errors,
            p50_ms=percentile(latencies, 50) * 1000,
            p99_ms=percentile(latencies, 99) * 1000,
            generator="python",
        )


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


# -- a raw SSE client ---------------------------------------------------------------------------------


class SSEStream:
    """One streamed run over a raw connection: the request, the head, then frames with the time
    each was complete (``time.monotonic_ns()``: the clock the replay upstream stamps with)."""

    def __init__(self, host: str, port: int, form: Dict[str, str]) -> None:
        self.host, self.port = host, port
        body = urlencode(form).encode()
        self.request = (
            f"POST {RUN_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {BENCH_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.sent_ns = 0
        self.chunked = True
        self._pending = b""
        self._ended = False

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def send(self) -> None:
        assert self.writer is not None
        self.sent_ns = time.monotonic_ns()
        self.writer.write(self.request)

    async def head(self) -> int:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        self.chunked = b"transfer-encoding: chunked" in head.lower()
        return status

    async def _read(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        assert self.reader is not None
        if self._ended:
            return b""
        if not self.chunked:
            data = await self.reader.read(65536)
            self._ended = not data
            return data
        size = int((await self.reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await self.reader.readline()
            self._ended = True
            return b""
        data = await self.reader.readexactly(size + 2)
        return data[:-2]

    async def frame(self) -> Optional[Tuple[int, bytes]]:
        """(arrival ns, the frame's data line), skipping comments; None at the end of the body."""
        while True:
            end = self._pending.find(b"\n\n")
            if end >= 0:
                frame, self._pending = self._pending[:end], self._pending[end + 2 :]
                data = next((line for line in frame.split(b"\n") if line.startswith(b"data:")), None)
                if data is not None:
                    return self._arrived, data
                continue
            piece = await self._read()
            if not piece:
                return None
            self._arrived = time.monotonic_ns()
            self._pending += piece

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def open_stream(host: str, port: int, form: Dict[str, str]) -> Tuple[SSEStream, int]:
    """A stream whose first event arrived; (stream, ns from request sent to first event)."""
    stream = SSEStream(host, port, form)
    await stream.connect()
    await stream.send()
    status = await stream.head()
    if status != 200:
        stream.close()
        raise RuntimeError(f"stream answered {status}")
    first = await stream.frame()
    if first is None:
        stream.close()
        raise RuntimeError("stream ended before its first event")
    return stream, first[0] - stream.sent_ns


async def read_to_end(stream: SSEStream) -> int:
    frames = 0
    while await stream.frame() is not None:
        frames += 1
    return frames


# -- the measures -------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    child: Optional[Child]  # the proxy; None for direct
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def pids(self) -> List[int]:
        return self.child.pids() if self.child is not None else []


@dataclass
class Bench:
    options: argparse.Namespace
    load: Any
    replay: Child
    targets: Dict[str, Target]
    results: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    # The workers group: starts the gateway with --workers 2 and stops it (by pid) when done.
    start_two_workers: Optional[Callable[[], Child]] = None
    stop_child: Optional[Callable[[Child], None]] = None

    def record(self, target: str, key: str, value: Any) -> None:
        self.results.setdefault(target, {})[key] = value

    def measured_load(self, target: Target, form: Dict[str, str], connections: int, seconds: float) -> Dict[str, Any]:
        pids = target.pids()
        proxy_before, upstream_before = cpu_seconds(pids), cpu_seconds(self.replay.pids())
        result = self.load.run(target.url + RUN_PATH, urlencode(form), connections, seconds)
        proxy_cpu = cpu_seconds(pids) - proxy_before
        upstream_cpu = cpu_seconds(self.replay.pids()) - upstream_before
        requests = max(1, result.requests)
        return {
            "connections": connections,
            "requests": result.requests,
            "seconds": round(result.seconds, 3),
            "rps": round(result.rps, 1),
            "errors": result.errors,
            "p50_ms": round(result.p50_ms, 3),
            "p99_ms": round(result.p99_ms, 3),
            "proxy_cpu_s": round(proxy_cpu, 3) if pids else None,
            "proxy_cpu_us_per_request": round(proxy_cpu / requests * 1e6, 1) if pids else None,
            "upstream_cpu_us_per_request": round(upstream_cpu / requests * 1e6, 1),
        }

    # json ------------------------------------------------------------------------------------------

    def json_throughput(self) -> None:
        for target in self.targets.values():
            self.load.run(target.url + RUN_PATH, urlencode(JSON_FORM), 16, self.options.warmup_s)  # warm-up
            runs = {}
            for connections in JSON_CONNECTIONS:
                run = self.measured_load(target, JSON_FORM, connections, self.options.measure_s)
                runs[str(connections)] = run
                cpu = f", proxy {run['proxy_cpu_us_per_request']} us CPU/request" if target.child else ""
                say(f"json  {target.name:13} c={connections:<3} {run['rps']:>9.0f} req/s  "
                    f"p50 {run['p50_ms']:.2f} ms  p99 {run['p99_ms']:.2f} ms{cpu}  errors {run['errors']}")  # fmt: skip
            self.record(target.name, "json", runs)

    # sse -------------------------------------------------------------------------------------------

    def sse_throughput(self) -> None:
        for target in self.targets.values():
            self.load.run(target.url + RUN_PATH, urlencode(SSE_FORM), 4, self.options.warmup_s / 2)
            run = self.measured_load(target, SSE_FORM, SSE_CONNECTIONS, self.options.measure_s)
            events = run["requests"] * SSE_EVENTS
            run["events_per_s"] = round(run["rps"] * SSE_EVENTS, 1)
            run["proxy_cpu_us_per_event"] = round(run["proxy_cpu_s"] / max(1, events) * 1e6, 2) if target.child else None
            cpu = f", proxy {run['proxy_cpu_us_per_event']} us CPU/event" if target.child else ""
            say(f"sse   {target.name:13} c={SSE_CONNECTIONS:<3} {run['events_per_s']:>9.0f} events/s "
                f"({run['rps']:.0f} streams/s){cpu}  errors {run['errors']}")  # fmt: skip
            self.record(target.name, "sse", run)

    # first event -----------------------------------------------------------------------------------

    def first_event(self) -> None:
        form = {**SSE_FORM, "bench_events": "5"}
        for target in self.targets.values():
            samples = asyncio.run(self._first_events(target, form, self.options.first_event_n))
            result = {
                "streams": len(samples),
                "p50_ms": round(percentile(samples, 50) / 1e6, 3),
                "p99_ms": round(percentile(samples, 99) / 1e6, 3),
            }
            say(f"first {target.name:13} {result['streams']} streams: first event p50 {result['p50_ms']:.3f} ms, "
                f"p99 {result['p99_ms']:.3f} ms")  # fmt: skip
            self.record(target.name, "first_event", result)

    async def _first_events(self, target: Target, form: Dict[str, str], count: int) -> List[int]:
        samples = []
        for i in range(count + 5):
            stream, first_ns = await open_stream("127.0.0.1", target.port, form)
            await read_to_end(stream)
            stream.close()
            if i >= 5:  # the first few warm the proxy's upstream connection
                samples.append(first_ns)
        return samples

    # per-event delay -------------------------------------------------------------------------------

    def event_delay(self) -> None:
        events, interval_ms, concurrent = 50, 10, 10
        form = {**SSE_FORM, "bench_events": str(events), "bench_interval_ms": str(interval_ms)}
        for target in self.targets.values():
            delays: List[int] = []
            for _ in range(self.options.delay_rounds):
                delays += asyncio.run(self._delays(target, form, concurrent, interval_ms / 1000))
            result = {
                "events": len(delays),
                "interval_ms": interval_ms,
                "concurrent_streams": concurrent,
                "p50_ms": round(percentile(delays, 50) / 1e6, 3),
                "p99_ms": round(percentile(delays, 99) / 1e6, 3),
            }
            say(f"delay {target.name:13} {result['events']} events: p50 {result['p50_ms']:.3f} ms, "
                f"p99 {result['p99_ms']:.3f} ms")  # fmt: skip
            self.record(target.name, "event_delay", result)

    async def _delays(self, target: Target, form: Dict[str, str], concurrent: int, interval_s: float) -> List[int]:
        delays: List[int] = []

        async def one(index: int) -> None:
            await asyncio.sleep(index * interval_s / concurrent)  # staggered: events do not all coincide
            stream = SSEStream("127.0.0.1", target.port, form)
            await stream.connect()
            await stream.send()
            if await stream.head() != 200:
                raise RuntimeError("stream refused")
            while (frame := await stream.frame()) is not None:
                arrived, data = frame
                stamp = STAMP.search(data)
                if stamp:
                    delays.append(arrived - int(stamp.group(1)))
            stream.close()

        await asyncio.gather(*(one(i) for i in range(concurrent)))
        return delays

    # idle streams: memory, and the other runs' latency ---------------------------------------------

    def idle_streams(self) -> None:
        for target in self.targets.values():
            if target.child is None:
                continue
            result = asyncio.run(self._idle(target))
            self.record(target.name, "idle", result)

    async def _idle(self, target: Target) -> Dict[str, Any]:
        """A ladder from one baseline: streams are added on top of the ones already open (100, then
        900 more, then the rest up to --streams), the RSS read at each rung; KiB per stream at a rung
        is (RSS then - RSS before any) / streams open. Closing between rungs would let the next rung
        reuse what the allocator kept, and understate it (hence also this group runs first)."""
        result: Dict[str, Any] = {}
        pids = target.pids()
        loop = asyncio.get_running_loop()
        form = {**SSE_FORM, "bench_hold": "true"}
        # A few streams opened and closed first: what the first stream loads once (code paths,
        # pools) is not counted as the held streams' memory.
        warm, _, _ = await open_streams(target.port, form, 5)
        for stream in warm:
            stream.close()
        await asyncio.sleep(0.5)
        baseline_rss = rss_bytes(pids)
        held: List[SSEStream] = []
        failed = 0
        first_error = ""
        previous = (0, baseline_rss)
        try:
            for count in self.options.idle_counts:
                opening = time.monotonic()
                streams, missed, error = await open_streams(target.port, form, count - len(held))
                opened_s = time.monotonic() - opening
                held += streams
                failed += missed
                first_error = first_error or error
                await asyncio.sleep(1.0)
                held_rss = rss_bytes(pids)
                entry: Dict[str, Any] = {
                    "streams": len(held),
                    "failed": failed,
                    "rss_before_kib": baseline_rss // 1024,
                    "rss_held_kib": held_rss // 1024,
                    "kib_per_stream": round((held_rss - baseline_rss) / max(1, len(held)) / 1024, 2),
                    # The slope from the rung below: what each stream added there cost.
                    "kib_per_added_stream": round((held_rss - previous[1]) / max(1, len(held) - previous[0]) / 1024, 2),
                    "open_s": round(opened_s, 2),
                }
                if first_error:
                    entry["first_error"] = first_error
                previous = (len(held), held_rss)
                say(f"idle  {target.name:13} {len(held)} open streams: {entry['kib_per_stream']:.1f} KiB RSS each "
                    f"({baseline_rss // 1024} -> {held_rss // 1024} KiB; {entry['kib_per_added_stream']:.1f} KiB per "
                    f"stream added at this rung, opened in {opened_s:.1f} s)"
                    f"{f'; {failed} failed to open: {first_error}' if failed else ''}")  # fmt: skip
                result[str(count)] = entry
            # Other runs (a sequential client), with the most streams open and again with none.
            top = result[str(self.options.idle_counts[-1])]
            with_open = await loop.run_in_executor(None, self._other_runs, target)
        finally:
            for stream in held:
                stream.close()
        await asyncio.sleep(1.0)
        without = await loop.run_in_executor(None, self._other_runs, target)
        top["other_runs_p50_ms_none_open"] = without.p50_ms
        top["other_runs_p50_ms_with_open"] = with_open.p50_ms
        top["other_runs_p99_ms_none_open"] = without.p99_ms
        top["other_runs_p99_ms_with_open"] = with_open.p99_ms
        say(f"idle  {target.name:13} other runs p50: {without.p50_ms:.3f} ms with none open, "
            f"{with_open.p50_ms:.3f} ms with {len(held)} open")  # fmt: skip
        return result

    def _other_runs(self, target: Target) -> LoadResult:
        return self.load.run(target.url + RUN_PATH, urlencode(JSON_FORM), 1, self.options.measure_s)

    # aborts ----------------------------------------------------------------------------------------

    def aborts(self) -> None:
        count = self.options.aborts
        form = {**SSE_FORM, "bench_events": "500", "bench_interval_ms": "20"}  # 10 s: aborted mid-way
        for target in self.targets.values():
            before = get_json(self.replay.url + "/stats")
            opened = asyncio.run(self._abort(target, form, count))
            deadline = time.monotonic() + self.options.abort_wait_s
            while True:
                stats = get_json(self.replay.url + "/stats")
                cancelled = stats["cancelled_runs"] - before["cancelled_runs"]
                if cancelled >= opened or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            result = {
                "aborted": opened,
                "upstream_runs_cancelled": cancelled,
                "by_disconnect": stats["cancelled_by_disconnect"] - before["cancelled_by_disconnect"],
                "by_cancel_request": stats["cancelled_by_request"] - before["cancelled_by_request"],
                "still_streaming": stats["open_streams"],
            }
            say(f"abort {target.name:13} {opened} client aborts -> {cancelled} upstream runs cancelled "
                f"({result['by_disconnect']} by disconnect, {result['by_cancel_request']} by cancel request)")  # fmt: skip
            self.record(target.name, "aborts", result)

    async def _abort(self, target: Target, form: Dict[str, str], count: int) -> int:
        limit = asyncio.Semaphore(50)
        opened = 0

        async def one() -> None:
            nonlocal opened
            async with limit:
                stream, _ = await open_stream("127.0.0.1", target.port, form)
                await stream.frame()  # mid-way: a second event arrived
                opened += 1
                stream.close()

        outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            say(f"abort {target.name}: {len(failures)} streams failed to open ({failures[0]!r})")
        return opened

    # --workers 2 -----------------------------------------------------------------------------------

    def workers_scaling(self) -> None:
        """JSON req/s at 64 connections through the gateway with one worker (core 0, as everywhere
        else) and then with ``--workers 2`` (cores 0 and 1: the second worker shares core 1 with
        wrk and the replay upstream), back to back so both see the same machine."""
        one = self.targets.get("gateway")
        if one is None or self.start_two_workers is None or self.stop_child is None:
            say("workers: needs the gateway target; skipped")
            return
        child = self.start_two_workers()
        try:
            wait_http(child.url + "/health", child)
            # Each worker probes on its own: a few runs answered, then a warm-up spread over both.
            for _ in range(8):
                _wait_for_run(child.url, timeout_s=60)
            two = Target("gateway-2w", child, child.url)
            runs: Dict[str, Any] = {}
            for workers, target in (("1", one), ("2", two)):
                self.load.run(target.url + RUN_PATH, urlencode(JSON_FORM), 16, self.options.warmup_s)
                serving = leaves(target.pids())
                before = [cpu_seconds([pid]) for pid in serving]
                run = self.measured_load(target, JSON_FORM, 64, self.options.measure_s)
                # How the load spread over the workers (one accept queue shared by both).
                run["worker_cpu_s"] = [round(cpu_seconds([pid]) - b, 3) for pid, b in zip(serving, before)]
                runs[workers] = run
                say(f"workers gateway --workers {workers} c=64 {run['rps']:>9.0f} req/s  p50 {run['p50_ms']:.2f} ms  "
                    f"proxy {run['proxy_cpu_us_per_request']} us CPU/request  errors {run['errors']}")  # fmt: skip
        finally:
            self.stop_child(child)
        runs["scaling"] = round(runs["2"]["rps"] / runs["1"]["rps"], 3) if runs["1"]["rps"] else None
        self.record("gateway", "workers", runs)

    # a real upstream -------------------------------------------------------------------------------

    def real_upstream(self, gateway: Child, upstream: Child) -> None:
        form = {"message": "hello", "stream": "false"}
        url = gateway.url + RUN_PATH
        self.load.run(url, urlencode(form), 2, self.options.warmup_s)
        gateway_before, upstream_before = cpu_seconds(gateway.pids()), cpu_seconds(upstream.pids())
        result = self.load.run(url, urlencode(form), 4, self.options.measure_s)
        gateway_cpu = cpu_seconds(gateway.pids()) - gateway_before
        upstream_cpu = cpu_seconds(upstream.pids()) - upstream_before
        runs = max(1, result.requests)
        real = {
            "runs": result.requests,
            "runs_per_s": round(result.rps, 1),
            "errors": result.errors,
            "p50_ms": round(result.p50_ms, 3),
            "gateway_cpu_ms_per_run": round(gateway_cpu / runs * 1000, 3),
            "upstream_cpu_ms_per_run": round(upstream_cpu / runs * 1000, 3),
            "gateway_share_of_upstream": round(gateway_cpu / upstream_cpu, 4) if upstream_cpu else None,
        }
        say(f"real  gateway in front of a real AgentOS: {real['runs_per_s']:.0f} runs/s, gateway "
            f"{real['gateway_cpu_ms_per_run']:.3f} ms CPU/run, upstream {real['upstream_cpu_ms_per_run']:.3f} ms CPU/run")  # fmt: skip
        self.record("gateway", "real_upstream", real)


async def open_streams(port: int, form: Dict[str, str], count: int) -> Tuple[List[SSEStream], int, str]:
    """``count`` streams whose first event arrived, 64 opening at a time; (streams, failed, the first failure)."""
    limit = asyncio.Semaphore(64)
    streams: List[SSEStream] = []

    async def one() -> None:
        async with limit:
            stream, _ = await open_stream("127.0.0.1", port, form)
            streams.append(stream)

    outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    return streams, len(failures), repr(failures[0]) if failures else ""


# -- the table and the goals --------------------------------------------------------------------------


def _get(results: Dict[str, Any], target: str, *keys: str) -> Optional[float]:
    value: Any = results.get(target)
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, (int, float)) else None


def _fmt(value: Optional[float], digits: int = 1) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def table(results: Dict[str, Any], aborts: int) -> str:
    rows: List[Tuple[str, Callable[[str], Optional[float]], int]] = []
    for c in JSON_CONNECTIONS:
        rows.append((f"JSON req/s, {c} conn{'s' if c > 1 else ''}", lambda t, c=c: _get(results, t, "json", str(c), "rps"), 0))
    rows += [
        ("JSON p50 ms, 16 conns", lambda t: _get(results, t, "json", "16", "p50_ms"), 3),
        ("JSON p99 ms, 16 conns", lambda t: _get(results, t, "json", "16", "p99_ms"), 3),
        ("proxy CPU us/request, 16 conns", lambda t: _get(results, t, "json", "16", "proxy_cpu_us_per_request"), 1),
        ("proxy CPU us/request, 64 conns", lambda t: _get(results, t, "json", "64", "proxy_cpu_us_per_request"), 1),
        ("SSE events/s, 16 streams x 50", lambda t: _get(results, t, "sse", "events_per_s"), 0),
        ("proxy CPU us/SSE event", lambda t: _get(results, t, "sse", "proxy_cpu_us_per_event"), 2),
        ("first event p50 ms", lambda t: _get(results, t, "first_event", "p50_ms"), 3),
        ("first event p99 ms", lambda t: _get(results, t, "first_event", "p99_ms"), 3),
        ("per-event delay p50 ms", lambda t: _get(results, t, "event_delay", "p50_ms"), 3),
        ("per-event delay p99 ms", lambda t: _get(results, t, "event_delay", "p99_ms"), 3),
    ]
    counts = sorted({int(k) for t in results.values() for k in (t.get("idle") or {})})
    for count in counts:
        rows.append((f"RSS KiB per idle stream, {count:,} open", lambda t, n=count: _get(results, t, "idle", str(n), "kib_per_stream"), 2))
    if counts:
        top = str(max(counts))
        rows.append(("other runs p50 ms, none open", lambda t: _get(results, t, "idle", top, "other_runs_p50_ms_none_open"), 3))
        rows.append((f"other runs p50 ms, {int(top):,} open", lambda t: _get(results, t, "idle", top, "other_runs_p50_ms_with_open"), 3))
    rows.append((f"upstream runs cancelled / {aborts} aborts", lambda t: _get(results, t, "aborts", "upstream_runs_cancelled"), 0))
    names = [t for t in TARGETS if t in results]
    widths = {n: max(11, len(n) + 2) for n in names}
    header = f"{'measure':<38}" + "".join(f"{n:>{widths[n]}}" for n in names) + f"{'gw/direct':>11}{'gw/nginx':>10}{'gw/floor':>10}"
    lines = [header, "-" * len(header)]
    for label, getter, digits in rows:
        values = {n: getter(n) for n in names}
        if all(v is None for v in values.values()):
            continue
        gateway = values.get("gateway")
        line = f"{label:<38}" + "".join(f"{_fmt(values[n], digits):>{widths[n]}}" for n in names)
        line += f"{_ratio(gateway, values.get('direct')):>11}{_ratio(gateway, values.get('nginx')):>10}"
        line += f"{_ratio(gateway, values.get('floor')):>10}"
        lines.append(line)
    gateway = results.get("gateway") or {}
    workers = gateway.get("workers")
    if workers:
        one, two = workers["1"], workers["2"]
        lines.append("")
        lines.append(
            f"gateway --workers 2 (cores 0 and 1; its second worker shares core 1 with wrk and the upstream) vs 1 worker "
            f"(core 0), 64 conns: {two['rps']:,.0f} vs {one['rps']:,.0f} req/s ({_ratio(two['rps'], one['rps'])}); "
            f"CPU per request {two['proxy_cpu_us_per_request']:.0f} vs {one['proxy_cpu_us_per_request']:.0f} us"
            + _worker_split(two.get("worker_cpu_s") or [])
        )
    real = gateway.get("real_upstream")
    if real:
        lines.append("")
        lines.append(
            f"gateway in front of a real AgentOS (demo model, 4 conns): {real['runs_per_s']:.0f} runs/s; "
            f"CPU per run: gateway {real['gateway_cpu_ms_per_run']:.3f} ms, upstream {real['upstream_cpu_ms_per_run']:.3f} ms"
        )
    return "\n".join(lines)


def _worker_split(worker_cpu_s: Sequence[float]) -> str:
    """How the 2-worker run's CPU fell on its processes (the two workers share one accept queue)."""
    busy = sorted((cpu for cpu in worker_cpu_s if cpu > 0), reverse=True)
    total = sum(busy)
    return f"; the workers' CPU split {' / '.join(f'{cpu / total:.0%}' for cpu in busy)}" if len(busy) > 1 else ""


# The goals (the "Performance" issue); docs/performance.md says how each figure is measured.
CPU_PER_REQUEST_OVER_FLOOR = 1.5  # at 16 and at 64 connections
THROUGHPUT_OVER_NGINX = 0.30  # at 16 connections
CPU_PER_EVENT_OVER_FLOOR = 1.2
FIRST_EVENT_ADDED_MS = 0.5  # p50, over direct
RSS_KIB_PER_STREAM = 24.0  # at 1,000 open
RSS_AT = 1000
LINEAR_WITHIN = 0.20  # KiB per stream at the most streams open against at 1,000
OTHER_RUNS_OVER_NONE_OPEN = 1.2  # p50, with the most streams open


def goals(results: Dict[str, Any], idle_counts: Sequence[int]) -> List[Dict[str, Any]]:
    """Each goal PASS or MISS with its figure (n/a when a side was not measured), then the
    information rows (INFO): the --workers 2 scaling and the floor on granian."""
    checks: List[Dict[str, Any]] = []

    def check(goal: str, figure: Optional[float], ok: Optional[bool], shown: str) -> None:
        status = "n/a" if ok is None else ("PASS" if ok else "MISS")
        checks.append({"goal": goal, "status": status, "figure": figure, "shown": shown if ok is not None else "-"})

    def info(row: str, figure: Optional[float], shown: str) -> None:
        checks.append({"goal": row, "status": "n/a" if figure is None else "INFO", "figure": figure,
                       "shown": "-" if figure is None else shown})  # fmt: skip

    def over(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    for c in (16, 64):
        g_cpu = _get(results, "gateway", "json", str(c), "proxy_cpu_us_per_request")
        f_cpu = _get(results, "floor", "json", str(c), "proxy_cpu_us_per_request")
        ratio = over(g_cpu, f_cpu)
        check(f"gateway CPU per JSON request <= {CPU_PER_REQUEST_OVER_FLOOR} x the floor's, {c} conns", ratio,
              None if ratio is None else ratio <= CPU_PER_REQUEST_OVER_FLOOR,
              f"{ratio or 0:.2f}x ({g_cpu or 0:.0f} vs {f_cpu or 0:.0f} us)")  # fmt: skip

    g_rps, n_rps = _get(results, "gateway", "json", "16", "rps"), _get(results, "nginx", "json", "16", "rps")
    share = over(g_rps, n_rps)
    check(f"gateway JSON throughput >= {THROUGHPUT_OVER_NGINX:.2f} x nginx's, 16 conns", share,
          None if share is None else share >= THROUGHPUT_OVER_NGINX,
          f"{share or 0:.2f}x ({g_rps or 0:,.0f} vs {n_rps or 0:,.0f} req/s)")  # fmt: skip

    g_event, f_event = _get(results, "gateway", "sse", "proxy_cpu_us_per_event"), _get(results, "floor", "sse", "proxy_cpu_us_per_event")
    ratio = over(g_event, f_event)
    check(f"gateway CPU per SSE event <= {CPU_PER_EVENT_OVER_FLOOR} x the floor's", ratio,
          None if ratio is None else ratio <= CPU_PER_EVENT_OVER_FLOOR,
          f"{ratio or 0:.2f}x ({g_event or 0:.2f} vs {f_event or 0:.2f} us)")  # fmt: skip

    g_first, d_first = _get(results, "gateway", "first_event", "p50_ms"), _get(results, "direct", "first_event", "p50_ms")
    added = g_first - d_first if g_first is not None and d_first is not None else None
    check(f"first event added over direct <= {FIRST_EVENT_ADDED_MS} ms p50", added,
          None if added is None else added <= FIRST_EVENT_ADDED_MS,
          f"{added or 0:+.3f} ms ({g_first or 0:.3f} vs {d_first or 0:.3f} ms)")  # fmt: skip

    def failed(count: int) -> str:
        missed = _get(results, "gateway", "idle", str(count), "failed")
        return f"; {missed:.0f} streams failed to open" if missed else ""

    kib = _get(results, "gateway", "idle", str(RSS_AT), "kib_per_stream")
    check(f"gateway RSS per idle stream <= {RSS_KIB_PER_STREAM:g} KiB at {RSS_AT:,} open", kib,
          None if kib is None else kib <= RSS_KIB_PER_STREAM and not failed(RSS_AT),
          f"{kib or 0:.1f} KiB{failed(RSS_AT)}")  # fmt: skip

    top = max(idle_counts) if idle_counts else 0
    most = top if top > RSS_AT else DEFAULT_STREAMS  # named in the goal even when not measured
    k_top = _get(results, "gateway", "idle", str(top), "kib_per_stream") if top > RSS_AT else None
    slope = _get(results, "gateway", "idle", str(top), "kib_per_added_stream")
    change = (k_top - kib) / kib if k_top is not None and kib else None
    check(f"gateway memory linear: KiB per idle stream at {most:,} within {LINEAR_WITHIN:.0%} of at {RSS_AT:,}", change,
          None if change is None else abs(change) <= LINEAR_WITHIN and not failed(top),
          f"{k_top or 0:.1f} vs {kib or 0:.1f} KiB ({change or 0:+.0%}; {slope or 0:.1f} KiB per stream "
          f"from {RSS_AT:,} to {top:,}){failed(top)}")  # fmt: skip

    none_open = _get(results, "gateway", "idle", str(top), "other_runs_p50_ms_none_open")
    with_open = _get(results, "gateway", "idle", str(top), "other_runs_p50_ms_with_open")
    ratio = over(with_open, none_open)
    check(f"other runs' p50 with {top:,} streams open <= {OTHER_RUNS_OVER_NONE_OPEN} x with none", ratio,
          None if ratio is None else ratio <= OTHER_RUNS_OVER_NONE_OPEN and not failed(top),
          f"{ratio or 0:.2f}x ({with_open or 0:.3f} vs {none_open or 0:.3f} ms){failed(top)}")  # fmt: skip

    one, two = _get(results, "gateway", "workers", "1", "rps"), _get(results, "gateway", "workers", "2", "rps")
    scaling = over(two, one)
    info("gateway --workers 2 over 1 worker, JSON req/s at 64 conns", scaling,
         f"{scaling or 0:.2f}x ({two or 0:,.0f} vs {one or 0:,.0f} req/s; the second worker shares core 1 with the load)")

    for c in (16, 64):
        granian = _get(results, "floor-granian", "json", str(c), "proxy_cpu_us_per_request")
        uvicorn = _get(results, "floor", "json", str(c), "proxy_cpu_us_per_request")
        info(f"floor on granian: CPU per JSON request, {c} conns", granian,
             f"{granian or 0:.0f} us (floor on uvicorn {_fmt(uvicorn, 0)} us: {_ratio(granian, uvicorn)})")
    for count in sorted({c for c in (RSS_AT, top) if c}):
        granian = _get(results, "floor-granian", "idle", str(count), "kib_per_stream")
        uvicorn = _get(results, "floor", "idle", str(count), "kib_per_stream")
        info(f"floor on granian: RSS per idle stream at {count:,} open", granian,
             f"{granian or 0:.1f} KiB (floor on uvicorn {_fmt(uvicorn, 1)} KiB: {_ratio(granian, uvicorn)})")
    return checks


def goals_text(checks: List[Dict[str, Any]]) -> str:
    width = max(len(c["goal"]) for c in checks)
    return "\n".join(f"{c['status']:<5} {c['goal']:<{width}}  {c['shown']}" for c in checks)


# -- the run ------------------------------------------------------------------------------------------


def machine(loadavg_at_start: Sequence[str]) -> Dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": list(loadavg_at_start),
    }


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: short measures, 100 idle streams, 100 aborts")
    parser.add_argument("--streams", type=_streams, help=f"the most idle streams held open (default {DEFAULT_STREAMS:,}; "
                        f"--quick 100): the ladder is {', '.join(map(str, IDLE_LADDER))} below it, then N")  # fmt: skip
    parser.add_argument("--only", default=",".join(GROUPS), help=f"groups to run, of {','.join(GROUPS)}")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"targets, of {','.join(TARGETS)}")
    parser.add_argument("--measure-s", type=float, help="seconds per load measure (default 4; --quick 1.5)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="auto: wrk (installed from Debian when missing), else the Python generator")  # fmt: skip
    parser.add_argument("--out", help="the JSON result file (default loadtests/results/<timestamp>.json)")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install nginx-light or wrk")
    args = parser.parse_args(argv)
    args.groups = [g for g in args.only.split(",") if g]
    args.target_names = [t for t in args.targets.split(",") if t]
    for bad in [g for g in args.groups if g not in GROUPS] + [t for t in args.target_names if t not in TARGETS]:
        parser.error(f"unknown group or target: {bad}")
    args.measure_s = args.measure_s or (1.5 if args.quick else 4.0)
    args.warmup_s = 1.0 if args.quick else 1.5
    args.streams = args.streams or (IDLE_LADDER[0] if args.quick else DEFAULT_STREAMS)
    args.idle_counts = idle_ladder(args.streams)
    args.aborts = 100 if args.quick else 300
    args.abort_wait_s = 5.0
    args.first_event_n = 50 if args.quick else 200
    args.delay_rounds = 1 if args.quick else 2
    return args


def _streams(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of streams, not {text!r}") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"--streams must be between 1 and 100000, not {value}")
    return value


def idle_ladder(streams: int) -> Tuple[int, ...]:
    """The counts of idle streams open at each rung: the ladder's rungs below ``streams``, then it."""
    return (*(rung for rung in IDLE_LADDER if rung < streams), streams)


def raise_fd_limit() -> None:
    """This script's soft open-file limit to the hard one; the children it starts inherit it."""
    raise_soft_limit()


def check_open_files(bench_pid: int, replay: Child, proxies: Dict[str, Child], streams: int) -> str:
    """Each process's soft open-file limit against what ``streams`` held streams need (one socket
    each in this script's client and in the upstream, two in a proxy); raises when one is short."""
    needs: List[Tuple[str, List[int], int]] = [
        ("bench client", [bench_pid], streams + OPEN_FILES_MARGIN),
        ("replay", leaves(replay.pids()), streams + OPEN_FILES_MARGIN),
        *((name, leaves(child.pids()), 2 * streams + OPEN_FILES_MARGIN) for name, child in proxies.items()),
    ]
    seen, short = [], []
    for name, pids, needed in needs:
        limits = [limit for limit in map(soft_limit_of, pids) if limit is not None]
        if not limits:
            continue
        limit = min(limits)
        seen.append(f"{name} {limit:,} (needs {needed:,})")
        if limit < needed:
            short.append(f"{name} (pid {', '.join(map(str, pids))}): {limit:,}, needs {needed:,}")
    if short:
        raise RuntimeError(
            f"{streams:,} idle streams need more open files than these processes may have: {'; '.join(short)}. "
            "Raise the hard limit (ulimit -Hn) or lower --streams."
        )
    return "open-file limits: " + ", ".join(seen)


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Optional[List[str]] = None) -> int:
    options = parse_args(argv)
    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    raise_fd_limit()
    if pinned(LOAD_CORE):
        os.sched_setaffinity(0, {LOAD_CORE})  # this script's clients share the load core
    else:
        loud("fewer than 2 cores or no taskset: the proxies and the load share the CPU; figures are not comparable")
    groups, names = options.groups, options.target_names
    tmp = Path(tempfile.mkdtemp(prefix="agentos-bench-"))
    procs = Processes(tmp)
    say(f"logs and generated configs in {tmp}")

    load: Any = PythonLoad()
    if options.loadgen != "python":
        wrk = shutil.which("wrk") if options.no_install else ensure_tool("wrk", "wrk")
        if wrk:
            load = Wrk(wrk, tmp)
        elif options.loadgen == "wrk":
            say("wrk is not available")
            return 1
    if isinstance(load, PythonLoad):
        loud("LOAD FROM THE PYTHON GENERATOR (aiohttp), NOT wrk: throughput figures are bounded by the\n"
             "bench:   generator itself (one core, shared with the upstream) and are not comparable to wrk's")  # fmt: skip

    nginx_path = None
    if "nginx" in names:
        nginx_path = (shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)) \
            if options.no_install else ensure_tool("nginx", "nginx-light", also=("/usr/sbin/nginx",))  # fmt: skip
        if not nginx_path:
            loud("nginx is not available: measured without it (the goals against nginx are n/a)")
            names = [n for n in names if n != "nginx"]
    if "floor-granian" in names and importlib.util.find_spec("granian") is None:
        loud("granian is not installed (the `load` extra: make bench installs it): measured without floor-granian")
        names = [n for n in names if n != "floor-granian"]

    busy_at_start, own_at_start = machine_busy_seconds(), own_cpu_seconds(procs)
    foreign_cpu_s = 0.0
    bench: Optional[Bench] = None
    dropped: Dict[str, str] = {}
    drop: List[str] = []
    gateway_configured = False
    open_files = ""
    loadavg_at_start = Path("/proc/loadavg").read_text().split()[:3]
    try:
        replay = procs.start("replay", [sys.executable, str(LOADTESTS / "replay_upstream.py")], core=LOAD_CORE,
                             sock=listening_socket())  # fmt: skip
        real_os = None
        if "real" in groups:
            real_os = procs.start(
                "real-os", [sys.executable, "-m", "gateway.cli", "upstream", "--name", "real-os"], core=LOAD_CORE,
                port=free_port(),
            )  # fmt: skip
        wait_http(replay.url + "/health", replay)
        children: Dict[str, Child] = {}
        if "nginx" in names and nginx_path:
            children["nginx"] = start_nginx(procs, nginx_path, replay.port, tmp)
        if "floor" in names:
            children["floor"] = procs.start(
                "floor", [sys.executable, str(LOADTESTS / "floor_proxy.py"), "--upstream", replay.url], core=PROXY_CORE,
                port=free_port(),
            )  # fmt: skip
        if "floor-granian" in names:
            children["floor-granian"] = start_floor_granian(procs, replay.url)
        needs_gateway = "gateway" in names or "real" in groups
        if needs_gateway:
            config = gateway_config("bench-gateway", [("replay", replay.url)])
            drop, dropped = supported_sections(tmp / "check.yaml", config)
            gateway_configured = True
            if "gateway" in names:
                children["gateway"] = start_gateway(procs, "gateway", gateway_config("bench-gateway", [("replay", replay.url)], drop, options.streams), tmp)
        gateway_real = None
        if real_os is not None:
            wait_http(real_os.url + "/health", real_os)
            gateway_real = start_gateway(
                procs, "gateway-real", gateway_config("bench-gateway-real", [("real-os", real_os.url)], drop), tmp
            )
        for name, child in children.items():
            wait_http(child.url + "/health", child)
        if gateway_real is not None:
            wait_http(gateway_real.url + "/health", gateway_real)
        targets = {"direct": Target("direct", None, replay.url)} if "direct" in names else {}
        for name in TARGETS:
            if name in children:
                targets[name] = Target(name, children[name], children[name].url)
        # The gateway answers only once its first probe found the entity: wait for a real run.
        for target in targets.values():
            _wait_for_run(target.url)
        if gateway_real is not None:
            _wait_for_run(gateway_real.url, timeout_s=60)
        say(f"up: {', '.join(f'{n} {c.url} (pid {c.process.pid})' for n, c in [('replay', replay), *children.items()])}")
        say(f"load generator: {load.name}; proxies on core {PROXY_CORE}, load and upstreams on core {LOAD_CORE}")

        if "idle" in groups:
            open_files = check_open_files(os.getpid(), replay, {n: t.child for n, t in targets.items() if t.child}, options.streams)
            say(open_files)

        def start_two_workers() -> Child:
            config = gateway_config("bench-gateway-2w", [("replay", replay.url)], drop, options.streams)
            both_cores = f"{PROXY_CORE},{LOAD_CORE}"
            return start_gateway(procs, "gateway-2w", config, tmp, workers=2, cores=both_cores)

        bench = Bench(options, load, replay, targets, start_two_workers=start_two_workers, stop_child=procs.stop)
        # Idle streams first: a proxy that has served little has little freed memory its allocator
        # kept, which the held streams would reuse and so read as smaller than they are.
        steps: List[Tuple[str, Callable[[], None]]] = [
            ("idle", bench.idle_streams),
            ("json", bench.json_throughput),
            ("sse", bench.sse_throughput),
            ("first-event", bench.first_event),
            ("delay", bench.event_delay),
            ("abort", bench.aborts),
            ("workers", bench.workers_scaling),
        ]
        for group, step in steps:
            if group in groups:
                step()
        if gateway_real is not None and real_os is not None:
            bench.real_upstream(gateway_real, real_os)
    except KeyboardInterrupt:
        say("interrupted: stopping every process this run started")
        return 130
    except Exception as error:  # noqa: BLE001 - said, with where the logs are
        say(f"FAILED: {error!r}\nbench: the processes' logs are kept in {tmp}")
        raise
    finally:
        # CPU used meanwhile by processes this run did not start: the other work on the machine.
        foreign_cpu_s = max(0.0, (machine_busy_seconds() - busy_at_start) - (own_cpu_seconds(procs) - own_at_start))
        procs.stop_all()

    elapsed = time.monotonic() - started
    text = table(bench.results, options.aborts)
    checks = goals(bench.results, options.idle_counts if "idle" in groups else ())
    preface = [
        f"load: {load.name}, {options.measure_s:g} s per measure"
        + (f"; proxies pinned to core {PROXY_CORE}, load generator, clients and upstreams to core {LOAD_CORE}" if pinned(LOAD_CORE) else "; no pinning"),
    ]
    if gateway_configured:
        preface.append(
            "gateway features on: affinity (bounded), health probes, outlier ejection, retries"
            + "".join(f", {s}" for s in OPTIONAL_GATEWAY_SECTIONS if s not in dropped)
            + (f"; not in this checkout, so off: {', '.join(dropped)}" if dropped else "")
        )
    if open_files:
        preface.append(open_files)
    loadavg_at_end = Path("/proc/loadavg").read_text().split()[:3]
    preface.append(f"load average (1, 5, 15 min): {' '.join(loadavg_at_start)} at the start, {' '.join(loadavg_at_end)} at the end")
    foreign_share = foreign_cpu_s / (elapsed * (os.cpu_count() or 1))
    preface.append(
        f"other processes on this machine used {foreign_cpu_s:.0f} CPU-s during the run "
        f"({foreign_share * 100:.0f} % of {os.cpu_count()} cores): "
        + ("quiet" if foreign_share < 0.05 else "the figures, tails most of all, carry that noise")
    )
    text = "\n".join(preface) + "\n\n" + text
    print()
    print(text)
    print()
    print(goals_text(checks))
    print()
    out = Path(options.out) if options.out else RESULTS / f"{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "started_at": started_at.isoformat(),
                "duration_s": round(elapsed, 1),
                "command": " ".join(["loadtests/bench.py", *(argv if argv is not None else sys.argv[1:])]),
                "machine": machine(loadavg_at_start),
                "load_generator": load.name,
                "pinning": {"proxies": PROXY_CORE, "load_and_upstreams": LOAD_CORE} if pinned(LOAD_CORE) else None,
                "options": {
                    "quick": options.quick, "groups": groups, "targets": list(bench.targets),
                    "measure_s": options.measure_s, "streams": options.streams, "idle_counts": list(options.idle_counts),
                    "aborts": options.aborts,
                },  # fmt: skip
                "gateway_sections_dropped": dropped,
                "foreign_cpu_s": round(foreign_cpu_s, 1),
                "loadavg_at_end": loadavg_at_end,
                "results": bench.results,
                "goals": checks,
                "table": text,
            },
            indent=2,
        )
        + "\n"
    )
    say(f"{elapsed:.0f} s; results written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _wait_for_run(base_url: str, timeout_s: float = 20.0) -> None:
    """Until a JSON run answers 200 (a gateway answers 503 until its first probe)."""
    body = urlencode(JSON_FORM).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Bearer {BENCH_KEY}"}
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(base_url + RUN_PATH, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=10) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last = error
        time.sleep(0.2)
    raise RuntimeError(f"{base_url}{RUN_PATH} did not answer a run within {timeout_s:g} s: {last}")


if __name__ == "__main__":
    sys.exit(main())

"""``make bench``: the gateway measured against the same load sent direct to an upstream, through
nginx and through a raw ASGI + aiohttp floor, in one run; one table, the goals checked, JSON saved.

    python loadtests/bench.py [--quick] [--only GROUPS] [--targets TARGETS] [--measure-s S]
                              [--loadgen auto|wrk|python] [--out FILE]

What runs (all on 127.0.0.1, every process stopped by pid on exit, error and Ctrl-C):

* ``replay``: ``loadtests/replay_upstream.py``, a fast AgentOS stand-in answering from recorded
  AgentOS answers (JSON run, SSE run, /health, /config, cancel, /stats counters);
* ``real-os``: ``agentos-gateway upstream`` (a real AgentOS with the demo model), and
  ``gateway-real``, a gateway in front of it, for the "CPU per real run" figure;
* the proxies under test, each in front of ``replay``: ``nginx`` (Debian's nginx-light,
  ``proxy_buffering off``, upstream keepalive, one worker), ``floor`` (``loadtests/floor_proxy.py``)
  and ``gateway`` (``python -m gateway.cli serve`` with affinity, health probes and, when this
  checkout has them, metrics and auth: detected with ``check-config``);
* the load: ``wrk`` (Debian's package) with a Lua script, else a Python (aiohttp) generator.

Proxies run on core 0, the load generator, this script's own clients and the upstreams on core 1
(``taskset -c``). Groups (``--only``): json, sse, first-event, delay, idle, abort, real.
docs/performance.md explains each measure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
LOADTESTS = ROOT / "loadtests"
RESULTS = LOADTESTS / "results"

PROXY_CORE = 0
LOAD_CORE = 1
BENCH_KEY = "bench-key-0123456789abcdef012345"  # 32 characters, sent as Authorization: Bearer
assert len(BENCH_KEY) == 32

GROUPS = ("json", "sse", "first-event", "delay", "idle", "abort", "real")
TARGETS = ("direct", "nginx", "floor", "gateway")
PROXIES = ("nginx", "floor", "gateway")
JSON_CONNECTIONS = (1, 16, 64)
SSE_CONNECTIONS = 16
SSE_EVENTS = 50
RUN_PATH = "/agents/echo-agent/runs"
JSON_FORM = {"message": "what is 6 * 7", "stream": "false", "session_id": "bench-s1", "user_id": "bench"}
SSE_FORM = {"message": "hello there", "stream": "true", "session_id": "bench-s1", "bench_events": str(SSE_EVENTS)}
STAMP = re.compile(rb'"bench_sent_ns":(\d+)')
CLK_TCK = os.sysconf("SC_CLK_TCK")
OPTIONAL_GATEWAY_SECTIONS = ("auth", "admin")


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)


def loud(message: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\nbench: {message}\n{bar}\n", flush=True)


# -- processes ----------------------------------------------------------------------------------------


def pinned(core: int) -> List[str]:
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
        self, name: str, argv: Sequence[str], *, core: Optional[int], sock: Optional[socket.socket] = None,
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
worker_rlimit_nofile 65536;
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
    conf.write_text(NGINX_CONF.format(tmp=directory, upstream_port=upstream_port, port=port))
    child = procs.start(
        "nginx", [nginx, "-p", str(directory), "-e", "stderr", "-c", str(conf), "-g", "daemon off;"], core=PROXY_CORE
    )
    child.port = port
    child.url = f"http://127.0.0.1:{port}"
    return child


def gateway_config(name: str, upstreams: Sequence[Tuple[str, str]], drop: Sequence[str] = ()) -> Dict[str, Any]:
    """The gateway with its features on: affinity, health probes, outlier ejection and retries
    (defaults), client keys; metrics and the access log are always on."""
    config: Dict[str, Any] = {
        "host": "127.0.0.1",
        "gateway_id": name,
        "upstreams": [{"name": upstream, "url": url} for upstream, url in upstreams],
        "health": {"interval_s": 2.0, "timeout_s": 1.0},
        "affinity": {"mode": "bounded"},
        # 1,000 held streams plus the other runs must not wait for a pooled connection.
        "max_connections_per_upstream": 4096,
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


def start_gateway(procs: Processes, name: str, config: Dict[str, Any], tmp: Path) -> Child:
    path = tmp / f"{name}.yaml"
    write_yaml(path, config)
    return procs.start(
        name, [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)], core=PROXY_CORE, port=free_port()
    )


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
                say(f"json  {target.name:8} c={connections:<3} {run['rps']:>9.0f} req/s  "
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
            say(f"sse   {target.name:8} c={SSE_CONNECTIONS:<3} {run['events_per_s']:>9.0f} events/s "
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
            say(f"first {target.name:8} {result['streams']} streams: first event p50 {result['p50_ms']:.3f} ms, "
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
            say(f"delay {target.name:8} {result['events']} events: p50 {result['p50_ms']:.3f} ms, "
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
        result: Dict[str, Any] = {}
        pids = target.pids()
        loop = asyncio.get_running_loop()
        for count in self.options.idle_counts:
            await asyncio.sleep(0.5)
            baseline_rss = rss_bytes(pids)
            streams, failed = await open_streams(target.port, {**SSE_FORM, "bench_hold": "true"}, count)
            await asyncio.sleep(1.0)
            held_rss = rss_bytes(pids)
            per_stream = (held_rss - baseline_rss) / max(1, len(streams))
            entry: Dict[str, Any] = {
                "streams": len(streams),
                "failed": failed,
                "rss_before_kib": baseline_rss // 1024,
                "rss_held_kib": held_rss // 1024,
                "kib_per_stream": round(per_stream / 1024, 2),
            }
            say(f"idle  {target.name:8} {len(streams)} open streams: {entry['kib_per_stream']:.1f} KiB RSS each "
                f"({baseline_rss // 1024} -> {held_rss // 1024} KiB){f', {failed} failed' if failed else ''}")  # fmt: skip
            if count == max(self.options.idle_counts):
                # Other runs, with and without these streams open (a sequential client).
                with_open = await loop.run_in_executor(None, self._other_runs, target)
                for stream in streams:
                    stream.close()
                await asyncio.sleep(1.0)
                without = await loop.run_in_executor(None, self._other_runs, target)
                entry["other_runs_p50_ms_none_open"] = without.p50_ms
                entry["other_runs_p50_ms_with_open"] = with_open.p50_ms
                entry["other_runs_p99_ms_none_open"] = without.p99_ms
                entry["other_runs_p99_ms_with_open"] = with_open.p99_ms
                say(f"idle  {target.name:8} other runs p50: {without.p50_ms:.3f} ms with none open, "
                    f"{with_open.p50_ms:.3f} ms with {len(streams)} open")  # fmt: skip
            else:
                for stream in streams:
                    stream.close()
            result[str(count)] = entry
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
            say(f"abort {target.name:8} {opened} client aborts -> {cancelled} upstream runs cancelled "
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


async def open_streams(port: int, form: Dict[str, str], count: int) -> Tuple[List[SSEStream], int]:
    limit = asyncio.Semaphore(64)
    streams: List[SSEStream] = []

    async def one() -> None:
        async with limit:
            stream, _ = await open_stream("127.0.0.1", port, form)
            streams.append(stream)

    outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    failed = sum(1 for o in outcomes if isinstance(o, BaseException))
    return streams, failed


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


def table(results: Dict[str, Any], idle_max: int, aborts: int) -> str:
    rows: List[Tuple[str, str, Callable[[str], Optional[float]], int]] = []
    for c in JSON_CONNECTIONS:
        rows.append((f"JSON req/s, {c} conn{'s' if c > 1 else ''}", "", lambda t, c=c: _get(results, t, "json", str(c), "rps"), 0))
    rows += [
        ("JSON p50 ms, 16 conns", "", lambda t: _get(results, t, "json", "16", "p50_ms"), 3),
        ("JSON p99 ms, 16 conns", "", lambda t: _get(results, t, "json", "16", "p99_ms"), 3),
        ("proxy CPU us/request, 64 conns", "", lambda t: _get(results, t, "json", "64", "proxy_cpu_us_per_request"), 1),
        ("SSE events/s, 16 streams x 50", "", lambda t: _get(results, t, "sse", "events_per_s"), 0),
        ("proxy CPU us/SSE event", "", lambda t: _get(results, t, "sse", "proxy_cpu_us_per_event"), 2),
        ("first event p50 ms", "", lambda t: _get(results, t, "first_event", "p50_ms"), 3),
        ("first event p99 ms", "", lambda t: _get(results, t, "first_event", "p99_ms"), 3),
        ("per-event delay p50 ms", "", lambda t: _get(results, t, "event_delay", "p50_ms"), 3),
        ("per-event delay p99 ms", "", lambda t: _get(results, t, "event_delay", "p99_ms"), 3),
    ]
    counts = sorted({int(k) for t in results.values() for k in (t.get("idle") or {})})
    for count in counts:
        rows.append((f"RSS KiB per idle stream, {count}", "", lambda t, n=count: _get(results, t, "idle", str(n), "kib_per_stream"), 2))
    if counts:
        top = str(max(counts))
        rows.append(("other runs p50 ms, none open", "", lambda t: _get(results, t, "idle", top, "other_runs_p50_ms_none_open"), 3))
        rows.append((f"other runs p50 ms, {top} open", "", lambda t: _get(results, t, "idle", top, "other_runs_p50_ms_with_open"), 3))
    rows.append((f"upstream runs cancelled / {aborts} aborts", "", lambda t: _get(results, t, "aborts", "upstream_runs_cancelled"), 0))
    names = [t for t in TARGETS if t in results]
    header = f"{'measure':<38}" + "".join(f"{n:>11}" for n in names) + f"{'gw/direct':>11}{'gw/nginx':>10}{'gw/floor':>10}"
    lines = [header, "-" * len(header)]
    for label, _, getter, digits in rows:
        values = {n: getter(n) for n in names}
        if all(v is None for v in values.values()):
            continue
        gateway = values.get("gateway")
        line = f"{label:<38}" + "".join(f"{_fmt(values[n], digits):>11}" for n in names)
        line += f"{_ratio(gateway, values.get('direct')):>11}{_ratio(gateway, values.get('nginx')):>10}"
        line += f"{_ratio(gateway, values.get('floor')):>10}"
        lines.append(line)
    real = (results.get("gateway") or {}).get("real_upstream")
    if real:
        lines.append("")
        lines.append(
            f"gateway in front of a real AgentOS (demo model, 4 conns): {real['runs_per_s']:.0f} runs/s; "
            f"CPU per run: gateway {real['gateway_cpu_ms_per_run']:.3f} ms, upstream {real['upstream_cpu_ms_per_run']:.3f} ms"
        )
    return "\n".join(lines)


def goals(results: Dict[str, Any], idle_max: int, aborts: int) -> List[Dict[str, Any]]:
    checks: List[Dict[str, Any]] = []

    def check(goal: str, figure: Optional[float], ok: Optional[bool], shown: str) -> None:
        status = "n/a" if ok is None else ("PASS" if ok else "MISS")
        checks.append({"goal": goal, "status": status, "figure": figure, "shown": shown})

    g_rps, n_rps = _get(results, "gateway", "json", "64", "rps"), _get(results, "nginx", "json", "64", "rps")
    share = g_rps / n_rps if g_rps is not None and n_rps else None
    check("gateway JSON throughput >= 25 % of nginx's (64 conns)", share, None if share is None else share >= 0.25,
          "-" if share is None else f"{share * 100:.1f} % ({g_rps:,.0f} vs {n_rps:,.0f} req/s)")  # fmt: skip

    g_cpu = _get(results, "gateway", "json", "64", "proxy_cpu_us_per_request")
    f_cpu = _get(results, "floor", "json", "64", "proxy_cpu_us_per_request")
    ratio = g_cpu / f_cpu if g_cpu is not None and f_cpu else None
    check("gateway CPU/request <= 1.5 x the raw ASGI + aiohttp floor's", ratio, None if ratio is None else ratio <= 1.5,
          "-" if ratio is None else f"{ratio:.2f}x ({g_cpu:.0f} vs {f_cpu:.0f} us)")  # fmt: skip

    g_first, d_first = _get(results, "gateway", "first_event", "p50_ms"), _get(results, "direct", "first_event", "p50_ms")
    added = g_first - d_first if g_first is not None and d_first is not None else None
    check("first event added <= 1.5 ms p50 over direct", added, None if added is None else added <= 1.5,
          "-" if added is None else f"+{added:.3f} ms ({g_first:.3f} vs {d_first:.3f} ms)")  # fmt: skip

    g_delay, d_delay = _get(results, "gateway", "event_delay", "p99_ms"), _get(results, "direct", "event_delay", "p99_ms")
    added = g_delay - d_delay if g_delay is not None and d_delay is not None else None
    check("per-event forwarding delay <= 1 ms p99 (added over direct)", added, None if added is None else added <= 1.0,
          "-" if added is None else f"+{added:.3f} ms (p99 {g_delay:.3f} vs {d_delay:.3f} ms direct)")  # fmt: skip

    g_event, n_event = _get(results, "gateway", "sse", "proxy_cpu_us_per_event"), _get(results, "nginx", "sse", "proxy_cpu_us_per_event")
    ratio = g_event / n_event if g_event is not None and n_event else None
    check("CPU per SSE event <= 2.5 x nginx's", ratio, None if ratio is None else ratio <= 2.5,
          "-" if ratio is None else f"{ratio:.2f}x ({g_event:.2f} vs {n_event:.2f} us)")  # fmt: skip

    kib = _get(results, "gateway", "idle", str(idle_max), "kib_per_stream")
    check(f"<= 25 KiB RSS per idle stream at {idle_max:,}", kib, None if kib is None else kib <= 25,
          "-" if kib is None else f"{kib:.1f} KiB")  # fmt: skip

    none_open = _get(results, "gateway", "idle", str(idle_max), "other_runs_p50_ms_none_open")
    with_open = _get(results, "gateway", "idle", str(idle_max), "other_runs_p50_ms_with_open")
    ratio = with_open / none_open if with_open is not None and none_open else None
    check(f"other runs' p50 with {idle_max:,} streams open <= 1.2 x with none", ratio,
          None if ratio is None else ratio <= 1.2,
          "-" if ratio is None else f"{ratio:.2f}x ({with_open:.3f} vs {none_open:.3f} ms)")  # fmt: skip

    aborted = _get(results, "gateway", "aborts", "aborted")
    cancelled = _get(results, "gateway", "aborts", "upstream_runs_cancelled")
    ok = None if cancelled is None else (aborted == aborts and cancelled >= aborts)
    check(f"{aborts} aborts -> {aborts} upstream runs cancelled", cancelled, ok,
          "-" if cancelled is None else f"{cancelled:.0f} of {aborted:.0f}")  # fmt: skip

    share = _get(results, "gateway", "real_upstream", "gateway_share_of_upstream")
    check("gateway CPU per real run <= 10 % of the upstream's", share, None if share is None else share <= 0.10,
          "-" if share is None else f"{share * 100:.1f} %")  # fmt: skip
    return checks


def goals_text(checks: List[Dict[str, Any]]) -> str:
    width = max(len(c["goal"]) for c in checks)
    return "\n".join(f"{c['status']:<5} {c['goal']:<{width}}  {c['shown']}" for c in checks)


# -- the run ------------------------------------------------------------------------------------------


def machine() -> Dict[str, Any]:
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
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
    }


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: short measures, 100 idle streams, 100 aborts")
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
    args.idle_counts = (100,) if args.quick else (100, 1000)
    args.aborts = 100 if args.quick else 300
    args.abort_wait_s = 5.0
    args.first_event_n = 50 if args.quick else 200
    args.delay_rounds = 1 if args.quick else 2
    return args


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


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

    busy_at_start, own_at_start = machine_busy_seconds(), own_cpu_seconds(procs)
    foreign_cpu_s = 0.0
    bench: Optional[Bench] = None
    dropped: Dict[str, str] = {}
    drop: List[str] = []
    gateway_configured = False
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
        needs_gateway = "gateway" in names or "real" in groups
        if needs_gateway:
            config = gateway_config("bench-gateway", [("replay", replay.url)])
            drop, dropped = supported_sections(tmp / "check.yaml", config)
            gateway_configured = True
            if "gateway" in names:
                children["gateway"] = start_gateway(procs, "gateway", gateway_config("bench-gateway", [("replay", replay.url)], drop), tmp)
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

        bench = Bench(options, load, replay, targets)
        steps: List[Tuple[str, Callable[[], None]]] = [
            ("json", bench.json_throughput),
            ("sse", bench.sse_throughput),
            ("first-event", bench.first_event),
            ("delay", bench.event_delay),
            ("idle", bench.idle_streams),
            ("abort", bench.aborts),
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
    idle_max = max(options.idle_counts)
    text = table(bench.results, idle_max, options.aborts)
    checks = goals(bench.results, idle_max, options.aborts)
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
                "machine": machine(),
                "load_generator": load.name,
                "pinning": {"proxies": PROXY_CORE, "load_and_upstreams": LOAD_CORE} if pinned(LOAD_CORE) else None,
                "options": {
                    "quick": options.quick, "groups": groups, "targets": list(bench.targets),
                    "measure_s": options.measure_s, "idle_counts": list(options.idle_counts), "aborts": options.aborts,
                },  # fmt: skip
                "gateway_sections_dropped": dropped,
                "foreign_cpu_s": round(foreign_cpu_s, 1),
                "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
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

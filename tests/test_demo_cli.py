"""``agentos-gateway demo --upstreams N``: real upstream processes and a gateway in front of them;
the printed lines show two instances and a session's history; a signal stops all of them."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import httpx
import pytest

from gateway.cli import parser
from gateway.demo.upstreams import (
    DemoStartError,
    UpstreamProcess,
    UpstreamProcesses,
    sessions_on_different_upstreams,
    upstream_names,
    upstream_ports,
)
from gateway.api.forwarding import AFFINITY_HEADER, UPSTREAM_HEADER
from tests.pools import answered_by

READY_LINE = "Ctrl-C stops the gateway"
STARTUP_TIMEOUT_S = 90.0
EXIT_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0

_GATEWAY_URL = re.compile(r"agentos-gateway demo: (http://\S+) is a gateway")
_UPSTREAM_LINE = re.compile(r"^  (os-\w+)  (http://\S+)  \(pid (\d+)\)$", re.MULTILINE)
_CURL = re.compile(r"curl (-\S+) (http://\S+) -H '[^']*'\s+-d '([^']*)'")
_SCRAPE = re.compile(r"curl -s (http://\S+/metrics) \| grep (\w+)")


@dataclass
class Demo:
    process: subprocess.Popen
    log_path: Path
    lines: "queue.Queue[str]" = field(default_factory=queue.Queue)
    printed: List[str] = field(default_factory=list)

    def read_until(self, marker: str, timeout_s: float) -> str:
        """Everything printed up to the line containing ``marker``."""
        deadline = time.monotonic() + timeout_s
        while not any(marker in line for line in self.printed):
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {marker!r} line within {timeout_s:g} s\n{self.log()}") from None
            if line is None:
                raise AssertionError(f"the demo exited ({self.process.poll()}) before {marker!r}\n{self.log()}")
            self.printed.append(line)
        return "".join(self.printed)

    def log(self) -> str:
        return "--- stdout ---\n" + "".join(self.printed) + "--- stderr ---\n" + self.log_path.read_text(errors="replace")


def _pump(stream, lines: "queue.Queue") -> None:  # type: ignore[no-untyped-def]
    for line in stream:
        lines.put(line)
    lines.put(None)  # EOF: every writer (the demo and its children) is gone


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """``demo --upstreams 2`` on ports the system picks (no race with other tests)."""
    log_path = tmp_path / "demo.stderr"
    env = {name: value for name, value in os.environ.items() if not name.upper().startswith("GATEWAY_")}
    with open(log_path, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "demo", "--upstreams", "2", "--port", "0", "--upstream-base-port", "0",
             "--admin-port", "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**env, "AGNO_TELEMETRY": "false"},
        )
    running = Demo(process=process, log_path=log_path)
    threading.Thread(target=_pump, args=(process.stdout, running.lines), daemon=True).start()
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=EXIT_TIMEOUT_S)
        for _, _, pid in _upstreams("".join(running.printed)):  # children a failed test left behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _upstreams(printed: str) -> List[Tuple[str, str, int]]:
    return [(name, url, int(pid)) for name, url, pid in _UPSTREAM_LINE.findall(printed)]


def _curls(printed: str) -> List[Tuple[str, str, Dict]]:
    """(options, url, body) of every printed curl line with a body, in order."""
    joined = printed.replace("\\\n", " ")
    return [(options, url, json.loads(body)) for options, url, body in _CURL.findall(joined)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=5)
    except httpx.ConnectError:
        return True
    return False


def _stop(demo: Demo, signum: int) -> int:
    demo.process.send_signal(signum)
    try:
        return demo.process.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        late = f"the demo did not exit within {EXIT_TIMEOUT_S:g} s of signal {signum}"
        raise AssertionError(f"{late}\n{demo.log()}") from None


def _assert_upstreams_gone(upstreams: List[Tuple[str, str, int]]) -> None:
    for name, url, pid in upstreams:
        assert not _alive(pid), f"upstream {name} (pid {pid}) outlived the demo"
        assert _refused(url), f"upstream {name} still answers on {url}"


def test_the_printed_sessions_land_on_two_instances_and_ctrl_c_stops_everything(demo: Demo) -> None:
    printed = demo.read_until(READY_LINE, STARTUP_TIMEOUT_S)
    (gateway_url,) = _GATEWAY_URL.findall(printed)
    upstreams = _upstreams(printed)
    assert [name for name, _, _ in upstreams] == ["os-a", "os-b"]
    sessions = [(url, body) for options, url, body in _curls(printed) if "session_id" in body]
    ids = [body["session_id"] for _, body in sessions]
    assert len(ids) == 3 and ids[0] == ids[2] != ids[1], ids  # two sessions, then the first again

    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        client.get(f"{gateway_url}/health").raise_for_status()  # waits in the backlog until the app is up
        answers = [client.post(url, json=body) for url, body in sessions]
        for answer in answers:
            assert answer.status_code == 200, answer.text
            instance, _ = answered_by(answer.json()["content"])
            assert answer.headers[UPSTREAM_HEADER] == instance
            assert answer.headers[AFFINITY_HEADER] == "hit"
        first, second, again = (answered_by(answer.json()["content"]) for answer in answers)
        assert first[0] != second[0], "the two printed sessions were answered by the same instance"
        assert {first[0], second[0]} <= {"os-a", "os-b"}
        assert again == (first[0], 2)  # the same upstream, with the first exchange as history

        (stream_url, stream_body), = [(url, body) for options, url, body in _curls(printed) if body.get("stream")]
        with client.stream("POST", stream_url, json=stream_body) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            frames = stream.read().decode()
        assert "event: RunCompleted" in frames

        (scrape_url, metric), = _SCRAPE.findall(printed)  # the admin listener's Prometheus scrape
        assert scrape_url != f"{gateway_url}/metrics"
        scrape = client.get(scrape_url)
        assert scrape.status_code == 200 and f'{metric}{{upstream="os-a"}} 1.0' in scrape.text, scrape.text[:500]

    assert _stop(demo, signal.SIGINT) == 0  # uvicorn's graceful Ctrl-C, then the upstreams stopped
    _assert_upstreams_gone(upstreams)


def test_sigterm_stops_the_upstreams_too(demo: Demo) -> None:
    upstreams = _upstreams(demo.read_until(READY_LINE, STARTUP_TIMEOUT_S))
    for _, url, _ in upstreams:
        httpx.get(f"{url}/health", timeout=REQUEST_TIMEOUT_S).raise_for_status()
    assert _stop(demo, signal.SIGTERM) == 128 + signal.SIGTERM
    _assert_upstreams_gone(upstreams)


def test_a_taken_upstream_port_fails_clearly(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "demo", "--port", "0", "--upstream-base-port", str(port), "--admin-port", "0"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "AGNO_TELEMETRY": "false"},
        )
    assert result.returncode == 1
    assert f"upstream os-a: cannot listen on 127.0.0.1:{port}" in result.stderr


def test_an_upstream_that_dies_at_start_is_named_with_its_exit_code() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # closed below: connections are refused
    with UpstreamProcesses() as children:
        process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        process.wait(timeout=EXIT_TIMEOUT_S)
        children.children.append(UpstreamProcess(name="os-a", url=url, process=process))
        with pytest.raises(DemoStartError, match="upstream os-a exited with code 3 before answering GET /health"):
            children.wait_until_up(timeout_s=5)


def test_ports_names_and_sessions() -> None:
    assert upstream_ports(7777, None, 2) == [7778, 7779]
    assert upstream_ports(7777, 9000, 3) == [9000, 9001, 9002]
    assert upstream_ports(7777, 0, 2) == [0, 0]
    assert upstream_names(3) == ["os-a", "os-b", "os-c"]
    for count in (2, 3, 5):
        (_, home), (_, other) = sessions_on_different_upstreams(upstream_names(count))
        assert home != other
    assert parser().parse_args(["demo"]).upstreams == 2  # what `make demo` runs
    with pytest.raises(SystemExit):
        parser().parse_args(["demo", "--upstreams", "27"])

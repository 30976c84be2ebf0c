"""Reading a client's request, against real gateway processes: a body that ends early is never
forwarded (a client still there is answered 400 as JSON), and a client too slow to send its head
or its body is answered 408 and its connection closed (nginx's client_header_timeout and
client_body_timeout). The upstream is a fake that records every run request it receives.

Run with ``-s`` to see the measured cut-off times (last byte sent to the connection's end).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from typing import AsyncIterator, Dict, Iterator, List, Tuple

import httpx
import pytest

from tests.fake_upstream import FaultyUpstream
from tests.helpers import eventually
from tests.pools import FAST_HEALTH, start_gateway
from tests.processes import Server, start_server

HEADER_TIMEOUT_S = 1
BODY_TIMEOUT_S = 2
LIMITS = {"client_header_timeout_s": HEADER_TIMEOUT_S, "client_body_timeout_s": BODY_TIMEOUT_S}
EOF_WAIT_S = 10.0  # every read of an answer ends by then, or the test fails

BOUNDARY = "b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def _multipart(fields: Dict[str, str]) -> bytes:
    disposition = "Content-Disposition: form-data; name="
    parts = [f'--{BOUNDARY}\r\n{disposition}"{name}"\r\n\r\n{value}\r\n' for name, value in fields.items()]
    return ("".join(parts) + f"--{BOUNDARY}--\r\n").encode()


# (path, content type, a whole body): the fast run path takes the first two, the routes the third.
RUNS: Dict[str, Tuple[str, str, bytes]] = {
    "form (fast path)": ("/agents/echo-agent/runs", "application/x-www-form-urlencoded", b"message=hello&stream=false"),
    "json (fast path)": ("/v1/agents/echo-agent/run", "application/json", b'{"input": "hello"}'),
    "multipart (routes)": ("/agents/echo-agent/runs", MULTIPART, _multipart({"message": "hello", "stream": "false"})),
}


@pytest.fixture(scope="module")
async def counting(log_dir) -> AsyncIterator[Tuple[Server, FaultyUpstream]]:
    """A gateway with 1 s / 2 s client timeouts (from its YAML) in front of a fake upstream."""
    upstream = FaultyUpstream()
    await upstream.start()
    config = {"upstreams": [{"name": "counting", "url": upstream.url}], "health": FAST_HEALTH, "limits": LIMITS}
    gateway = await asyncio.to_thread(start_gateway, "reads-gateway", config, log_dir)
    yield gateway, upstream
    gateway.stop()
    await upstream.close()


@pytest.fixture(scope="module")
def local_gateway(log_dir) -> Iterator[Server]:
    """A gateway running the demo components itself (FastAPI's routes read every body), its
    timeouts set by environment."""
    env = {f"GATEWAY_LIMITS__{name.upper()}": str(value) for name, value in LIMITS.items()}
    server = start_server("reads-local-gateway", ["serve"], log_dir, env=env)
    yield server
    server.stop()


def _exchange(port: int, pieces: List[bytes], *, gap_s: float = 0.0, leave: bool = False) -> Tuple[bytes, float]:
    """``pieces`` sent ``gap_s`` apart, then everything read until the gateway closes the
    connection: (the bytes, seconds from the last byte sent to the close). ``leave``: the client
    closes its end right after sending, reading nothing."""
    with socket.create_connection(("127.0.0.1", port), timeout=EOF_WAIT_S) as sock:
        for index, piece in enumerate(pieces):
            if index:
                time.sleep(gap_s)  # the client's pace: what is tested, not a wait for the gateway
            sock.sendall(piece)
        sent = time.monotonic()
        if leave:
            return b"", 0.0
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks), time.monotonic() - sent


def _answer(raw: bytes) -> Tuple[int, Dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ", 2)[1]), headers, body


def _assert_json_error(raw: bytes, status: int) -> None:
    code, headers, body = _answer(raw)
    assert code == status, raw[:400]
    assert headers["content-type"] == "application/json" and headers["connection"] == "close", headers
    assert isinstance(json.loads(body)["detail"], str)


def _head(path: str, content_type: str, request_id: str, framing: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: {content_type}\r\n"
        f"X-Request-Id: {request_id}\r\nConnection: close\r\n{framing}\r\n\r\n"
    ).encode()


def _early_end(framing: str, path: str, content_type: str, body: bytes, request_id: str) -> bytes:
    """A request whose body ends before it should, as ``framing`` says."""
    if framing == "short":  # more declared than sent, then the client leaves
        return _head(path, content_type, request_id, f"Content-Length: {len(body) + 50}") + body
    chunk = b"%x\r\n%s\r\n" % (len(body), body)
    if framing == "bad chunk size":  # a whole first chunk, then a size that is no number
        return _head(path, content_type, request_id, "Transfer-Encoding: chunked") + chunk + b"zz\r\n0\r\n\r\n"
    return _head(path, content_type, request_id, "Transfer-Encoding: xchunked") + chunk + b"0\r\n\r\n"


async def _assert_nothing_forwarded(gateway: Server, upstream: FaultyUpstream, runs_before: int, request_id: str) -> None:
    """The request with ``request_id`` is over (its access log line is written, after anything it
    would have forwarded); a whole run sent after it reaches the upstream, and it alone."""
    line = f'"request_id":"{request_id}"'
    await eventually(lambda: line in gateway.log(), what=f"the access log line of {request_id}")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        control = await client.post("/v1/agents/echo-agent/run", json={"input": "fine control"})
    assert control.status_code == 200, control.text
    assert upstream.paths[runs_before:] == ["/agents/echo-agent/runs"]  # the control run's, alone


@pytest.mark.parametrize("framing", ["short", "bad chunk size", "xchunked"])
@pytest.mark.parametrize("run", list(RUNS))
async def test_a_body_that_ends_early_is_never_forwarded(counting, run: str, framing: str) -> None:
    gateway, upstream = counting
    runs_before = len(upstream.paths)
    request_id = f"early-{uuid.uuid4().hex}"
    request = _early_end(framing, *RUNS[run], request_id)
    answer, _ = await asyncio.to_thread(_exchange, gateway.port, [request], leave=framing == "short")
    if framing != "short":  # the client is still there: it is told, as JSON
        _assert_json_error(answer, 400)
    await _assert_nothing_forwarded(gateway, upstream, runs_before, request_id)


@pytest.mark.parametrize("run", list(RUNS))
async def test_a_body_that_stops_coming_gets_408_and_the_connection_is_closed(counting, run: str) -> None:
    gateway, upstream = counting
    runs_before = len(upstream.paths)
    request_id = f"stalled-{uuid.uuid4().hex}"
    path, content_type, body = RUNS[run]
    request = _head(path, content_type, request_id, "Content-Length: 100") + body[:1]
    answer, cut_off = await asyncio.to_thread(_exchange, gateway.port, [request])
    print(f"\nclient_body_timeout {BODY_TIMEOUT_S} s, {run}: 408 and closed {cut_off:.3f} s after the last byte")
    _assert_json_error(answer, 408)
    await _assert_nothing_forwarded(gateway, upstream, runs_before, request_id)


async def test_a_stalled_body_on_a_route_that_does_not_read_it_is_408_too(counting) -> None:
    """The run read-back route forwards without reading a body: the body reader's timeout then
    comes through the client watch, ends the wait for the upstream (which never answers) and is
    the answer."""
    gateway, _ = counting
    request = _head("/agents/echo-agent/runs?session_id=hold", "application/json", "stalled-get", "Content-Length: 100")
    answer, _ = await asyncio.to_thread(_exchange, gateway.port, [request.replace(b"POST ", b"GET ", 1) + b"{"])
    _assert_json_error(answer, 408)
    assert "was never retrieved" not in gateway.log()


async def test_the_body_timeout_of_a_route_that_parses_json_is_408(local_gateway) -> None:
    """FastAPI makes any error while it parses a body a 400 "error parsing the body": the body
    reader's own answer goes out instead."""
    request = _head("/v1/agents/echo-agent/run", "application/json", "stalled-local", "Content-Length: 100") + b"{"
    answer, cut_off = await asyncio.to_thread(_exchange, local_gateway.port, [request])
    print(f"\nclient_body_timeout {BODY_TIMEOUT_S} s, json (a FastAPI route): 408 and closed {cut_off:.3f} s after it")
    _assert_json_error(answer, 408)


@pytest.mark.parametrize(
    "sent", [b"POST /v1/agents/echo-agent/run HTTP/1.1\r\nHost: gateway\r\nContent-Ty", b""], ids=["half a head", "nothing"]
)
async def test_a_head_that_stops_coming_gets_408_and_the_connection_is_closed(counting, sent: bytes) -> None:
    gateway, _ = counting
    answer, cut_off = await asyncio.to_thread(_exchange, gateway.port, [sent])
    what = "half a head: 408 and the connection closed" if sent else "no byte: the connection closed"
    print(f"\nclient_header_timeout {HEADER_TIMEOUT_S} s, {what} {cut_off:.3f} s after the last byte (or connecting)")
    if sent:
        _assert_json_error(answer, 408)
    else:
        assert answer == b""  # nothing was asked: nothing is answered (as uvicorn's keep-alive timeout)


async def test_a_body_sent_slowly_but_steadily_is_served(counting) -> None:
    """Each gap is a fifth of the body timeout, all of them together longer than it: the timeout
    is between two reads, not for the whole body."""
    gateway, _ = counting
    body = b"message=fine+sent+in+pieces&stream=false"
    head = _head("/agents/echo-agent/runs", RUNS["form (fast path)"][1], "steady", f"Content-Length: {len(body)}")
    pieces = [head, *(body[start : start + 4] for start in range(0, len(body), 4))]
    gap_s = BODY_TIMEOUT_S / 5
    assert gap_s * (len(pieces) - 1) > BODY_TIMEOUT_S
    answer, _ = await asyncio.to_thread(_exchange, gateway.port, pieces, gap_s=gap_s)
    status, _, payload = _answer(answer)
    assert status == 200 and json.loads(payload)["content"] == "fine", answer[:400]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_a_run_longer_than_the_body_timeout_is_not_cut(counting, stream: bool) -> None:
    """The upstream takes longer than the body timeout to answer: once the body is whole, the
    gateway's wait for the client to leave has no timeout."""
    gateway, _ = counting
    assert FaultyUpstream.SLOW_ANSWER_S > BODY_TIMEOUT_S
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        response = await client.post("/v1/agents/echo-agent/run", json={"input": "slowly", "stream": stream})
    assert response.status_code == 200, response.text
    if stream:
        events = [line.removeprefix("event: ") for line in response.text.splitlines() if line.startswith("event: ")]
        assert events == ["RunStarted", *["RunContent"] * 4, "RunCompleted"], response.text
    else:
        assert response.json()["content"] == "slowly"


async def test_a_local_stream_longer_than_the_body_timeout_is_not_cut(local_gateway) -> None:
    """The same for a run of the gateway's own (8 slow words: 2 s of events)."""
    async with httpx.AsyncClient(base_url=local_gateway.url, timeout=30) as client:
        body = {"input": "slow: " + " ".join(["word"] * 8), "stream": True}
        response = await client.post("/v1/agents/echo-agent/run", json=body)
    assert response.status_code == 200
    assert "event: RunCompleted" in response.text, response.text[-500:]


async def test_an_idle_keep_alive_connection_is_uvicorns_to_close(counting) -> None:
    """Idle between two requests for longer than the header timeout, a connection still serves
    the next one: the header timeout starts with a request's first byte. After it, uvicorn's
    keep-alive timeout closes the idle connection, without an answer."""
    gateway, _ = counting
    request = b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n"

    def two_requests_then_idle() -> Tuple[List[int], bytes]:
        statuses = []
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=EOF_WAIT_S) as sock:
            reader = sock.makefile("rb")
            for _ in range(2):
                sock.sendall(request)
                statuses.append(int(reader.readline().split()[1]))
                length = 0
                while (line := reader.readline()) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                reader.read(length)
                time.sleep(HEADER_TIMEOUT_S * 1.5)  # idle: longer than the header timeout
            return statuses, reader.read()  # until uvicorn's keep-alive timeout closes it

    statuses, after = await asyncio.to_thread(two_requests_then_idle)
    assert statuses == [200, 200] and after == b""


async def test_workers_have_both_timeouts(log_dir, tmp_path) -> None:
    """``serve --workers 2 --fd N``: each spawned worker runs the gateway's HTTP protocol and body
    reader with the configured timeouts."""
    config = tmp_path / "workers.yaml"
    config.write_text(json.dumps({"limits": LIMITS}))
    (tmp_path / "metrics").mkdir()
    gateway = await asyncio.to_thread(
        start_server, "reads-workers-gateway", ["serve", "--config", str(config), "--workers", "2"], log_dir,
        {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")},
    )  # fmt: skip
    try:
        await eventually(lambda: gateway.log().count("Application startup complete.") == 2, what="both workers up")
        half_head = b"POST /v1/agents/echo-agent/run HTTP/1.1\r\nHost: gateway\r\nContent-Ty"
        stalled_body = _head("/v1/agents/echo-agent/run", "application/json", "stalled", "Content-Length: 100") + b"{"
        requests = [half_head, stalled_body] * 4  # connections spread over both workers
        answers = await asyncio.gather(*(asyncio.to_thread(_exchange, gateway.port, [request]) for request in requests))
        for answer, cut_off in answers:
            _assert_json_error(answer, 408)
        print(f"\nworkers: 408 and closed after {', '.join(f'{cut_off:.3f}' for _, cut_off in answers)} s")
    finally:
        gateway.stop()

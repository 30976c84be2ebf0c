"""Hostile input to a pool gateway: odd ids and paths, header injection, attempts to pick the
upstream URL, oversized bodies, clients that hold streams without reading."""

from __future__ import annotations

import asyncio
import socket
from typing import List
from urllib.parse import quote

import httpx
import pytest

from tests.helpers import rss_mib
from tests.pools import answered_by
from tests.processes import Server


def _raw_request(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Bytes sent as they are (no client normalizes the path), the answer read to its end."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks: List[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "path",
    [
        "/v1/agents/echo-agent%2F..%2F..%2Fadmin/run",
        "/v1/agents/..%2F..%2Fconfig/run",
        "/v1/agents/../../config/run",
        "/v1/agents/echo-agent/../echo-agent/run",
        "/v1/agents/%2e%2e/run",
        "/v1/agents/caf%C3%A9/run",
        "/v1/agents/%E2%80%AE/run",
        "/v1/agents/x%0D%0AX-Evil:%201/run",
        "/v1/agents/x%00y/run",
        "/agents/echo-agent%2F..%2Fx/runs",
        "//evil.example/v1/agents/echo-agent/run",
    ],
)
def test_odd_paths_never_reach_an_upstream_as_something_else(pool_gateway, path: str) -> None:
    body = b'{"input": "hi"}'
    answer = _raw_request(
        pool_gateway.port,
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body,
    )
    status = _status(answer)
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert status in (400, 404, 405, 422), answer[:300]
    assert b"x-evil" not in head and b"x-agentos-gateway-upstream" not in head


async def test_the_client_cannot_choose_the_upstream_url(pool_gateway) -> None:
    """Absolute-form request lines, Host and forwarding headers, URL-ish body fields: the run
    goes to a configured upstream, and nothing else is contacted."""
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.setblocking(False)
    trap_url = f"http://127.0.0.1:{trap.getsockname()[1]}"
    try:
        body = f'{{"input": "hi", "base_url": "{trap_url}", "url": "{trap_url}", "upstream": "{trap_url}"}}'.encode()
        answer = await asyncio.to_thread(
            _raw_request,
            pool_gateway.port,
            f"POST {trap_url}/v1/agents/echo-agent/run HTTP/1.1\r\nHost: {trap_url[7:]}\r\n".encode()
            + f"X-Forwarded-Host: {trap_url[7:]}\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: host={trap_url[7:]}\r\n".encode()
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body,
        )
        assert _status(answer) == 200, answer[:300]
        assert answered_by(answer.decode(errors="replace"))[0] in {"pool-a", "pool-b"}
        with pytest.raises(BlockingIOError):
            trap.accept()  # nobody came
    finally:
        trap.close()


async def test_header_injection_through_session_and_request_ids(pool_gateway) -> None:
    async with httpx.AsyncClient(base_url=pool_gateway.url, timeout=30) as client:
        sneaky = "s1\r\nX-Evil: 1"
        response = await client.post("/v1/agents/echo-agent/run", json={"input": "hi", "session_id": sneaky})
        assert response.status_code == 200 and response.json()["session_id"] == sneaky
        assert "x-evil" not in response.headers
        follow_up = await client.post("/v1/agents/echo-agent/run", json={"input": "again", "session_id": sneaky})
        assert answered_by(follow_up.json()["content"])[1] == 2  # an odd id is still one session
    answer = await asyncio.to_thread(
        _raw_request,
        pool_gateway.port,
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: ok\r\n X-Evil: folded\r\nConnection: close\r\n\r\n",
    )
    assert _status(answer) == 400 or b"x-evil" not in answer.split(b"\r\n\r\n", 1)[0].lower()


async def test_an_oversized_body_is_refused_before_any_upstream_sees_it(pool_gateway) -> None:
    big = b'{"input": "' + b"x" * (11 * 1024 * 1024) + b'"}'
    async with httpx.AsyncClient(base_url=pool_gateway.url, timeout=60) as client:
        declared = await client.post("/v1/agents/echo-agent/run", content=big, headers={"content-type": "application/json"})

        async def chunks():
            for start in range(0, len(big), 1 << 20):
                yield big[start : start + (1 << 20)]

        chunked = await client.post("/agents/echo-agent/runs", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"})
    for response in (declared, chunked):
        assert response.status_code == 413 and "detail" in response.json()
        assert "x-agentos-gateway-upstream" not in response.headers


async def test_clients_that_hold_streams_do_not_slow_the_others(pool_gateway) -> None:
    """Twenty clients open slow streams and never read them; the others are served as before."""
    held = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", pool_gateway.port), timeout=10)
            body = b'{"input": "slow: ' + b"w " * 40 + b'", "stream": true}'
            sock.sendall(
                b"POST /v1/agents/echo-agent/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
            held.append(sock)
        async with httpx.AsyncClient(base_url=pool_gateway.url, timeout=30) as client:
            async with asyncio.timeout(30):
                answers = await asyncio.gather(
                    *(client.post("/v1/agents/echo-agent/run", json={"input": f"{n} + 1"}) for n in range(20))
                )
        assert [answer.status_code for answer in answers] == [200] * 20
        assert [answer.json()["content"].split(" [")[0] for answer in answers] == [f"{n} + 1 = {n + 1}" for n in range(20)]
    finally:
        for sock in held:
            sock.close()


@pytest.fixture(scope="module")
async def recording(log_dir):
    """A gateway in front of an upstream that records the path of every request it gets. One for
    the module: each test reads only what its own requests added (paths and remembered runs
    counted from before them), and the lone upstream serves whatever its outlier state (panic)."""
    from tests.fake_upstream import FaultyUpstream
    from tests.pools import ADMIN_KEY, FAST_HEALTH, start_gateway

    upstream = FaultyUpstream()
    await upstream.start()
    config = {"upstreams": [{"name": "recording", "url": upstream.url}], "health": FAST_HEALTH, "admin_key": ADMIN_KEY}
    gateway = await asyncio.to_thread(start_gateway, "recording-gateway", config, log_dir)
    yield gateway, upstream
    gateway.stop()
    await upstream.close()


async def _next_path(upstream, before: int) -> str:
    async with asyncio.timeout(10):
        while len(upstream.paths) <= before:
            upstream.requested.clear()
            await upstream.requested.wait()
    return upstream.paths[before]


@pytest.mark.parametrize(
    "run_id, sent_as",
    [("../../config", "..%2F..%2Fconfig"), ("..", "%2E%2E"), ("x?debug=1#y", "x%3Fdebug%3D1%23y"), ("a b", "a%20b")],
)
async def test_a_run_id_from_a_body_reaches_the_cancel_url_as_one_encoded_segment(recording, run_id: str, sent_as: str) -> None:
    gateway, upstream = recording
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        before = len(upstream.paths)
        form = {"message": "hold", "stream": "false", "session_id": "s", "run_id": run_id}
        run = asyncio.create_task(client.post("/agents/echo-agent/runs", data=form))
        assert await _next_path(upstream, before) == "/agents/echo-agent/runs"
        run.cancel()  # the client leaves: the gateway cancels the run on its upstream
        assert await _next_path(upstream, before + 1) == f"/agents/echo-agent/runs/{sent_as}/cancel"

        # the cancel route's own run id, sent encoded by the client: one segment, or no route
        before = len(upstream.paths)
        answer = await client.post(f"/agents/echo-agent/runs/{quote(run_id, safe='')}/cancel")
        if "/" in run_id:  # an encoded slash: refused before any routing (400)
            assert answer.status_code == 400 and upstream.paths[before:] == [], answer.text
        elif run_id == "..":  # the client resolved the dot segment itself: no such route
            assert answer.status_code == 404 and upstream.paths[before:] == [], answer.text
        else:
            assert answer.status_code == 200, answer.text
            assert upstream.paths[before:] == [f"/agents/echo-agent/runs/{sent_as}/cancel"]


async def _remembered_runs(client: httpx.AsyncClient, gateway: Server) -> int:
    from tests.pools import ADMIN_KEY

    runtime = await client.get(f"{gateway.admin_url}/admin/runtime", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    return runtime.json()["remembered_runs"]


async def test_only_runs_an_upstream_accepted_are_remembered(recording) -> None:
    gateway, _ = recording
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        before = await _remembered_runs(client, gateway)
        for index in range(5):  # answered 503 by the upstream: no run started there
            refused = await client.post("/agents/echo-agent/runs", data={"message": "busy", "stream": "false", "run_id": f"busy-{index}"})
            assert refused.status_code == 503
        assert await _remembered_runs(client, gateway) == before
        fine = await client.post("/agents/echo-agent/runs", data={"message": "fine", "stream": "false", "run_id": "fine-1"})
        assert fine.status_code == 200
        assert await _remembered_runs(client, gateway) == before + 1




async def test_megabyte_ids_are_refused_and_leave_no_trace(recording) -> None:
    gateway, upstream = recording
    big = "r" * 1_000_000
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        paths_before, remembered_before = len(upstream.paths), await _remembered_runs(client, gateway)
        rss_before = rss_mib(gateway.process.pid)
        for field in ("run_id", "session_id") * 5:
            answer = await client.post("/agents/echo-agent/runs", data={"message": "fine", "stream": "false", field: big})
            assert answer.status_code == 400 and field in answer.json()["detail"], answer.text[:200]
        rss_after = rss_mib(gateway.process.pid)
        assert upstream.paths[paths_before:] == [] and await _remembered_runs(client, gateway) == remembered_before
    print(f"10 form runs with 1 MB ids: 400 each; gateway RSS {rss_before:.1f} -> {rss_after:.1f} MiB")
    assert rss_after - rss_before < 8, (rss_before, rss_after)


@pytest.mark.parametrize(
    "path",
    ["/sessions/x/../../memories", "/sessions/x/%2e%2e/%2e%2e/config", "/sessions/x/%2E%2E/%2e%2E/config",
     "/memories/a%2fb", "/memories/a%2Fb", "/memories/a%5cb", "/memories/%00", "/memories/a%00b", "/traces/./x"],
)  # fmt: skip
async def test_dot_segments_encoded_slashes_and_nuls_never_reach_an_upstream(recording, path: str) -> None:
    gateway, upstream = recording
    before = len(upstream.paths)
    for method in ("GET", "DELETE"):
        answer = await asyncio.to_thread(
            _raw_request, gateway.port, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        assert _status(answer) == 400 and b'"detail"' in answer, answer[:300]
    # a request that does reach it afterwards shows the ones before never did
    reached = await asyncio.to_thread(
        _raw_request, gateway.port, b"GET /memories/a%3Fb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert _status(reached) == 502  # the recording upstream cuts its answer short
    assert upstream.paths[before:] == ["/memories/a%3Fb"]

"""What operators rely on, against real gateway processes: metrics (checked by promtool), keys,
limits, request ids and trace context, the access log, readiness and a graceful SIGTERM, CORS,
and metrics merged across workers."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
import uuid
from typing import Dict, List

import httpx
import pytest

from tests.fake_upstream import FaultyUpstream
from tests.helpers import rss_mib
from tests.pools import FAST_HEALTH, gateway_config, start_gateway

KEY = "client-key-0123456789abcdef"
TEAM_KEY = "team-only-key-0123456789ab"
LIMITED_KEY = "limited-key-0123456789abcd"


def _samples(scrape: str, name: str) -> Dict[str, float]:
    """{label text: value} of one metric's samples in a text exposition."""
    found = {}
    for line in scrape.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            found[labels[len(name) :]] = float(value)
    return found




# -- metrics -----------------------------------------------------------------------------------------


async def test_metrics_after_real_traffic_pass_promtool(pool_gateway) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: run deploy/tools.sh (Debian package prometheus)")
    async with httpx.AsyncClient(base_url=pool_gateway.url, timeout=30) as client:
        ok = await client.post("/v1/agents/echo-agent/run", json={"input": "hi"})
        failed = await client.post("/v1/agents/echo-agent/run", json={"input": "fail: x"})
        streamed = await client.post("/v1/teams/echo-team/run", json={"input": "a b", "stream": True})
        missing = await client.post("/v1/agents/no-such/run", json={"input": "hi"})
        assert (ok.status_code, failed.status_code, streamed.status_code, missing.status_code) == (200, 200, 200, 404)
        scrape = (await client.get(f"{pool_gateway.admin_url}/metrics")).text
    checked = subprocess.run([promtool, "check", "metrics"], input=scrape, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    print(f"scrape size: {len(scrape.encode())} bytes, {len(scrape.splitlines())} lines")

    requests = _samples(scrape, "agentos_gateway_requests_total")
    assert requests['{code="200",entity="echo-agent",kind="agent",route="/v1/agents/{entity_id}/run"}'] >= 2
    assert requests['{code="404",entity="unknown",kind="agent",route="/v1/agents/{entity_id}/run"}'] >= 1
    runs = _samples(scrape, "agentos_gateway_runs_total")
    assert runs['{entity="echo-agent",kind="agent",outcome="COMPLETED"}'] >= 1
    assert runs['{entity="echo-agent",kind="agent",outcome="ERROR"}'] >= 1
    assert runs['{entity="echo-team",kind="team",outcome="COMPLETED"}'] >= 1
    assert _samples(scrape, "agentos_gateway_stream_events_total")['{kind="team"}'] >= 5
    healthy = _samples(scrape, "agentos_gateway_upstream_healthy")
    assert healthy == {'{upstream="pool-a"}': 1.0, '{upstream="pool-b"}': 1.0}
    assert all(value == 0 for value in _samples(scrape, "agentos_gateway_upstream_in_flight").values())
    assert sum(_samples(scrape, "agentos_gateway_upstream_requests_total").values()) >= 3
    assert _samples(scrape, "agentos_gateway_probe_duration_seconds_count")
    assert _samples(scrape, "agentos_gateway_time_to_first_byte_seconds_count")
    assert _samples(scrape, "agentos_gateway_active_streams") == {"": 0.0}


# -- keys --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_gateway(log_dir, pool_upstreams):
    keys = [
        {"name": "frontend", "key": KEY},
        {"name": "team-bot", "key": TEAM_KEY, "entities": ["echo-team"]},
        {"name": "limited", "key": LIMITED_KEY, "rate_per_s": 0.5, "burst": 2},
    ]
    server = start_gateway("keyed-clients-gateway", gateway_config(pool_upstreams, auth={"keys": keys}), log_dir)
    yield server
    server.stop()


@pytest.mark.parametrize(
    "authorization, status, detail",
    [
        (None, 401, "Authorization header required"),
        ("Bearer", 401, "Authorization header required"),
        ("Bearer wrong-key", 401, "Invalid authentication token"),
        (f"Bearer {KEY[:-1]}", 401, "Invalid authentication token"),  # almost right
        (f"Bearer {KEY}x", 401, "Invalid authentication token"),
        (f"Bearer {KEY.upper()}", 401, "Invalid authentication token"),
        (f"Basic {KEY}", 401, "Invalid authentication token"),
        (f"Bearer {KEY}", 200, None),
        (f"bearer {KEY}", 200, None),  # the scheme is case-insensitive
        (KEY, 200, None),  # the bare key, as AgentOS accepts it
        (f"Bearer {TEAM_KEY}", 403, "Key 'team-bot' may not use agents 'echo-agent'"),
    ],
)
async def test_client_keys(keyed_gateway, authorization, status, detail) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with httpx.AsyncClient(base_url=keyed_gateway.url, timeout=30) as client:
        response = await client.post("/v1/agents/echo-agent/run", json={"input": "hi"}, headers=headers)
    assert response.status_code == status, response.text
    if detail is not None:
        assert response.json() == {"detail": detail}


async def test_a_repeated_authorization_counts_by_its_first_value_on_every_path(keyed_gateway) -> None:
    """The run path ahead of the layers reads the key as the auth layer does for every other
    route: the first Authorization header."""
    first_good = [("authorization", f"Bearer {KEY}"), ("authorization", "Bearer wrong-key")]
    first_bad = list(reversed(first_good))
    async with httpx.AsyncClient(base_url=keyed_gateway.url, timeout=30) as client:
        for headers, status in ((first_good, 200), (first_bad, 401)):
            run = await client.post("/agents/echo-agent/runs", data={"message": "hi", "stream": "false"}, headers=headers)
            listing = await client.get("/agents", headers=headers)
            assert (run.status_code, listing.status_code) == (status, status), (headers, run.text, listing.text)


async def test_keys_open_routes_scopes_rate_limits_and_secrecy(keyed_gateway) -> None:
    async with httpx.AsyncClient(base_url=keyed_gateway.url, timeout=30) as client:
        for path in ("/health", "/ready"):
            assert (await client.get(path)).status_code == 200, path
        # GET /metrics here is AgentOS's: it takes a key as its other routes; the Prometheus
        # scrape on the admin listener stays open
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})).status_code == 200
        assert (await client.get(f"{keyed_gateway.admin_url}/metrics")).status_code == 200
        team_bot = {"Authorization": f"Bearer {TEAM_KEY}"}
        assert (await client.post("/v1/teams/echo-team/run", json={"input": "hi"}, headers=team_bot)).status_code == 200
        assert (await client.get("/sessions", headers=team_bot)).status_code == 403
        assert (await client.post("/agents/echo-agent/runs", data={"message": "x"}, headers=team_bot)).status_code == 403
        # a client key is not an admin key
        admin = await client.get(f"{keyed_gateway.admin_url}/admin/upstreams", headers={"Authorization": f"Bearer {KEY}"})
        assert admin.status_code == 401
        limited = {"Authorization": f"Bearer {LIMITED_KEY}"}
        codes = [(await client.get("/config", headers=limited)).status_code for _ in range(3)]
        assert codes[:2] == [200, 200] and codes[2] == 429
        throttled = await client.get("/config", headers=limited)
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
    log = keyed_gateway.log()
    assert KEY not in log and TEAM_KEY not in log and LIMITED_KEY not in log


# -- request ids, trace context, the access log --------------------------------------------------------


@pytest.fixture
async def echoing(log_dir):
    upstream = FaultyUpstream()
    await upstream.start()
    config = {"upstreams": [{"name": "echo", "url": upstream.url, "api_key": "the-upstreams-own-key"}], "health": FAST_HEALTH}
    gateway = await asyncio.to_thread(start_gateway, "echoing-gateway", config, log_dir)
    yield gateway, upstream
    gateway.stop()
    await upstream.close()


async def test_an_upstreams_cookie_goes_to_its_client_and_is_never_kept(log_dir) -> None:
    """The gateway's connections to an upstream are shared by all clients: a cookie one answer
    sets is passed to that answer's client, and never sent upstream again for anyone. (The
    upstream by host name: aiohttp's default cookie jar keeps no cookie of an IP address.)"""
    upstream = FaultyUpstream()
    await upstream.start()
    config = {"upstreams": [{"name": "named", "url": upstream.url.replace("127.0.0.1", "localhost")}], "health": FAST_HEALTH}
    gateway = await asyncio.to_thread(start_gateway, "cookie-gateway", config, log_dir)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            setting = await client.post("/v1/agents/echo-agent/run", json={"input": "cookie"})
            assert setting.status_code == 200 and setting.headers["set-cookie"] == "upstream-session=secret; Path=/"
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as other_client:
            after = await other_client.post("/v1/agents/echo-agent/run", json={"input": "fine"})
        assert after.status_code == 200
        assert "cookie" not in upstream.seen_headers, upstream.seen_headers
    finally:
        gateway.stop()
        await upstream.close()


async def test_request_ids_trace_context_and_credentials_on_the_way_upstream(echoing) -> None:
    gateway, upstream = echoing
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        given = await client.post(
            "/v1/agents/echo-agent/run",
            json={"input": "fine"},
            headers={
                "x-request-id": "req-123",
                "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
                "Authorization": "Bearer the-clients-token",
            },
        )
        assert given.status_code == 200 and given.headers["x-request-id"] == "req-123"
        seen = upstream.seen_headers
        assert seen["x-request-id"] == "req-123"
        version, seen_trace, span, flags = seen["traceparent"].split("-")
        assert (version, seen_trace, flags) == ("00", trace_id, "01") and span != "00f067aa0ba902b7"
        assert seen["authorization"] == "Bearer the-upstreams-own-key"

        made = await client.post(
            "/v1/agents/echo-agent/run", json={"input": "fine"}, headers={"x-request-id": "bad id\twith junk", "traceparent": "nonsense"}
        )
        made_id = made.headers["x-request-id"]
        assert made_id != "bad id\twith junk" and len(made_id) == 32
        assert upstream.seen_headers["x-request-id"] == made_id
        assert len(upstream.seen_headers["traceparent"].split("-")[1]) == 32
        missing = await client.post("/v1/agents/nope/run", json={"input": "x"})
        assert missing.status_code == 404 and missing.headers["x-request-id"]

    def logged() -> List[dict]:
        return [json.loads(line) for line in gateway.log().splitlines() if line.startswith('{"request_id"')]

    deadline = time.monotonic() + 10
    while made_id not in {line["request_id"] for line in logged()}:  # lines are written within 0.1 s
        assert time.monotonic() < deadline, "the access log lines never came"
        await asyncio.sleep(0.02)
    lines = logged()
    entry = next(line for line in lines if line["request_id"] == "req-123")
    assert entry["status"] == 200 and entry["entity"] == "echo-agent" and entry["upstream"] == "echo"
    assert entry["route"] == "/v1/agents/{entity_id}/run" and entry["retries"] == 0 and entry["duration_ms"] > 0
    assert "fine" not in json.dumps(lines)  # no bodies
    assert "the-clients-token" not in gateway.log() and "the-upstreams-own-key" not in gateway.log()


# -- limits ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_gateway(log_dir, pool_upstreams):
    config = gateway_config(pool_upstreams, limits={"max_concurrent_runs": 2, "max_streams": 1, "max_header_bytes": 4096})
    server = start_gateway("limited-gateway", config, log_dir)
    yield server
    server.stop()


async def test_oversized_headers_get_431(limited_gateway) -> None:
    async with httpx.AsyncClient(base_url=limited_gateway.url, timeout=30) as client:
        response = await client.post("/v1/agents/echo-agent/run", json={"input": "hi"}, headers={"x-big": "a" * 5000})
    assert response.status_code == 431 and "4096" in response.json()["detail"]


async def test_runs_and_streams_beyond_their_bounds_are_refused_at_once(limited_gateway) -> None:
    slow = {"input": "slow: " + " ".join(["w"] * 20), "stream": True}
    async with httpx.AsyncClient(base_url=limited_gateway.url, timeout=30) as client:
        async with client.stream("POST", "/v1/agents/echo-agent/run", json=slow) as first:
            async for line in first.aiter_lines():
                if line.startswith("event: RunContent"):
                    break  # one stream open
            second = await client.post("/v1/agents/echo-agent/run", json=slow)
            assert second.status_code == 503 and second.headers["retry-after"] == "1"
            assert "streams open" in second.json()["detail"]
            fine = await client.post("/v1/agents/echo-agent/run", json={"input": "hi"})  # runs: 2 allowed
            assert fine.status_code == 200

            async def one(client: httpx.AsyncClient) -> int:
                return (await client.post("/v1/agents/echo-agent/run", json={"input": "slow: a b c d"})).status_code

            # 1,000 runs at once beyond the bound: refused at once, none waits in a queue
            rss_before = rss_mib(limited_gateway.process.pid)
            started = time.monotonic()
            async with asyncio.timeout(60):
                codes = await asyncio.gather(*(one(client) for _ in range(1000)))
            print(f"1,000 runs over the limit answered in {time.monotonic() - started:.2f} s")
            # the one free slot serves a few as earlier ones end; the rest are refused, none waits
            assert set(codes) <= {200, 503} and codes.count(503) >= 900
            rss_growth = rss_mib(limited_gateway.process.pid) - rss_before
            print(f"gateway RSS after the burst: {rss_growth:+.1f} MB")
            assert rss_growth < 32  # nothing of the refused requests is kept
        # every slot came back: a stream is let in again (a short one: its admission is the check)
        after = await client.post("/v1/agents/echo-agent/run", json={"input": "hi", "stream": True})
        assert after.status_code == 200


# -- readiness and SIGTERM -----------------------------------------------------------------------------


async def test_sigterm_turns_ready_off_lets_the_stream_finish_then_exits(log_dir, pool_upstreams) -> None:
    config = gateway_config(pool_upstreams, shutdown={"drain_delay_s": 1.0, "grace_s": 20})
    gateway = await asyncio.to_thread(start_gateway, "draining-gateway", config, log_dir)
    events: List[str] = []
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            assert (await client.get("/ready")).json() == {"status": "ok"}
            async with client.stream(
                "POST", "/v1/agents/echo-agent/run", json={"input": "slow: a b c d e f g h", "stream": True}
            ) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("event: "):
                        events.append(line[7:])
                        if len(events) == 1:
                            gateway.process.send_signal(signal.SIGTERM)
                            ready = await client.get("/ready")
                            assert ready.status_code == 503 and ready.json() == {"status": "shutting down"}
        assert events[-1] == "RunCompleted"  # the stream in flight finished
        # uvicorn ends a graceful SIGTERM shutdown by re-raising the signal: the exit status says so
        assert await asyncio.to_thread(gateway.process.wait, 30) in (0, -signal.SIGTERM)
    finally:
        gateway.stop()


async def test_ready_is_503_while_no_upstream_can_serve(log_dir) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = {"upstreams": [{"name": "gone", "url": f"http://127.0.0.1:{port}"}], "health": FAST_HEALTH}
    gateway = await asyncio.to_thread(start_gateway, "unready-gateway", config, log_dir)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            ready = await client.get("/ready")
            health = await client.get("/health")
        assert ready.status_code == 503 and ready.json() == {"status": "no usable upstream"}
        assert health.status_code == 200
    finally:
        gateway.stop()


# -- CORS ---------------------------------------------------------------------------------------------


async def test_cors_allows_only_the_configured_origins(log_dir, pool_upstreams) -> None:
    config = gateway_config(pool_upstreams, cors_origins=["http://ui.example"], auth={"keys": [{"name": "ui", "key": KEY}]})
    gateway = await asyncio.to_thread(start_gateway, "cors-gateway", config, log_dir)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
            allowed = await client.options("/v1/agents/echo-agent/run", headers={"Origin": "http://ui.example", **preflight})
            refused = await client.options("/v1/agents/echo-agent/run", headers={"Origin": "http://evil.example", **preflight})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://ui.example"
        assert "access-control-allow-origin" not in refused.headers
    finally:
        gateway.stop()


# -- workers -------------------------------------------------------------------------------------------


async def test_two_workers_merge_their_metrics(log_dir, pool_upstreams, tmp_path) -> None:
    from tests.processes import start_server

    config_path = tmp_path / "workers.yaml"
    config_path.write_text(json.dumps(gateway_config(pool_upstreams)))
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    (tmp_path / "metrics").mkdir()
    gateway = await asyncio.to_thread(
        start_server, "workers-gateway", ["serve", "--config", str(config_path), "--workers", "2"], log_dir, env
    )
    try:
        deadline = time.monotonic() + 30
        while gateway.log().count("Application startup complete.") < 2:  # both workers up
            assert time.monotonic() < deadline, gateway.log()
            await asyncio.sleep(0.05)
        marker = f"w-{uuid.uuid4().hex[:8]}"
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            codes = await asyncio.gather(
                *(client.post("/v1/agents/echo-agent/run", json={"input": marker}) for _ in range(40))
            )
            assert {response.status_code for response in codes} == {200}
            scrape = (await client.get(f"{gateway.admin_url}/metrics")).text
        served = _samples(scrape, "agentos_gateway_requests_total")
        assert served['{code="200",entity="echo-agent",kind="agent",route="/v1/agents/{entity_id}/run"}'] == 40
    finally:
        gateway.stop()


async def test_forward_authorization_sends_the_clients_token_upstream(log_dir) -> None:
    """For upstreams that verify agno JWTs themselves: the client's token goes through, in
    place of the upstream's own key."""
    upstream = FaultyUpstream()
    await upstream.start()
    config = {
        "upstreams": [{"name": "jwt", "url": upstream.url, "api_key": "the-upstreams-own-key"}],
        "health": FAST_HEALTH,
        "forward_authorization": True,
    }
    gateway = await asyncio.to_thread(start_gateway, "forwarding-gateway", config, log_dir)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            with_token = await client.post(
                "/v1/agents/echo-agent/run", json={"input": "fine"}, headers={"Authorization": "Bearer a.jwt.token"}
            )
            assert with_token.status_code == 200
            assert upstream.seen_headers["authorization"] == "Bearer a.jwt.token"
            without = await client.post("/v1/agents/echo-agent/run", json={"input": "fine"})
            assert without.status_code == 200
            assert upstream.seen_headers["authorization"] == "Bearer the-upstreams-own-key"
    finally:
        gateway.stop()
        await upstream.close()


async def test_the_upstream_may_compress_only_what_the_client_accepts(echoing) -> None:
    gateway, upstream = echoing
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        for sent, seen in (("gzip", "gzip"), ("br;q=1.0, identity;q=0.5", "br;q=1.0, identity;q=0.5"), (None, "identity")):
            headers = {"accept-encoding": sent} if sent is not None else {}
            request = client.build_request("POST", "/v1/agents/echo-agent/run", json={"input": "fine"}, headers=headers)
            if sent is None:
                del request.headers["accept-encoding"]  # httpx offers gzip by itself
            answer = await client.send(request)
            assert answer.status_code == 200, answer.text
            assert upstream.seen_headers["accept-encoding"] == seen, (sent, upstream.seen_headers)

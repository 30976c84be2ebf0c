"""The CPU cost per request of the gateway's own work, in-process (no sockets, no upstream).

1. Its auth and its metrics + access log: the same trivial ASGI route called bare, behind the
   metrics/log middleware, behind the auth middleware (a key for everything, and a key limited
   to some entities, a key with agno scopes), and behind both.
2. Each step of the run path (``api/fast_path.py``) alone, as a forwarded form run makes it: the
   header pass, the ids, the key check, the form read and the run prepared, the upstream chosen,
   the flight's bookkeeping, the run's owner remembered, the run's outcome metric, the metrics
   and access line. Their sum is what the features cost a request; what ``make bench`` measures
   above that and the floor is the structure that carries them (calls, coroutines, objects).

    .venv/bin/python loadtests/overhead.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Dict, List

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.auth import AuthMiddleware, Keyring
from gateway.api.observe import ObserveMiddleware
from gateway.logs import AccessLogWriter
from gateway.settings import ApiKey

KEY = "overhead-key-0123456789abcdef"
SCOPED_KEY = "overhead-scoped-0123456789abcd"
BODY = b'{"status":"COMPLETED","content":"ok"}'


async def route(scope: Scope, receive: Receive, send: Send) -> None:
    scope.setdefault("state", {})["entity"] = "echo-agent"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})


def variants() -> Dict[str, ASGIApp]:
    keyring = Keyring([ApiKey(name="bench", key=KEY)])
    # A key limited to some entities: the request is authorized against the route it matches.
    scoped = Keyring([ApiKey(name="bench", key=KEY, entities=["echo-agent", "echo-team"])])
    scopes = Keyring([ApiKey(name="bench", key=KEY, scopes=["agents:echo-agent:run", "sessions:read"])])
    return {
        "bare route": route,
        "metrics + access log": ObserveMiddleware(route, access_log=True),
        "auth": AuthMiddleware(route, keyring),
        "auth, entities key": AuthMiddleware(route, scoped),
        "auth, scopes key": AuthMiddleware(route, scopes),
        "auth + metrics + access log": ObserveMiddleware(AuthMiddleware(route, keyring), access_log=True),
    }


async def cpu_per_request(app: ASGIApp, requests: int, path: str = "/v1/agents/echo-agent/run") -> float:
    scope_base = {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json")],
    }  # fmt: skip

    async def receive() -> Dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Dict) -> None:
        pass

    for _ in range(500):  # warm-up: label children, caches
        await app(dict(scope_base), receive, send)
    started = time.process_time()
    for _ in range(requests):
        await app(dict(scope_base), receive, send)
    return (time.process_time() - started) / requests * 1e6


def run_path_steps(iterations: int) -> Dict[str, float]:
    """CPU µs per call of each step of a forwarded form run (one upstream, bounded affinity)."""
    from gateway.api.fast_path import _prepare_form
    from gateway.api.forwarding import Forwarder, _run_status
    from gateway.api.observe import Observer, _identified
    from gateway.api.request_head import RequestHead
    from gateway.balancing import Outcome
    from gateway.balancing.health import Probe
    from gateway.metrics import record_run
    from gateway.pool import Pool
    from gateway.settings import Settings, UpstreamConfig
    from gateway.wire.kinds import EntityKind

    settings = Settings(
        upstreams=[UpstreamConfig(name="u1", url="http://127.0.0.1:9")], affinity={"mode": "bounded"},
        auth={"keys": [{"name": "bench", "key": KEY}]},
    )  # fmt: skip
    pool = Pool(settings)
    forwarder = Forwarder(pool, settings)
    upstreams = list(pool.upstreams.values())
    upstreams[0].health.on_probe(Probe.OK)  # as its first probe would: usable
    keyring = Keyring([ApiKey(name="bench", key=KEY)])
    observer = Observer(access_log=True)
    path = "/agents/echo-agent/runs"
    body = b"message=what+is+6+%2A+7&stream=false&session_id=bench-s1&user_id=bench"
    content_type = "application/x-www-form-urlencoded"
    headers = [(b"host", b"127.0.0.1:7792"), (b"content-type", content_type.encode()),
               (b"authorization", f"Bearer {KEY}".encode()), (b"content-length", str(len(body)).encode())]  # fmt: skip
    answer = b'{"run_id":"r","agent_id":"echo-agent","status":"COMPLETED","content":"42"}'

    def scope() -> Dict:
        return {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "headers": headers}

    def flight() -> None:
        started = pool.flight()
        started.on(upstreams[0])
        started.finish(Outcome.SUCCESS)

    counter = iter(range(10**9))
    state = {"request_id": "0" * 32, "entity": "echo-agent", "upstream": "u1", "retries": 0}
    observed = {**scope(), "route": type("Route", (), {"path_format": "/agents/{agent_id}/runs"})(), "state": state}
    steps = {
        "one pass over the headers": lambda: RequestHead(scope()),
        "request id and traceparent": lambda: _identified(scope(), None, None),
        "key check": lambda: keyring.check(scope(), path, headers[2][1]),
        "form read, run prepared": lambda: _prepare_form(EntityKind.AGENT, "echo-agent", body, content_type),
        "upstream chosen (bounded affinity)": lambda: forwarder.choose(upstreams, "bench-s1"),
        "flight: in-flight gauges, outcome": flight,
        "run owner remembered": lambda: forwarder.run_owners.remember(f"run-{next(counter)}", "u1", EntityKind.AGENT, "echo-agent", "bench"),
        "run outcome metric": lambda: record_run("agent", "echo-agent", _run_status(answer)),
        "metrics and access line": lambda: observer.record(observed, state, 200, 1.0, 1.001, 1.002),
    }  # fmt: skip
    results = {}
    for name, step in steps.items():
        for _ in range(500):
            step()
        started = time.process_time()
        for _ in range(iterations):
            step()
        results[name] = (time.process_time() - started) / iterations * 1e6
    return results


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--path", default="/v1/agents/echo-agent/run", help="the POST's path (e.g. /agents/echo-agent/runs)")
    args = parser.parse_args(argv)
    AccessLogWriter.shared().stream = open("/dev/null", "w")  # formatted and written, as in service
    results = {name: asyncio.run(cpu_per_request(app, args.requests, args.path)) for name, app in variants().items()}
    bare = results["bare route"]
    print(f"{'variant':32} {'CPU us/request':>15} {'added us':>9}")
    for name, value in results.items():
        print(f"{name:32} {value:15.1f} {value - bare:9.1f}")
    steps = run_path_steps(args.requests)
    print(f"\n{'run path step':38} {'CPU us/request':>15}")
    for name, value in steps.items():
        print(f"{name:38} {value:15.1f}")
    print(f"{'all of them':38} {sum(steps.values()):15.1f}")


if __name__ == "__main__":
    main()

"""The CPU cost per request of the gateway's auth and of its metrics + access log, measured in
one run: the same trivial ASGI route called in-process (no sockets, no upstream) bare, behind
the metrics/log middleware, behind the auth middleware (a key for everything, and a key limited
to some entities, a key with agno scopes), and behind both.

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


if __name__ == "__main__":
    main()

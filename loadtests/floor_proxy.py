"""The floor of a Python proxy: a raw ASGI app under uvicorn forwarding every request to one
upstream with one shared ``aiohttp.ClientSession``, the gateway's stack minus everything the
gateway does (no routing, affinity, health, retries, timeouts, run ids, form parsing).

The benchmark compares the gateway's CPU per request with this one's: what the gateway's own
work costs on top of the HTTP server and client it is built on.

* The request body is read whole and sent with ``Content-Type``/``Accept`` (never the client's
  ``Authorization``), as the gateway forwards it.
* A ``text/event-stream`` answer is passed on chunk by chunk as it comes (``readany``), and a
  client that leaves closes the upstream connection; any other answer is read whole.

    python loadtests/floor_proxy.py --upstream http://127.0.0.1:7790 [--port 7791 | --fd N]

The same app under granian (a Rust HTTP server), the bench's second floor: the factory reads the
upstream from ``FLOOR_UPSTREAM``::

    FLOOR_UPSTREAM=http://127.0.0.1:7790 granian --interface asgi --working-dir loadtests \
        --factory floor_proxy:app_from_env
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any, Dict, List, Optional

import aiohttp

from open_files import raise_soft_limit

UPSTREAM_ENV = "FLOOR_UPSTREAM"
# Every held stream holds one upstream connection: the pool must not be what caps the idle streams.
MAX_UPSTREAM_CONNECTIONS = 16384
FORWARDED = ("content-type", "accept")
NOT_PASSED_BACK = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"})


class FloorProxy:
    def __init__(self, upstream: str, max_connections: int = MAX_UPSTREAM_CONNECTIONS) -> None:
        self.upstream = upstream.rstrip("/")
        self.max_connections = max_connections
        self.session: Optional[aiohttp.ClientSession] = None

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections)
                # As the gateway's: no cookie jar (a proxy's connections are every client's).
                self.session = aiohttp.ClientSession(
                    connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1")
            if name in FORWARDED:
                headers[name] = raw_value.decode("latin-1")
        url = self.upstream + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        assert self.session is not None
        try:
            response = await self.session.request(
                scope["method"], url, data=bytes(body), headers=headers, allow_redirects=False
            )
        except aiohttp.ClientError as error:
            detail = f'{{"detail":"upstream: {type(error).__name__}"}}'.encode()
            await _answer(send, 502, [(b"content-type", b"application/json")], detail)
            return
        answer_headers: List[tuple] = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.items()
            if name.lower() not in NOT_PASSED_BACK
        ]
        if response.content_type != "text/event-stream":
            try:
                data = await response.read()
            finally:
                response.release()
            await _answer(send, response.status, answer_headers, data)
            return
        try:
            await send({"type": "http.response.start", "status": response.status, "headers": answer_headers})
            relay = asyncio.ensure_future(_relay(response, send))
            watcher = asyncio.ensure_future(_client_gone(receive))
            try:
                await asyncio.wait({relay, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (relay, watcher):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        finally:
            response.close()  # a stream cut by its client: the upstream sees its client leave


async def _answer(send: Any, status: int, headers: List[tuple], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _relay(response: aiohttp.ClientResponse, send: Any) -> None:
    content = response.content
    while True:
        chunk = await content.readany()
        if not chunk:
            break
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _client_gone(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def app_from_env() -> FloorProxy:
    """The app for a server that imports it (granian ``--factory``): the upstream from ``FLOOR_UPSTREAM``."""
    upstream = os.environ.get(UPSTREAM_ENV)
    if not upstream:
        raise SystemExit(f"floor_proxy: set {UPSTREAM_ENV} to the upstream's http://host:port")
    raise_soft_limit()
    return FloorProxy(upstream)


def main(argv: Optional[List[str]] = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="http://host:port of the upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7791)
    parser.add_argument("--fd", type=int, help="serve on this inherited listening socket")
    args = parser.parse_args(argv)
    raise_soft_limit()
    listen: Dict[str, Any] = {"fd": args.fd} if args.fd is not None else {"host": args.host, "port": args.port}
    # The same uvicorn defaults as `agentos-gateway serve` (uvloop and httptools when installed).
    uvicorn.run(
        FloorProxy(args.upstream),
        log_level=os.environ.get("GATEWAY_LOG_LEVEL", "warning"),
        access_log=False,
        lifespan="on",
        **listen,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A TCP server that looks like an AgentOS to the gateway's probes and answers runs as a test
asks: garbage, cut streams, floods, immediate 503s, slow answers, or a fine answer that records its
headers."""

from __future__ import annotations

import asyncio
import json
from typing import Dict, List, Optional


class FaultyUpstream:
    """A TCP server that looks like an AgentOS to probes (``/health``, ``/config``, ``/info``) and answers runs
    wrongly: garbage bytes for a message containing ``garbage``, an SSE stream cut after one frame
    for ``cut``, a JSON answer cut mid-body for ``short``, no answer at all for ``hold``; for
    ``slowly`` a whole answer (SSE, or JSON for ``stream=false``) that takes ``SLOW_ANSWER_S``; for
    ``cookie`` a fine answer that sets a cookie.
    Cancels are answered ``{}``; ``documents`` answers a GET of its paths (the raw path) with its
    JSON, and any other ``GET /sessions/...`` with a 404; every path but the probes' is recorded."""

    CONFIG = json.dumps({"os_id": "faulty", "agents": [{"id": "echo-agent"}], "teams": [], "workflows": []}).encode()
    SLOW_ANSWER_S = 3.0

    def __init__(self) -> None:
        self.server: Optional[asyncio.base_events.Server] = None
        self.flood_sent = 0  # bytes a ``flood`` answer has handed to its socket
        self.flood_blocked = asyncio.Event()  # the reader stopped taking them
        self.seen_headers: Dict[str, str] = {}
        self.paths: List[str] = []  # the raw path of every request but probes, in order
        self.requested = asyncio.Event()  # set on each such request
        self.documents: Dict[str, bytes] = {}  # raw path -> the JSON a GET of it answers

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                path = head.split(b" ", 2)[1]
                if not path.startswith((b"/health", b"/config", b"/info")):
                    self.paths.append(path.decode("latin-1"))
                    self.requested.set()
                if path.endswith(b"/cancel"):
                    self._json(writer, b"{}")
                elif head.startswith(b"GET ") and path.decode("latin-1") in self.documents:
                    self._json(writer, self.documents[path.decode("latin-1")])
                elif head.startswith(b"GET /sessions/"):
                    self._json(writer, b'{"detail":"Session not found"}', status=b"404 Not Found")
                elif path.startswith(b"/health"):
                    self._json(writer, b'{"status":"ok","instantiated_at":"2026-01-01T00:00:00Z"}')
                elif path.startswith(b"/config"):
                    self._json(writer, self.CONFIG)
                elif path.startswith(b"/info"):  # no MCP server
                    self._json(writer, b'{"os_id":"faulty","mcp":{"enabled":false,"path":null}}')
                elif b"slowly" in body:
                    await self._slowly(writer, stream=b"stream=false" not in body)
                elif b"cookie" in body:  # a completed run whose answer sets a cookie
                    body = b'{"run_id":"r","status":"COMPLETED","content":"cookie"}'
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nset-cookie: upstream-session=secret; Path=/\r\n"
                        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                    )
                elif b"fine" in body:  # a completed run, and the request's headers kept for the test
                    self.seen_headers = {
                        line.split(b":", 1)[0].strip().lower().decode(): line.split(b":", 1)[1].strip().decode()
                        for line in head.split(b"\r\n")[1:]
                        if b":" in line
                    }
                    self._json(writer, b'{"run_id":"r","status":"COMPLETED","content":"fine"}')
                elif b"flood" in body:
                    await self._flood(writer)
                    break
                elif b"hold" in body or b"hold" in path:  # no answer until the gateway closes the connection
                    await reader.read()
                    break
                elif b"busy" in body:
                    self._json(writer, b'{"detail":"busy"}', status=b"503 Service Unavailable")
                elif b"garbage" in body:
                    writer.write(b"this is not HTTP\r\n\r\n")
                    await writer.drain()
                    break
                elif b"cut" in body:
                    frame = b'event: RunStarted\ndata: {"event":"RunStarted","run_id":"r"}\n\n'
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                        + f"{len(frame):x}\r\n".encode() + frame + b"\r\n"
                    )
                    await writer.drain()
                    break
                else:  # short
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"run")
                    await writer.drain()
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _slowly(self, writer: asyncio.StreamWriter, *, stream: bool) -> None:
        """A completed run whose answer takes ``SLOW_ANSWER_S``: six SSE frames spread over it, or
        a JSON answer after it."""
        if not stream:
            await asyncio.sleep(self.SLOW_ANSWER_S)
            self._json(writer, b'{"run_id":"r","status":"COMPLETED","content":"slowly"}')
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for event in ["RunStarted", *["RunContent"] * 4, "RunCompleted"]:
            frame = f'event: {event}\ndata: {{"event":"{event}","run_id":"r","content":"slowly"}}\n\n'.encode()
            writer.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
            await writer.drain()
            if event != "RunCompleted":
                await asyncio.sleep(self.SLOW_ANSWER_S / 5)
        writer.write(b"0\r\n\r\n")

    async def _flood(self, writer: asyncio.StreamWriter) -> None:
        """An endless SSE stream, written as fast as the gateway takes it."""
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        frame = b'event: RunContent\ndata: {"event":"RunContent","content":"' + b"x" * 4000 + b'"}\n\n'
        chunk = f"{len(frame):x}\r\n".encode() + frame + b"\r\n"
        while True:
            writer.write(chunk)
            self.flood_sent += len(chunk)
            if writer.transport.get_write_buffer_size() > 48 * 1024:
                self.flood_blocked.set()  # the socket is full and writes queue here: nobody reads
            await writer.drain()

    @staticmethod
    def _json(writer: asyncio.StreamWriter, body: bytes, status: bytes = b"200 OK") -> None:
        writer.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body
        )

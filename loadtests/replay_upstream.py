"""A fast stand-in for an AgentOS server, answering from recorded AgentOS answers (``captures/``).

Used by the benchmark as the upstream, so what is measured is the proxy in front of it, not a
model. A raw asyncio HTTP/1.1 server (uvloop when installed), keep-alive, no framework:

* ``GET /health``: ``{"status": "ok", "instantiated_at": ...}`` (this process's start).
* ``GET /config``: the recorded ``/config`` (serves ``echo-agent``, ``echo-team``, ``echo-workflow``).
* ``POST /agents/echo-agent/runs`` (form, as AgentOS): ``stream=false`` answers the recorded
  non-stream ``RunOutput`` JSON (about 1 KB, with the form's ``run_id`` and ``session_id``);
  otherwise (AgentOS's default) the recorded SSE frames, one HTTP chunk per event:
  ``RunStarted, ModelRequestStarted, RunContent x (N - 5), ModelRequestCompleted,
  RunContentCompleted, RunCompleted``. Every frame's JSON carries ``"bench_sent_ns"``: this
  process's ``time.monotonic_ns()`` just before the frame was written (the same clock as any
  other process on the host), so a client can tell how long the frame took to reach it.
  Form fields (also passed through a proxy, which forwards the form as it came):

  * ``bench_events``: N, the number of events (default ``--events``, 50; at least 5);
  * ``bench_interval_ms``: pause before each event after the first (default ``--interval-ms``, 0);
  * ``bench_hold=true``: send ``RunStarted``, then stay silent until the client leaves or the
    run is cancelled (an idle open stream).

* ``POST /agents/echo-agent/runs/{run_id}/cancel``: ``{}``; a stream of that run still going ends
  with ``RunCancelled`` and ``RunCompleted``, as AgentOS.
* ``GET /stats``: counters. ``cancelled_by_disconnect``: streams whose client went away before
  the last event; ``cancelled_by_request``: runs a cancel reached while they streamed;
  ``cancelled_runs``: distinct runs cancelled either way (a proxy may do both).

    python loadtests/replay_upstream.py [--host 127.0.0.1] [--port 7790 | --fd N] [--events 50] [--interval-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple
from urllib.parse import parse_qsl

from open_files import raise_soft_limit

CAPTURES = Path(__file__).resolve().parent / "captures"
RUN_PLACEHOLDER = "@@RUN_ID@@"
SESSION_PLACEHOLDER = "@@SESSION_ID@@"
STAMP_FIELD = "bench_sent_ns"
MIN_EVENTS = 5
MAX_EVENTS = 100_000
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 10 * 1024 * 1024


# -- the recorded answers ----------------------------------------------------------------------------


def _capture_body(name: str, captures: Path) -> str:
    """The body of a recorded answer (``HTTP/1.1 ...`` head, blank line, body), or the whole file."""
    text = (captures / name).read_text(encoding="utf-8")
    if text.startswith("HTTP/"):
        text = text.split("\n\n", 1)[1] if "\n\n" in text else ""
    return text


def _frames(text: str) -> List[Tuple[str, dict]]:
    frames = []
    for block in text.split("\n\n"):
        lines = block.strip("\r\n").splitlines()
        event = next((line[7:] for line in lines if line.startswith("event: ")), None)
        data = next((line[6:] for line in lines if line.startswith("data: ")), None)
        if event and data:
            frames.append((event, json.loads(data)))
    return frames


def _with_ids(value: dict) -> dict:
    value = dict(value)
    if "run_id" in value:
        value["run_id"] = RUN_PLACEHOLDER
    if "session_id" in value:
        value["session_id"] = SESSION_PLACEHOLDER
    return value


class Answers:
    """Templates made once from the captures; filled with a run's ids per request."""

    def __init__(self, captures: Path = CAPTURES) -> None:
        config = json.loads(_capture_body("config.txt", captures))
        config["os_id"] = "replay-upstream"
        self.config = json.dumps(config, separators=(",", ":")).encode()
        instantiated_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.health = json.dumps({"status": "ok", "instantiated_at": instantiated_at}, separators=(",", ":")).encode()
        run = json.loads(_capture_body("agent_nonstream.txt", captures))
        self.run_parts = _split_ids(json.dumps(_with_ids(run), separators=(",", ":")))
        recorded = {event: data for event, data in _frames(_capture_body("agent_stream.txt", captures))}
        cancelled = {event: data for event, data in _frames(_capture_body("agent_cancel_stream.txt", captures))}
        self.frame_parts: Dict[str, Tuple[bytes, ...]] = {}
        for event, data in {**recorded, "RunCancelled": cancelled["RunCancelled"]}.items():
            data = _with_ids(data)
            if event == "RunContent":
                data["content"] = "word "
            if "reason" in data:
                data["reason"] = f"Run {RUN_PLACEHOLDER} was cancelled"
            head = f"event: {event}\ndata: " + json.dumps(data, separators=(",", ":"))[:-1] + f',"{STAMP_FIELD}":'
            self.frame_parts[event] = _split_ids(head)
        self.stream_start = ("RunStarted", "ModelRequestStarted")
        self.stream_end = ("ModelRequestCompleted", "RunContentCompleted", "RunCompleted")

    def run_json(self, run_id: str, session_id: str) -> bytes:
        return _fill(self.run_parts, run_id, session_id)

    def stream_heads(self, run_id: str, session_id: str, events: int) -> List[bytes]:
        """Each frame up to its stamp's value: the stamp and ``}\\n\\n`` are added when it is sent."""
        heads = {name: _fill(parts, run_id, session_id) for name, parts in self.frame_parts.items()}
        content = max(0, events - len(self.stream_start) - len(self.stream_end))
        names = [*self.stream_start, *(["RunContent"] * content), *self.stream_end]
        return [heads[name] for name in names]

    def cancel_heads(self, run_id: str, session_id: str) -> List[bytes]:
        return [_fill(self.frame_parts[name], run_id, session_id) for name in ("RunCancelled", "RunCompleted")]


def _split_ids(text: str) -> Tuple[bytes, ...]:
    """``text`` cut at each id placeholder: (literal, kind, literal, kind, ..., literal)."""
    parts: List[bytes] = []
    rest = text
    while True:
        positions = [(rest.find(p), p) for p in (RUN_PLACEHOLDER, SESSION_PLACEHOLDER) if p in rest]
        if not positions:
            parts.append(rest.encode())
            return tuple(parts)
        index, placeholder = min(positions)
        parts.append(rest[:index].encode())
        parts.append(b"R" if placeholder == RUN_PLACEHOLDER else b"S")
        rest = rest[index + len(placeholder) :]


def _fill(parts: Tuple[bytes, ...], run_id: str, session_id: str) -> bytes:
    run, session = json.dumps(run_id)[1:-1].encode(), json.dumps(session_id)[1:-1].encode()
    return b"".join(run if i % 2 and p == b"R" else session if i % 2 else p for i, p in enumerate(parts))


def _frame_chunk(head: bytes) -> bytes:
    """One SSE frame, stamped now, as one HTTP chunk."""
    frame = head + str(time.monotonic_ns()).encode() + b"}\n\n"
    return b"%x\r\n%b\r\n" % (len(frame), frame)


# -- the server ---------------------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.json_runs = 0
        self.streams_started = 0
        self.streams_completed = 0
        self.cancelled_by_disconnect = 0
        self.cancelled_by_request = 0
        self.cancels_received = 0
        self.cancelled: Set[str] = set()
        self.open_streams = 0

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "json_runs": self.json_runs,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "open_streams": self.open_streams,
            "cancels_received": self.cancels_received,
            "cancelled_by_disconnect": self.cancelled_by_disconnect,
            "cancelled_by_request": self.cancelled_by_request,
            "cancelled_runs": len(self.cancelled),
        }


class Stream:
    def __init__(self, run_id: str, session_id: str) -> None:
        self.run_id = run_id
        self.session_id = session_id
        self.done = False
        self.task: Optional[asyncio.Task] = None
        self.cancel_requested: Optional[asyncio.Event] = None  # hold mode only


class Upstream:
    """Shared state of the server: the answers, the counters, the streams going on by run id."""

    def __init__(self, answers: Answers, events: int, interval_ms: float) -> None:
        self.answers = answers
        self.events = events
        self.interval_ms = interval_ms
        self.stats = Stats()
        self.streams: Dict[str, "Connection"] = {}


def _status_line(status: int) -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 422: b"Unprocessable Entity"}
    return b"HTTP/1.1 %d %b\r\n" % (status, reason.get(status, b"Error"))


class Connection(asyncio.Protocol):
    def __init__(self, upstream: Upstream) -> None:
        self.up = upstream
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = bytearray()
        self.stream: Optional[Stream] = None
        self.close_after = False
        self.closed = False

    # -- transport events --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.stream is None and not self.closed:
            request = self._next_request()
            if request is None:
                return
            self._answer(*request)

    def eof_received(self) -> bool:
        self._gone()
        return False  # close our side too

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._gone()

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        stream = self.stream
        if stream is not None and not stream.done:
            stream.done = True
            stats = self.up.stats
            stats.cancelled_by_disconnect += 1
            stats.cancelled.add(stream.run_id)
            self._end_stream(stream)

    # -- parsing -----------------------------------------------------------------------------------

    def _next_request(self) -> Optional[Tuple[str, str, Dict[str, str], bytes]]:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._send_json(400, b'{"detail":"head too large"}', close=True)
            return None
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._send_json(400, b'{"detail":"bad request line"}', close=True)
            return None
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            decoded = _dechunk(self.buffer, start)
            if decoded is None:
                return None
            body, consumed = decoded
        else:
            length = int(headers.get("content-length") or 0)
            if length > MAX_BODY_BYTES:
                self._send_json(400, b'{"detail":"body too large"}', close=True)
                return None
            if len(self.buffer) < start + length:
                return None
            body, consumed = bytes(self.buffer[start : start + length]), start + length
        del self.buffer[:consumed]
        connection = headers.get("connection", "").lower()
        self.close_after = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        return method, target, headers, body

    # -- answering ---------------------------------------------------------------------------------

    def _answer(self, method: str, target: str, headers: Dict[str, str], body: bytes) -> None:
        up = self.up
        up.stats.requests += 1
        path, _, query = target.partition("?")
        if path == "/health" and method == "GET":
            return self._send_json(200, up.answers.health)
        if path == "/config" and method == "GET":
            return self._send_json(200, up.answers.config)
        if path == "/stats" and method == "GET":
            return self._send_json(200, json.dumps(up.stats.as_dict()).encode())
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "agents" and parts[2] == "runs":
            if parts[1] != "echo-agent":
                return self._send_json(404, b'{"detail":"Agent not found"}')
            if method != "POST":
                return self._send_json(405, b'{"detail":"Method Not Allowed"}')
            if len(parts) == 3:
                return self._run(headers, body, query)
            if len(parts) == 5 and parts[4] == "cancel":
                return self._cancel(parts[3])
        return self._send_json(404, b'{"detail":"Not Found"}')

    def _run(self, headers: Dict[str, str], body: bytes, query: str) -> None:
        content_type = headers.get("content-type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            return self._send_json(
                422, b'{"detail":[{"type":"missing","loc":["body","message"],"msg":"Field required","input":null}]}'
            )
        form = dict(parse_qsl(query))
        form.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        run_id = form.get("run_id") or str(uuid.uuid4())
        session_id = form.get("session_id") or str(uuid.uuid4())
        if form.get("stream", "true").lower() in ("false", "0", "no", "off"):
            self.up.stats.json_runs += 1
            return self._send_json(200, self.up.answers.run_json(run_id, session_id))
        try:
            events = min(MAX_EVENTS, max(MIN_EVENTS, int(form.get("bench_events") or self.up.events)))
            interval_s = float(form.get("bench_interval_ms") or self.up.interval_ms) / 1000.0
        except ValueError:
            return self._send_json(422, b'{"detail":"bench_events / bench_interval_ms: not a number"}')
        hold = form.get("bench_hold", "").lower() in ("true", "1", "yes", "on")
        self._stream(run_id, session_id, events, interval_s, hold)

    def _stream(self, run_id: str, session_id: str, events: int, interval_s: float, hold: bool) -> None:
        up = self.up
        stream = Stream(run_id, session_id)
        self.stream = stream
        up.stats.streams_started += 1
        up.stats.open_streams += 1
        up.streams[run_id] = self
        transport = self.transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\nvary: Origin\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        heads = up.answers.stream_heads(run_id, session_id, events)
        if hold:
            transport.write(_frame_chunk(heads[0]))
            stream.cancel_requested = asyncio.Event()
            stream.task = asyncio.ensure_future(self._hold(stream))
        elif interval_s <= 0:
            for head in heads:
                transport.write(_frame_chunk(head))
            self._finish(stream)
        else:
            transport.write(_frame_chunk(heads[0]))
            stream.task = asyncio.ensure_future(self._paced(stream, heads[1:], interval_s))

    async def _paced(self, stream: Stream, heads: List[bytes], interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        for head in heads:
            due += interval_s
            await asyncio.sleep(max(0.0, due - loop.time()))
            if stream.done:
                return
            self.transport.write(_frame_chunk(head))  # type: ignore[union-attr]
        self._finish(stream)

    async def _hold(self, stream: Stream) -> None:
        await stream.cancel_requested.wait()  # type: ignore[union-attr]

    def _cancel(self, run_id: str) -> None:
        up = self.up
        up.stats.cancels_received += 1
        owner = up.streams.get(run_id)
        if owner is not None and owner.stream is not None and not owner.stream.done:
            stream = owner.stream
            up.stats.cancelled_by_request += 1
            up.stats.cancelled.add(run_id)
            for head in up.answers.cancel_heads(stream.run_id, stream.session_id):
                owner.transport.write(_frame_chunk(head))  # type: ignore[union-attr]
            owner._finish(stream)
        self._send_json(200, b"{}")

    def _finish(self, stream: Stream) -> None:
        """The last event was sent: end the chunked body; the connection takes the next request."""
        stream.done = True
        self.up.stats.streams_completed += 1
        self._end_stream(stream)
        if self.transport is not None and not self.closed:
            self.transport.write(b"0\r\n\r\n")
            if self.close_after:
                self.closed = True
                self.transport.close()
            elif self.buffer:
                self.data_received(b"")

    def _end_stream(self, stream: Stream) -> None:
        up = self.up
        up.stats.open_streams -= 1
        if up.streams.get(stream.run_id) is self:
            del up.streams[stream.run_id]
        if stream.task is not None and stream.task is not asyncio.current_task():
            stream.task.cancel()
        if stream.cancel_requested is not None:
            stream.cancel_requested.set()
        self.stream = None

    def _send_json(self, status: int, body: bytes, close: bool = False) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        transport.write(
            _status_line(status)
            + b"content-type: application/json\r\ncontent-length: %d\r\nvary: Origin\r\n\r\n" % len(body)
            + body
        )
        if close or self.close_after:
            self.closed = True
            transport.close()


def _dechunk(buffer: bytearray, start: int) -> Optional[Tuple[bytes, int]]:
    """A chunked request body from ``buffer[start:]``: (body, end offset), or None when incomplete."""
    body = bytearray()
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";")[0] or b"0", 16)
        position = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n", position)
            if trailer_end < 0:
                return None
            return bytes(body), trailer_end + 2  # (trailers are not expected and not kept)
        if len(buffer) < position + size + 2:
            return None
        body += buffer[position : position + size]
        position += size + 2


async def serve(sock: socket.socket, events: int, interval_ms: float, captures: Path = CAPTURES) -> None:
    upstream = Upstream(Answers(captures), events, interval_ms)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(upstream), sock=sock, backlog=4096)
    async with server:
        await server.serve_forever()


def _socket(host: str, port: int, fd: Optional[int]) -> socket.socket:
    if fd is not None:
        return socket.socket(fileno=fd)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    return sock


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7790)
    parser.add_argument("--fd", type=int, help="serve on this inherited listening socket")
    parser.add_argument("--events", type=int, default=50, help="events per stream (default 50)")
    parser.add_argument("--interval-ms", type=float, default=0.0, help="pause before each event after the first")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's own loop")
    args = parser.parse_args(argv)
    raise_soft_limit()  # one socket per held stream: the bench holds thousands
    sock = _socket(args.host, args.port, args.fd)
    sock.setblocking(False)
    runner = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    try:
        runner(serve(sock, args.events, args.interval_ms))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The request observer's own output: its log line is JSON whatever the path holds."""

from __future__ import annotations

import io
import json

from gateway.api.observe import ObserveMiddleware, new_traceparent
from gateway.logs import AccessLogWriter


async def test_the_access_line_is_json_for_any_path() -> None:
    async def route(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    writer = AccessLogWriter(io.StringIO())
    observer = ObserveMiddleware(route, access_log=True)
    observer.observer.access_log = writer
    path = '/v1/agents/"quoted"\\\n\u202e/run'
    sent = []

    async def send(message) -> None:  # type: ignore[no-untyped-def]
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"x-request-id", b"bad id")]}
    await observer(scope, None, send)
    writer.flush()
    (line,) = writer.stream.getvalue().splitlines()  # type: ignore[union-attr]
    entry = json.loads(line)
    assert entry["path"] == path and entry["status"] == 404 and entry["entity"] is None
    assert dict(sent[0]["headers"])[b"x-request-id"].decode() == entry["request_id"] != "bad id"


def test_traceparent_continues_a_trace_or_starts_one() -> None:
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    continued = new_traceparent(incoming, "a" * 48)
    assert continued == "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "a" * 16 + "-00"
    for bad in (None, "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", incoming.upper()):
        started = new_traceparent(bad, "b" * 48)
        assert started == "00-" + "b" * 32 + "-" + "b" * 16 + "-01"

"""Request-body size limit, answered as every other error: JSON ``{"detail": ...}`` with 413.

A declared Content-Length over the limit is refused before the app runs. A body without one
(chunked) is counted as it arrives, and reading past the limit raises an ``HTTPException`` that
FastAPI's exception handling turns into the same 413. Nothing past the limit is ever buffered.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.detail = f"Request body too large: the limit is {max_bytes} bytes"
        self._body = json.dumps({"detail": self.detail}).encode()
        self._headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(self._body))]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_bytes:
            await send({"type": "http.response.start", "status": 413, "headers": self._headers})
            await send({"type": "http.response.body", "body": self._body})
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413, detail=self.detail)
            return message

        await self.app(scope, counted_receive, send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0  # a malformed length is the HTTP server's to refuse
    return 0

"""uvicorn's httptools protocol with nginx's ``client_header_timeout``, and JSON for its own 400s.

The app runs only once a request's head is complete, so a client that sends part of a head and
then waits (slowloris) is invisible to it, and uvicorn has no timeout for that: each such client
would hold a connection for ever. Here a timer starts when a connection opens and when a request's
first bytes arrive, and stops when its head is complete. On expiry a client that began a head is
answered 408 (``Connection: close``); the connection is closed either way. An idle connection
between requests stays uvicorn's (``timeout_keep_alive``).

uvicorn answers a request httptools cannot parse (a malformed head, chunk size or
``Transfer-Encoding``) itself, in plain text, and closes; here that answer is the gateway's JSON.
Both answers are made by ``error_response``, as every other error of the gateway.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.api.errors import error_response
from gateway.errors import BadRequest, GatewayError, RequestTimeout


class GatewayHttpProtocol(HttpToolsProtocol):
    """Given to ``uvicorn.Config(http=...)`` as ``functools.partial(GatewayHttpProtocol,
    header_timeout_s=...)``: a partial of a module-level class pickles, so ``--workers`` (spawned
    processes) get it too."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self._head_timer: Optional[asyncio.TimerHandle] = None
        self._head_begun = False  # bytes of a head arrived: the client is owed an answer

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        self._head_begun = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(self._raw_answer(BadRequest(msg)))
        self.transport.close()

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head behind an answer still being sent: nothing may be written in the
            # middle of that answer; the connection closes once it is sent.
            self.cycle.keep_alive = False
            return
        if self._head_begun:
            detail = f"Request header timeout: not complete after {self.header_timeout_s:g} s"
            self.transport.write(self._raw_answer(RequestTimeout(detail)))
        self.transport.close()

    def _raw_answer(self, error: GatewayError) -> bytes:
        """``error_response(error)`` as bytes, with uvicorn's default headers (date, server); the
        connection is closed after it."""
        response = error_response(error)
        headers = [*self.server_state.default_headers, *response.raw_headers]
        if not any(name == b"connection" for name, _ in headers):
            headers.append((b"connection", b"close"))
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        return STATUS_LINE[response.status_code] + head + b"\r\n" + bytes(response.body)

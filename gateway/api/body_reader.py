"""The one reader of request bodies: every part of the app reads a body through it.

``BodyLimits`` holds the limits and reads a body whole within them (the fast run path reads its
runs' bodies so); ``BodyReaderMiddleware`` applies the same limits to everything inside it (the
routes), wrapping ``receive``. A body that cannot be read whole ends with an error, never as a
shorter body:

* a declared Content-Length over ``max_body_bytes`` is refused before the app runs; a body without
  one (chunked) is counted as it arrives, and reading past the limit raises ``BodyTooLarge`` (413).
  Nothing past the limit is ever buffered.
* ``http.disconnect`` before the body's last chunk raises ``IncompleteBody`` (400). uvicorn sends
  it when the client closes mid-body, and also when httptools refuses the framing (a malformed
  chunk size, an unknown ``Transfer-Encoding``): uvicorn then answers 400 itself and closes, but
  the app, started once the head was complete, only sees the disconnect. So a body that ends
  early is never mistaken for a whole one, and never forwarded.
* nothing new for ``timeout_s`` while the body is incomplete raises ``RequestTimeout`` (408, the
  connection closed): nginx's ``client_body_timeout``, the time between two reads, not the whole
  body. Once the body is whole, ``receive()`` only waits for the client to leave, for as long as
  the answer takes: no timeout then.

Once the body has failed, its error is the answer (``error_response``), whatever the app made of
it: FastAPI turns any error raised while it parses a body into a 400 "error parsing the body".
"""

from __future__ import annotations

from typing import Optional

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.errors import error_response
from gateway.api.request_head import declared_length, request_header
from gateway.deadline import Deadline
from gateway.errors import BodyTooLarge, ClientError, IncompleteBody, RequestTimeout

INCOMPLETE = "Incomplete request body: the connection ended before the body did"


class BodyLimits:
    """The limits a body is read within, and the one way to read a body whole within them."""

    def __init__(self, *, max_bytes: int, timeout_s: float) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.too_large = f"Request body too large: the limit is {max_bytes} bytes"
        self.too_slow = f"Request body timeout: nothing received for {timeout_s:g} s"

    async def next_message(self, receive: Receive) -> Message:
        """The next part of a body still incomplete: within ``timeout_s``, never a disconnect."""
        try:
            with Deadline(self.timeout_s):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout(self.too_slow) from None
        if message["type"] == "http.disconnect":
            raise IncompleteBody(INCOMPLETE)
        return message

    async def read_whole(self, receive: Receive) -> bytes:
        """The whole body, or the ``ClientError`` that ends it (413, 408, 400)."""
        chunks = []
        received = 0
        while True:
            message = await self.next_message(receive)
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                raise BodyTooLarge(self.too_large)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class BodyReaderMiddleware:
    def __init__(self, app: ASGIApp, *, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits
        if declared_length(request_header(scope, b"content-length")) > limits.max_bytes:
            await error_response(BodyTooLarge(limits.too_large))(scope, receive, send)
            return
        received = 0
        whole = False
        failure: Optional[ClientError] = None
        app_answering = replaced = False

        async def read() -> Message:
            nonlocal received, whole, failure
            if whole:
                return await receive()  # the client leaving, whenever it does
            if failure is not None:
                raise failure  # a failed body never reads as anything else
            try:
                message = await limits.next_message(receive)
            except ClientError as error:
                failure = error
                raise
            received += len(message.get("body", b""))
            if received > limits.max_bytes:
                failure = BodyTooLarge(limits.too_large)
                raise failure
            whole = not message.get("more_body", False)
            return message

        async def answer(message: Message) -> None:
            nonlocal app_answering, replaced
            if replaced:
                return
            if message["type"] == "http.response.start" and failure is not None:
                replaced = True
                await error_response(failure)(scope, receive, send)
                return
            app_answering = True
            await send(message)

        try:
            await self.app(scope, read, answer)
        except Exception:
            if failure is None or app_answering:
                raise
        if failure is not None and not (replaced or app_answering):  # went up unanswered, or swallowed
            await error_response(failure)(scope, receive, send)

"""A request's head as the gateway reads it: one pass over the headers for all the layers."""

from __future__ import annotations

from typing import Optional

from starlette.types import Scope


class RequestHead:
    """What the gateway reads of a request's headers, in one pass: their size, its request id and
    trace context, and what the fast run path needs (``api/fast_path.py``). A repeated
    Content-Type, Content-Length or Authorization counts by its first value, as ``request_header``
    and Starlette read them; a repeated request id or traceparent by its last."""

    __slots__ = ("size", "request_id", "traceparent", "content_type", "content_length", "authorization", "origin")
    size: int
    request_id: Optional[str]
    traceparent: Optional[str]
    content_type: str
    content_length: int
    authorization: Optional[bytes]
    origin: bool

    def __init__(self, scope: Scope) -> None:
        size = 0
        self.request_id = self.traceparent = None
        self.authorization = None
        content_type: Optional[bytes] = None
        content_length: Optional[bytes] = None
        self.origin = False
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4
            if name == b"content-type":
                content_type = value if content_type is None else content_type
            elif name == b"content-length":
                content_length = value if content_length is None else content_length
            elif name == b"authorization":
                self.authorization = value if self.authorization is None else self.authorization
            elif name == b"x-request-id":
                self.request_id = value.decode("latin-1")
            elif name == b"traceparent":
                self.traceparent = value.decode("latin-1")
            elif name == b"origin":
                self.origin = True
        self.size = size
        self.content_type = content_type.decode("latin-1") if content_type is not None else ""
        self.content_length = declared_length(content_length)


def declared_length(value: Optional[bytes]) -> int:
    """A Content-Length header's length; -1 when there is none (or it is malformed: the HTTP
    server's to refuse)."""
    return int(value) if value is not None and value.isdigit() else -1


def request_header(scope: Scope, name: bytes) -> Optional[bytes]:
    """The first value of header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None

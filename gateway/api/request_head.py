"""A request's head as the gateway reads it: one pass over the headers for all the layers."""

from __future__ import annotations

from typing import Optional

from starlette.types import Scope


class RequestHead:
    """What the gateway reads of a request's headers, in one pass: their size, its request id and
    trace context, and what the fast run path needs (``api/fast_path.py``)."""

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
        self.content_type = ""
        self.content_length = -1  # none declared (or malformed: the HTTP server's to refuse)
        self.origin = False
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4
            if name == b"content-type":
                self.content_type = value.decode("latin-1")
            elif name == b"content-length":
                self.content_length = int(value) if value.isdigit() else -1
            elif name == b"authorization":
                self.authorization = value
            elif name == b"x-request-id":
                self.request_id = value.decode("latin-1")
            elif name == b"traceparent":
                self.traceparent = value.decode("latin-1")
            elif name == b"origin":
                self.origin = True
        self.size = size


def request_header(scope: Scope, name: bytes) -> Optional[bytes]:
    """The first value of header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None

"""The HTTP doors (AG-UI, A2A, MCP): from a route table match to the door's own rule.

``Passthrough`` (``api/passthrough.py``) hands every ``Rule.DOOR`` route here, with the door the
path is under (``membership.door_path``). The upstreams are those that serve that door at that
prefix; the upstream path is the route's template under the prefix, each parameter encoded
(never the client's raw path). Each door's module says how its conversation is kept:

* AG-UI (``doors/agui.py``): the body's ``threadId``;
* A2A (``doors/a2a.py``): the message's ``contextId``;
* MCP (``doors/mcp.py``): the ``Mcp-Session-Id`` the upstream issued.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Dict, List, Optional

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.forwarding import Forwarder, query, segment
from gateway.api.route_table import Match
from gateway.doors.membership import DEFAULT_PREFIX, Door, DoorPath
from gateway.doors.membership import door_path as find_door_path
from gateway.errors import NotFound
from gateway.pool import Upstream
from gateway.sender import Outgoing

NOT_FOUND = "Not Found"

# A door's handler: (request, forwarder, the route matched, the door's path, its upstreams).
DoorHandler = Callable[[Request, Forwarder, Match, DoorPath, List[Upstream]], Awaitable[Response]]


def upstream_path(request: Request, matched: Match, door: DoorPath) -> str:
    """The upstream URL's path and query: the route's template under the door's prefix, each
    parameter encoded, the query encoded again."""
    assert matched.route is not None
    canonical = matched.route.path(matched.params, segment)
    return door.prefix + canonical[len(DEFAULT_PREFIX[door.door]):] + query(request.url.query)


def outgoing_for(request: Request, matched: Match, door: DoorPath, body: Optional[bytes], stream: bool) -> Outgoing:
    outgoing = Outgoing(request.method, upstream_path(request, matched, door), body=body or None, expects_stream=stream)
    content_type = request.headers.get("content-type")
    if content_type:
        outgoing.headers["Content-Type"] = content_type
    return outgoing


def json_object(body: bytes) -> Optional[Dict[str, Any]]:
    """The body as a JSON object; None when it is not one."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def text_at(value: Any, *keys: str) -> Optional[str]:
    """``value[k1][k2]...`` when it is a non-empty string; None otherwise."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, str) and value else None


class Doors:
    """The door handlers by door; ``answer`` is what ``Passthrough`` calls."""

    def __init__(self, forwarder: Forwarder, handlers: Dict[Door, DoorHandler]) -> None:
        self.forwarder = forwarder
        self.handlers = handlers

    def door_path(self, path: str) -> Optional[DoorPath]:
        return find_door_path(path, self.forwarder.pool.served_doors())

    async def answer(self, request: Request, matched: Match, door: Optional[DoorPath]) -> Response:
        handler = self.handlers.get(door.door) if door is not None else None
        upstreams = self.forwarder.pool.serving_door(door.door, door.prefix) if door is not None else []
        if handler is None or door is None or not upstreams:
            raise NotFound(NOT_FOUND)  # as an AgentOS without the door answers
        return await handler(request, self.forwarder, matched, door, upstreams)

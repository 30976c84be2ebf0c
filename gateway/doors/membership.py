"""Which of AgentOS's other doors an upstream serves, and where: pure, no I/O.

An AgentOS says it in two answers the probes read:

* ``GET /config`` ``interfaces[]``: ``{"type": "agui" | "a2a" | ..., "route": prefix}``. AG-UI
  answers at ``prefix + "/agui"`` (and ``prefix + "/status"``), A2A under ``prefix`` (``/a2a``).
* ``GET /info`` ``mcp``: ``{"enabled": true, "path": "/mcp"}``: the MCP transport's path.
* The workflow WebSocket (``/workflows/ws``) is always there.

A door is ``(Door, prefix)``. The gateway serves each door at the path its upstreams serve it
(clients use the paths they would use against the AgentOS), and routes it only to the upstreams
that report that door at that prefix. The route table (``api/route_table.py``) declares each door's
routes at agno's default prefixes; ``canonical_path`` maps a path under another prefix to the
table's, for the keys' permissions, the limits and the metrics' labels.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, Mapping, Optional, Tuple


class Door(enum.Enum):
    AGUI = "agui"
    A2A = "a2a"
    MCP = "mcp"
    WEBSOCKET = "websocket"


WEBSOCKET_PATH = "/workflows/ws"

# agno's default mount of each door: the route table's templates are written under these.
DEFAULT_PREFIX: Dict[Door, str] = {Door.AGUI: "", Door.A2A: "/a2a", Door.MCP: "/mcp", Door.WEBSOCKET: WEBSOCKET_PATH}

# A prefix the gateway accepts from an upstream's answer: plain segments only (what agno's own
# MCPConfig checks), so a prefix cannot smuggle dots, encoded bytes or a query into a path.
_PREFIX = re.compile(r"(?:/[A-Za-z0-9_.~-]+)*")

ServedDoor = Tuple[Door, str]


def doors_of(config: Optional[Mapping[str, Any]], info: Optional[Mapping[str, Any]]) -> FrozenSet[ServedDoor]:
    """The doors an upstream serves, from its ``/config`` and ``/info`` answers (either may be
    missing or malformed: what cannot be read is not served)."""
    served = {(Door.WEBSOCKET, WEBSOCKET_PATH)}
    interfaces = config.get("interfaces") if isinstance(config, Mapping) else None
    for interface in interfaces if isinstance(interfaces, list) else ():
        if not isinstance(interface, Mapping):
            continue
        kind, prefix = interface.get("type"), interface.get("route")
        if kind in (Door.AGUI.value, Door.A2A.value) and isinstance(prefix, str) and _plain(prefix.rstrip("/")):
            served.add((Door(kind), prefix.rstrip("/")))
    mcp = info.get("mcp") if isinstance(info, Mapping) else None
    if isinstance(mcp, Mapping) and mcp.get("enabled") is True:
        path = mcp.get("path")
        path = path.rstrip("/") if isinstance(path, str) else DEFAULT_PREFIX[Door.MCP]
        if path and _plain(path):
            served.add((Door.MCP, path))
    return frozenset(served)


def door_route(door: Door, prefix: str) -> str:
    """Where a door served at ``prefix`` is reached (AG-UI's ``POST``; A2A's routes under it)."""
    if door is Door.AGUI:
        return f"{prefix}/agui"
    if door is Door.A2A:
        return f"{prefix}/..."
    return prefix


def _plain(prefix: str) -> bool:
    return _PREFIX.fullmatch(prefix) is not None and "/./" not in prefix + "/" and "/../" not in prefix + "/"


@dataclass(frozen=True)
class DoorPath:
    """A request path under a door: the door, the prefix it is served at, and the path the
    route table knows it by (the same path under agno's default prefix)."""

    door: Door
    prefix: str
    canonical: str


def door_path(path: str, served: Iterable[ServedDoor]) -> Optional[DoorPath]:
    """The door ``path`` (decoded) is under, among the ``served`` doors; None when none.

    AG-UI: ``prefix/agui`` and ``prefix/status``; A2A: ``prefix/...``; MCP: ``path`` itself (and
    with a trailing slash); the WebSocket: its one path. The longest prefix wins."""
    best: Optional[DoorPath] = None
    for door, prefix in served:
        rest = _rest(door, prefix, path)
        if rest is None or (best is not None and len(best.prefix) >= len(prefix)):
            continue
        best = DoorPath(door, prefix, DEFAULT_PREFIX[door] + rest)
    return best


def _rest(door: Door, prefix: str, path: str) -> Optional[str]:
    if door is Door.AGUI:
        return path[len(prefix):] if path in (prefix + "/agui", prefix + "/status") else None
    if door is Door.A2A:
        return path[len(prefix):] if path.startswith(prefix + "/") else None
    if door is Door.MCP:
        return "" if path in (prefix, prefix + "/") else None
    return "" if path == prefix else None

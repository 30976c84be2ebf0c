"""Which doors an upstream serves, and which door a path is under (``gateway/doors/membership.py``):
pure, from AgentOS's own answers (``/config`` interfaces, ``/info`` mcp), malformed ones included."""

from __future__ import annotations

from typing import Any, Dict, Optional

import pytest

from gateway.api.route_table import TABLE, Rule
from gateway.doors.membership import Door, DoorPath, door_path, doors_of

WS = (Door.WEBSOCKET, "/workflows/ws")


def test_doors_from_agentos_answers() -> None:
    config = {"interfaces": [{"type": "agui", "version": "1.0", "route": ""}, {"type": "a2a", "route": "/a2a"}]}
    info = {"mcp": {"enabled": True, "path": "/mcp"}}
    assert doors_of(config, info) == {(Door.AGUI, ""), (Door.A2A, "/a2a"), (Door.MCP, "/mcp"), WS}
    assert doors_of({"interfaces": None}, {"mcp": {"enabled": False, "path": None}}) == {WS}
    assert doors_of(None, None) == {WS}  # the WebSocket is on every AgentOS


@pytest.mark.parametrize(
    "config, info",
    [
        ({"interfaces": "agui"}, {"mcp": "yes"}),
        ({"interfaces": [None, 3, {"type": "agui"}, {"type": "agui", "route": 7}]}, {"mcp": {"enabled": "true"}}),
        ({"interfaces": [{"type": "slack", "route": "/slack"}]}, {"mcp": {"enabled": True, "path": "/"}}),
        # a prefix that could reshape a path is not taken
        ({"interfaces": [{"type": "agui", "route": "/a/../b"}, {"type": "a2a", "route": "/x?y"}]}, {"mcp": {"enabled": True, "path": "/m%2F"}}),
        ({"interfaces": [{"type": "a2a", "route": "a2a"}]}, {"mcp": {"enabled": True, "path": "/m cp"}}),
    ],
)
def test_malformed_answers_serve_no_door(config: Dict[str, Any], info: Dict[str, Any]) -> None:
    assert doors_of(config, info) == {WS}


def test_mcp_without_a_path_is_at_agnos_default() -> None:
    assert (Door.MCP, "/mcp") in doors_of({}, {"mcp": {"enabled": True}})


SERVED = frozenset({(Door.AGUI, ""), (Door.AGUI, "/chat"), (Door.A2A, "/a2a"), (Door.A2A, "/v2/a2a"), (Door.MCP, "/tools/mcp"), WS})


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/agui", DoorPath(Door.AGUI, "", "/agui")),
        ("/status", DoorPath(Door.AGUI, "", "/status")),
        ("/chat/agui", DoorPath(Door.AGUI, "/chat", "/agui")),
        ("/a2a/agents/x/v1/message:send", DoorPath(Door.A2A, "/a2a", "/a2a/agents/x/v1/message:send")),
        ("/v2/a2a/teams/t/.well-known/agent-card.json", DoorPath(Door.A2A, "/v2/a2a", "/a2a/teams/t/.well-known/agent-card.json")),
        ("/tools/mcp", DoorPath(Door.MCP, "/tools/mcp", "/mcp")),
        ("/tools/mcp/", DoorPath(Door.MCP, "/tools/mcp", "/mcp")),
        ("/workflows/ws", DoorPath(Door.WEBSOCKET, "/workflows/ws", "/workflows/ws")),
        ("/mcp", None),  # no upstream serves MCP there
        ("/chat/agui/x", None),
        ("/a2a", None),
        ("/agents/echo-agent/runs", None),
    ],
)
def test_door_path(path: str, expected: Optional[DoorPath]) -> None:
    assert door_path(path, SERVED) == expected


def test_each_canonical_door_path_is_a_table_route() -> None:
    for path, method in (("/chat/agui", "POST"), ("/v2/a2a/agents/x/v1/message:stream", "POST"), ("/tools/mcp", "DELETE")):
        found = door_path(path, SERVED)
        assert found is not None
        matched = TABLE.match(method, found.canonical)
        assert matched is not None and matched.route is not None and matched.route.rule is Rule.DOOR
        assert matched.route.door == found.door.value

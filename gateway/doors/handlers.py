"""Each HTTP door's handler, by door (``http.Doors`` dispatches to them)."""

from __future__ import annotations

from typing import Dict

from gateway.doors import a2a, agui, mcp
from gateway.doors.http import DoorHandler
from gateway.doors.membership import Door

HANDLERS: Dict[Door, DoorHandler] = {Door.AGUI: agui.answer, Door.A2A: a2a.answer, Door.MCP: mcp.answer}

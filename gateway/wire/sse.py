"""Server-sent events exactly as AgentOS frames them, and the line parser agno's client uses.

A frame is ``event: <Name>\\ndata: <one-line compact JSON>\\n\\n``; the JSON always carries an
``"event"`` key, which is what clients read. No ``id:``, no ``retry:``, no end sentinel: a stream
ends when the body ends. Comment lines (``: keepalive``) are skipped by every reader.
"""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, Dict

from agno.run.base import BaseRunOutputEvent

logger = logging.getLogger(__name__)

DATA_PREFIX = "data: "


def format_frame(event: BaseRunOutputEvent) -> str:
    """One SSE frame, byte for byte as AgentOS's ``format_sse_event`` writes it."""
    payload = event.to_json(separators=(",", ":"), indent=None)
    return f"event: {event.event or 'message'}\ndata: {payload}\n\n"


async def iter_data(lines: AsyncIterator[str]) -> AsyncIterator[Dict[str, Any]]:
    """The JSON objects of a stream's ``data:`` lines; malformed lines are logged and skipped.

    Skipping (not raising) is agno's own client behaviour: one frame a newer server emits that this
    reader cannot parse must not end a run the server is still producing.
    """
    async for line in lines:
        if not line.startswith(DATA_PREFIX):
            continue  # blank separators, event: lines, comments
        try:
            data = json.loads(line[len(DATA_PREFIX) :])
        except json.JSONDecodeError:
            logger.warning("skipping an SSE data line that is not JSON: %.100s", line)
            continue
        if isinstance(data, dict):
            yield data
        else:
            logger.warning("skipping an SSE data line that is not a JSON object: %.100s", line)

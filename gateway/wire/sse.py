"""Server-sent events exactly as AgentOS frames them, and the line parser agno's client uses.

A frame is ``event: <Name>\\ndata: <one-line compact JSON>\\n\\n``; the JSON always carries an
``"event"`` key, which is what clients read. No ``id:``, no ``retry:``, no end sentinel: a stream
ends when the body ends. Comment lines (``: keepalive``) are skipped by every reader.
"""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, Dict, Optional

from agno.run.base import BaseRunOutputEvent

logger = logging.getLogger(__name__)

DATA_PREFIX = "data: "

# The events after which a run's stream carries nothing more of the run (a cancelled run's stream
# ends RunCancelled then RunCompleted; a paused one waits for a continue request).
TERMINAL_EVENTS = frozenset(
    {
        "RunCompleted", "RunError", "RunCancelled", "RunPaused",
        "TeamRunCompleted", "TeamRunError", "TeamRunCancelled", "TeamRunPaused",
        "WorkflowCompleted", "WorkflowError", "WorkflowCancelled",
    }
)  # fmt: skip
_EVENT_LINE = b"\nevent: "
_TERMINAL_NAMES = {name.encode(): name for name in TERMINAL_EVENTS}
_TAIL = len(_EVENT_LINE) + max(len(name) for name in _TERMINAL_NAMES) + 1  # a whole terminal line


class EndOfRunDetector:
    """What the bytes of a stream so far say, found by scanning, with no JSON parsing on the
    pass-through path: how many frames passed (each ends with a blank line) and the first
    terminal event (``ended``). A chunk may end mid-line, so the last bytes of the previous chunk
    are kept. An ``event:`` line cannot be forged by run content: data is one line of JSON, whose
    strings cannot hold a raw newline."""

    __slots__ = ("terminal", "frames", "_tail")

    def __init__(self) -> None:
        self.terminal: Optional[str] = None  # the first terminal event's name
        self.frames = 0
        self._tail = b"\n"  # the stream's first line starts a line too

    @property
    def ended(self) -> bool:
        return self.terminal is not None

    def feed(self, chunk: bytes) -> bool:
        self.frames += chunk.count(b"\n\n") + (self._tail[-1:] == b"\n" and chunk[:1] == b"\n")
        window = self._tail + chunk
        start = window.find(_EVENT_LINE) if self.terminal is None else -1
        while start >= 0:  # each event line in order: the earliest terminal one (RunCancelled before its RunCompleted)
            name_at = start + len(_EVENT_LINE)
            end = window.find(b"\n", name_at)
            if end < 0:
                break  # a line cut by the chunk's end: the tail keeps it for the next chunk
            self.terminal = _TERMINAL_NAMES.get(window[name_at:end])
            if self.terminal is not None:
                break
            start = window.find(_EVENT_LINE, end)
        self._tail = window[-_TAIL:]
        return self.terminal is not None


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

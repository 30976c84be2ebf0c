"""Which upstream issued which MCP session: ``Mcp-Session-Id -> upstream name``. Pure, no I/O.

AgentOS's MCP server keeps a session in its process's memory: every request of the session must
reach the upstream that answered its ``initialize`` (``doors/mcp.py``). The ids come from the
upstreams (or from clients, confirmed by an upstream's read-back), so they are short; the record is
bounded in bytes all the same, like the run record (``run_owners.py``): each entry is charged the
size in memory of its id plus a fixed overhead (the upstream's name is the pool's own string,
shared), and the oldest entries go first when either bound is reached.

An entry expires ``ttl_s`` after its last use (each use refreshes it and moves it to the back, so
the dict stays in expiry order); expired entries are dropped lazily, at the front, whenever one is
added, and an expired entry is never answered. The bounds are the settings' (``doors.mcp_session_ttl_s``,
``doors.mcp_max_sessions``), applied again at every use by ``configure`` (a reload takes effect at
once).
"""

from __future__ import annotations

import collections
import sys
import time
from typing import Callable, Optional, Tuple

# What one entry costs besides its id: the ordered dict's slot and link, the (name, expiry) tuple
# and the float (tracemalloc on CPython 3.11, 50 000 to 100 000 entries: 171 bytes).
ENTRY_OVERHEAD_BYTES = 180
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


class McpSessions:
    def __init__(
        self,
        ttl_s: float,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        # session id -> (upstream name, expiry); the least recently used first.
        self._sessions: "collections.OrderedDict[str, Tuple[str, float]]" = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def configure(self, ttl_s: float, max_entries: int) -> None:
        """The settings in force: a new TTL counts from each entry's next use; a lower bound
        evicts the oldest at the next ``remember``."""
        self.ttl_s = ttl_s
        self.max_entries = max_entries

    def remember(self, session_id: str, upstream: str) -> None:
        """``upstream`` issued ``session_id`` (or answered for it)."""
        self.forget(session_id)
        self.sweep()
        self._sessions[session_id] = (upstream, self.clock() + self.ttl_s)
        self.bytes += _cost(session_id)
        while len(self._sessions) > self.max_entries or self.bytes > self.max_bytes:
            self.forget(next(iter(self._sessions)))

    def owner(self, session_id: str) -> Optional[str]:
        """The upstream that holds ``session_id``, if remembered and not expired; a use, which
        refreshes the entry."""
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        now = self.clock()
        if entry[1] <= now:
            self.forget(session_id)
            return None
        self._sessions[session_id] = (entry[0], now + self.ttl_s)
        self._sessions.move_to_end(session_id)
        return entry[0]

    def forget(self, session_id: str) -> None:
        if self._sessions.pop(session_id, None) is not None:
            self.bytes -= _cost(session_id)

    def sweep(self) -> int:
        """Drop the expired entries at the front; how many went."""
        now, dropped = self.clock(), 0
        while self._sessions:
            session_id, (_, expires) = next(iter(self._sessions.items()))
            if expires > now:
                break
            self.forget(session_id)
            dropped += 1
        return dropped


def _cost(session_id: str) -> int:
    return sys.getsizeof(session_id) + ENTRY_OVERHEAD_BYTES

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

import sys
from typing import Optional

from gateway.expiring import ExpiringRecord

# What one entry costs besides its id: the ordered dict's slot and link, the (name, expiry) tuple
# and the float (tracemalloc on CPython 3.11, 50 000 to 100 000 entries: 171 bytes).
ENTRY_OVERHEAD_BYTES = 180


class McpSessions(ExpiringRecord[str]):
    refresh_on_use = True  # a session lives while it is used

    def cost(self, session_id: str, upstream: str) -> int:
        return sys.getsizeof(session_id) + ENTRY_OVERHEAD_BYTES

    def configure(self, ttl_s: float, max_entries: int) -> None:
        """The settings in force: a new TTL counts from each entry's next use; a lower bound
        evicts the oldest at the next ``remember``."""
        self.ttl_s = ttl_s
        self.max_entries = max_entries

    def remember(self, session_id: str, upstream: str) -> None:
        """``upstream`` issued ``session_id`` (or answered for it)."""
        self.sweep()
        self.put(session_id, upstream)

    def owner(self, session_id: str) -> Optional[str]:
        """The upstream that holds ``session_id``, if remembered and not expired; a use, which
        refreshes the entry."""
        return self.get(session_id)

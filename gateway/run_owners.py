"""Which upstream runs which run: ``run_id -> upstream``, so a cancel, a continue or a read-back
reaches the run's own upstream.

Its keys come from clients, so it is bounded in bytes, not only in entries: each entry is
charged its id's size in memory plus a fixed overhead (the upstream's name is shared), and the oldest entries go first when
either bound is reached. Only runs an upstream accepted (a 2xx answer) are remembered. Entries
expire after ``ttl_s`` (a run cannot outlive the whole-run timeout by much); ``sweep`` drops the
expired ones and runs on a timer (``sweeping``), so an idle gateway gives the memory back too.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from typing import Callable, Optional, Tuple

# What one entry costs besides its id: the ordered dict's slot and link, the tuple and the float
# (tracemalloc on CPython 3.11: 171 bytes).
ENTRY_OVERHEAD_BYTES = 180
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


class RunOwners:
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
        # In insertion order, which is expiry order too (one TTL for all): the oldest first.
        self._owners: "collections.OrderedDict[str, Tuple[str, float]]" = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._owners)

    def remember(self, run_id: str, upstream: str) -> None:
        """``run_id`` was accepted by ``upstream`` (call only for a 2xx answer)."""
        self._forget(run_id)
        self._owners[run_id] = (upstream, self.clock() + self.ttl_s)
        self.bytes += _cost(run_id)
        while len(self._owners) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._owners))
            self._forget(oldest)

    def owner(self, run_id: str) -> Optional[str]:
        entry = self._owners.get(run_id)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            self._forget(run_id)
            return None
        return entry[0]

    def sweep(self) -> int:
        """Drop every expired entry; how many went."""
        now, dropped = self.clock(), 0
        while self._owners:
            run_id, (_, expires) = next(iter(self._owners.items()))
            if expires > now:
                break
            self._forget(run_id)
            dropped += 1
        return dropped

    async def sweeping(self, interval_s: float) -> None:
        """``sweep`` every ``interval_s``, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.sweep()

    def _forget(self, run_id: str) -> None:
        entry = self._owners.pop(run_id, None)
        if entry is not None:
            self.bytes -= _cost(run_id)


def _cost(run_id: str) -> int:
    return sys.getsizeof(run_id) + ENTRY_OVERHEAD_BYTES

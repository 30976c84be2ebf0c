"""Which upstream runs which run, for which entity, started with which client key:
``run_id -> RunRecord``, so a cancel, a continue or a read-back reaches the run's own upstream,
and a run-scoped request naming another entity is refused (``api/ownership.py``).

Its keys come from clients, so it is bounded in bytes, not only in entries: each entry is charged
the size in memory of the strings it holds (the run id, the entity id, the key's name; the
upstream's name is the pool's own, shared) plus a fixed overhead, and the oldest entries go first
when either bound is reached. Only runs an upstream accepted (a 2xx answer) are remembered.
Entries expire after ``ttl_s`` (a run cannot outlive the whole-run timeout by much); ``sweep``
drops the expired ones and runs on a timer (``sweeping``), so an idle gateway gives the memory
back too.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from typing import Callable, NamedTuple, Optional, Tuple

from gateway.wire.kinds import EntityKind

# What one entry costs besides its strings: the ordered dict's slot and link, the tuple of five
# and the float (tracemalloc on CPython 3.11, 50 000 to 100 000 entries: 196 bytes).
ENTRY_OVERHEAD_BYTES = 200
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


class RunRecord(NamedTuple):
    upstream: str  # the upstream's name
    kind: EntityKind  # the entity that runs it
    entity_id: str
    key: Optional[str]  # the name of the client key that started it (None: no keys configured)


# What the dict holds per run: the record's fields, flat, and when it expires.
_Entry = Tuple[str, EntityKind, str, Optional[str], float]


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
        self._owners: "collections.OrderedDict[str, _Entry]" = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._owners)

    def remember(self, run_id: str, upstream: str, kind: EntityKind, entity_id: str, key: Optional[str] = None) -> None:
        """``run_id`` of ``kind`` ``entity_id`` was accepted by ``upstream`` (call only for a 2xx
        answer), asked for with the client key named ``key``."""
        self._forget(run_id)
        self._owners[run_id] = (upstream, kind, entity_id, key, self.clock() + self.ttl_s)
        self.bytes += _cost(run_id, entity_id, key)
        while len(self._owners) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._owners))
            self._forget(oldest)

    def record(self, run_id: str) -> Optional[RunRecord]:
        entry = self._owners.get(run_id)
        if entry is None:
            return None
        if entry[4] <= self.clock():
            self._forget(run_id)
            return None
        return RunRecord(*entry[:4])

    def owner(self, run_id: str) -> Optional[str]:
        """The name of the upstream that runs ``run_id``, if remembered."""
        record = self.record(run_id)
        return record.upstream if record is not None else None

    def sweep(self) -> int:
        """Drop every expired entry; how many went."""
        now, dropped = self.clock(), 0
        while self._owners:
            run_id, entry = next(iter(self._owners.items()))
            if entry[4] > now:
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
            self.bytes -= _cost(run_id, entry[2], entry[3])


def _cost(run_id: str, entity_id: str, key: Optional[str]) -> int:
    key_bytes = sys.getsizeof(key) if key is not None else 0
    return sys.getsizeof(run_id) + sys.getsizeof(entity_id) + key_bytes + ENTRY_OVERHEAD_BYTES

"""A record of ``key -> value`` the gateway learns from traffic (which upstream runs a run, which
issued an MCP session): bounded in entries and in bytes, expiring, oldest out first. Pure, no I/O.

Its keys come from clients or upstreams, so it is bounded in bytes, not only in entries: each
entry is charged what its ``cost(key, value)`` says its strings take in memory (plus the caller's fixed
overhead), and the oldest entries go first when either bound is reached. An entry expires ``ttl_s``
after it was set, or after its last use when ``refresh_on_use`` (each use then moves it to the
back, so the dict stays in expiry order either way); an expired entry is never answered.
``sweep`` drops the expired ones from the front: on a timer (``sweeping``), or when a
subclass asks (the MCP record, at each ``remember``).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Callable, Generic, Optional, Tuple, TypeVar

V = TypeVar("V")


DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


class ExpiringRecord(Generic[V]):
    """A subclass says what an entry costs (``cost``) and whether a use refreshes it."""

    refresh_on_use = False

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
        # key -> (value, expiry), in expiry order: the oldest first.
        self._entries: "collections.OrderedDict[str, Tuple[V, float]]" = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def cost(self, key: str, value: V) -> int:
        """The bytes an entry is charged: its strings' size in memory and the entry's overhead."""
        raise NotImplementedError

    def put(self, key: str, value: V) -> None:
        self.forget(key)
        self._entries[key] = (value, self.clock() + self.ttl_s)
        self.bytes += self.cost(key, value)
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self.forget(next(iter(self._entries)))

    def get(self, key: str) -> Optional[V]:
        """The value of ``key``, unless unknown or expired (then it goes); a use."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self.clock()
        if entry[1] <= now:
            self.forget(key)
            return None
        if self.refresh_on_use:
            self._entries[key] = (entry[0], now + self.ttl_s)
            self._entries.move_to_end(key)
        return entry[0]

    def forget(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= self.cost(key, entry[0])

    def sweep(self) -> int:
        """Drop every expired entry; how many went."""
        now, dropped = self.clock(), 0
        while self._entries:
            key, (_, expires) = next(iter(self._entries.items()))
            if expires > now:
                break
            self.forget(key)
            dropped += 1
        return dropped

    async def sweeping(self, interval_s: float) -> None:
        """``sweep`` every ``interval_s``, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.sweep()

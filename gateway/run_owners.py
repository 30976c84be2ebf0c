"""Which upstream runs which run, for which entity, started with which client key:
``run_id -> RunRecord``, so a cancel, a continue or a read-back reaches the run's own upstream,
and a run-scoped request naming another entity is refused (``api/ownership.py``).

An ``ExpiringRecord`` (``gateway/expiring.py``): bounded in entries and bytes (each entry charged
the strings it holds: the run id, the entity id, the key's name; the upstream's name is the pool's
own, shared), oldest out first. Only runs an upstream accepted (a 2xx answer) are remembered.
Entries expire ``ttl_s`` after the run started (a run cannot outlive the whole-run timeout by
much); ``sweeping`` drops the expired ones on a timer, so an idle gateway gives the memory back.
"""

from __future__ import annotations

import sys
from typing import NamedTuple, Optional

from gateway.expiring import ExpiringRecord
from gateway.wire.kinds import EntityKind

# What one entry costs besides its strings: the ordered dict's slot and link, the tuples and the
# float (tracemalloc on CPython 3.11, 50 000 to 100 000 entries: 196 bytes).
ENTRY_OVERHEAD_BYTES = 200


class RunRecord(NamedTuple):
    upstream: str  # the upstream's name
    kind: EntityKind  # the entity that runs it
    entity_id: str
    key: Optional[str]  # the name of the client key that started it (None: no keys configured)


class RunOwners(ExpiringRecord[RunRecord]):
    def cost(self, run_id: str, record: RunRecord) -> int:
        key_bytes = sys.getsizeof(record.key) if record.key is not None else 0
        return sys.getsizeof(run_id) + sys.getsizeof(record.entity_id) + key_bytes + ENTRY_OVERHEAD_BYTES

    def remember(self, run_id: str, upstream: str, kind: EntityKind, entity_id: str, key: Optional[str] = None) -> None:
        """``run_id`` of ``kind`` ``entity_id`` was accepted by ``upstream`` (call only for a 2xx
        answer), asked for with the client key named ``key``."""
        self.put(run_id, RunRecord(upstream, kind, entity_id, key))

    def record(self, run_id: str) -> Optional[RunRecord]:
        return self.get(run_id)

    def owner(self, run_id: str) -> Optional[str]:
        """The name of the upstream that runs ``run_id``, if remembered."""
        record = self.get(run_id)
        return record.upstream if record is not None else None


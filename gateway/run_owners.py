"""Which upstream runs which run, for which entity, started with which client key:
``run_id -> RunRecord``, so a cancel, a continue or a read-back reaches the run's own upstream,
and a run-scoped request naming another entity is refused (``api/ownership.py``).

An ``ExpiringRecord`` (``gateway/expiring.py``): bounded in entries and bytes (each entry charged
the strings it holds: the run id, the entity id, the key's name; the upstream's name is the pool's
own, shared), oldest out first. Only runs an upstream accepted (a 2xx answer) are remembered.
Entries expire ``ttl_s`` after the run started (a run cannot outlive the whole-run timeout by
much); ``sweeping`` drops the expired ones on a timer, so an idle gateway gives the memory back.

An entry holds strings only (the kind by its name): the garbage collector stops tracking tuples of
those, so a full record costs its collections nothing. With the kind's enum member in them, a
record of 100,000 runs made every full collection walk its entries again: 0.9 s of collections in
24 s of forwarding at 3,600 runs/s, and that much more CPU per request.
"""

from __future__ import annotations

import sys
from typing import NamedTuple, Optional, Tuple

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


_Stored = Tuple[str, str, str, Optional[str]]  # a RunRecord with its kind by name: strings only


class RunOwners(ExpiringRecord[_Stored]):
    def cost(self, run_id: str, stored: _Stored) -> int:
        key_bytes = sys.getsizeof(stored[3]) if stored[3] is not None else 0
        return sys.getsizeof(run_id) + sys.getsizeof(stored[2]) + key_bytes + ENTRY_OVERHEAD_BYTES

    def remember(self, run_id: str, upstream: str, kind: EntityKind, entity_id: str, key: Optional[str] = None) -> None:
        """``run_id`` of ``kind`` ``entity_id`` was accepted by ``upstream`` (call only for a 2xx
        answer), asked for with the client key named ``key``."""
        self.put(run_id, (upstream, kind.name, entity_id, key))

    def record(self, run_id: str) -> Optional[RunRecord]:
        stored = self.get(run_id)
        return RunRecord(stored[0], EntityKind[stored[1]], stored[2], stored[3]) if stored is not None else None

    def owner(self, run_id: str) -> Optional[str]:
        """The name of the upstream that runs ``run_id``, if remembered."""
        stored = self.get(run_id)
        return stored[0] if stored is not None else None

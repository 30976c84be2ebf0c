"""Who serves an entity id: the gateway itself (a local component) or the upstreams that list it.

An id both local and listed by an upstream is a conflict: with ``on_conflict: error`` the gateway
refuses to start (found after the first probes, and by ``check-config``); one that appears later
is served locally and logged. ``local`` or ``upstream`` says which side wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Set, Tuple, Union

from gateway.local import LocalEntity, LocalRegistry
from gateway.pool import Pool, Upstream
from gateway.wire.kinds import EntityKind

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Remote:
    upstreams: List[Upstream]  # every upstream listing the id, usable or not


Target = Union[LocalEntity, Remote]


class Directory:
    def __init__(self, registry: LocalRegistry, pool: Optional[Pool], on_conflict: str) -> None:
        self.registry = registry
        self.pool = pool
        self.on_conflict = on_conflict
        self._reported: Set[Tuple[EntityKind, str]] = set()

    def resolve(self, kind: EntityKind, entity_id: str) -> Optional[Target]:
        local = self.registry.get(kind, entity_id)
        upstreams = self.pool.serving(kind, entity_id) if self.pool is not None else []
        if local is not None and upstreams:
            if self.on_conflict == "upstream":
                return Remote(upstreams)
            if self.on_conflict == "error" and (kind, entity_id) not in self._reported:
                self._reported.add((kind, entity_id))
                logger.error("%s %r is served locally and by upstreams; serving it locally", kind.path, entity_id)
            return local
        if local is not None:
            return local
        return Remote(upstreams) if upstreams else None

    def local_data(self) -> List[Upstream]:
        """Where the data routes of a local entity go (its sessions' fork, its runs read back):
        the pool member that is the local components' AgentOS (``gateway/local_os.py``)."""
        if self.pool is None:
            return []
        return [upstream for upstream in self.pool.upstreams.values() if upstream.in_process]

    def unknown_membership(self) -> List[str]:
        """Upstreams that never said what they serve (down since the gateway started): an id
        nobody is known to serve may be theirs, so it is not surely unknown (503, not 404)."""
        if self.pool is None:
            return []
        return [u.name for u in self.pool.upstreams.values() if u.catalog is None and not u.in_process]

    def conflicts(self) -> List[str]:
        """One line per id served both locally and by an upstream."""
        if self.pool is None:
            return []
        lines = []
        for kind in EntityKind:
            for entity_id in self.registry.ids(kind):
                names = [upstream.name for upstream in self.pool.serving(kind, entity_id)]
                if names:
                    lines.append(
                        f"{kind.path} {entity_id!r} is served locally and by upstream {', '.join(names)}: "
                        "set on_conflict to 'local' or 'upstream'"
                    )
        return lines

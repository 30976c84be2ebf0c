"""The one reading of an entity's path: ``/v1/{kind}/{id}/...`` and ``/{kind}/{id}/...``.

The fast path finds run requests with it, authorization the entity a request touches, and the
metrics the kind of a route's template. By splitting only: it runs on every request.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from gateway.wire.kinds import EntityKind


class EntityPath(NamedTuple):
    v1: bool  # the gateway's own JSON API
    kind: EntityKind
    entity_id: str  # as it is in the path (possibly empty: the routes answer that)
    rest: Optional[str]  # what follows the id's "/", None when nothing does

    @property
    def is_run(self) -> bool:
        """``POST /v1/{kind}/{id}/run`` or ``POST /{kind}/{id}/runs``: a run starts."""
        return self.rest == ("run" if self.v1 else "runs")


def entity_path(path: str) -> Optional[EntityPath]:
    """The entity a path belongs to, or None for a path of no agent, team or workflow."""
    v1 = path.startswith("/v1/")
    parts = (path[3:] if v1 else path).split("/", 3)
    if len(parts) < 3:
        return None
    kind = EntityKind.from_path(parts[1])
    if kind is None:
        return None
    return EntityPath(v1, kind, parts[2], parts[3] if len(parts) == 4 else None)

"""AgentOS's session routes (the route table's ``SESSION`` rule), routed by the session.

A session lives where its runs ran: the upstream its id hashes to among those serving its entity,
and so in that upstream's database group. ``/sessions/{id}[...]`` names no entity, so the groups
are asked in the rendezvous order of the session id, one upstream each, until one knows it (not
404); a delete goes to every group (``api/storage.py``). ``POST /sessions`` names its entity: the
session is created where that entity's runs will go. Fork and compact (``/{kind}/{id}/sessions/
{session_id}/...``) go by the session over the entity's upstreams, as its runs do. ``GET
/sessions`` (merged) and ``DELETE /sessions`` (every group) are collection routes.
A local entity's sessions are in the local components' AgentOS (the pool member ``local``).
"""

from __future__ import annotations

import json
from typing import List, Optional, Tuple

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.forwarding import new_session
from gateway.api.storage import StorageRouter, named_value
from gateway.api.ownership import check_session
from gateway.pool import Upstream
from gateway.local import LocalEntity
from gateway.routing import Directory, Remote
from gateway.sender import Outgoing
from gateway.wire.ids import check_id
from gateway.wire.kinds import EntityKind
from gateway.wire.paths import entity_path


async def session_route(
    request: Request, storage: StorageRouter, directory: Directory, template: str, params: dict, outgoing: Outgoing,
    upstreams: List[Upstream],
) -> Response:  # fmt: skip
    """Answer a ``SESSION`` route; ``upstreams``: the entity's, for an entity's session route."""
    pairs = request.query_params.multi_items()
    db_id = named_value(pairs, outgoing.body, request.headers.get("content-type", ""), "db_id")
    session_id = params.get("session_id")
    if session_id is None:  # POST /sessions
        upstreams, session_id, outgoing.body = creation_target(directory, outgoing.body or b"", [])
        if not upstreams:  # no entity the gateway forwards: stored like any other write
            user_id = named_value(pairs, outgoing.body, request.headers.get("content-type", ""), "user_id")
            return await storage.write(request, outgoing, db_id, user_id)
        return await storage.by_session(request, upstreams, session_id, outgoing, db_id)
    check_id("session_id", session_id)
    if not template.startswith("/sessions/"):  # an entity's fork or compact: a session of that entity
        entity = entity_path(template)
        assert entity is not None
        entity_id = params[template.split("/")[2][1:-1]]
        await check_session(storage.forwarder, request, entity.kind, entity_id, session_id, upstreams)
        return await storage.by_session(request, upstreams, session_id, outgoing, db_id)
    if request.method == "DELETE":
        return await storage.everywhere(request, outgoing, db_id)
    return await storage.lookup(request, outgoing, db_id, key=session_id, ids=tuple(params.values()))


def creation_target(
    directory: Directory, body: bytes, everyone: List[Upstream]
) -> Tuple[List[Upstream], Optional[str], bytes]:
    """``POST /sessions`` names its entity: the session is created where its runs will go, with
    an id the gateway makes when the body has none (so it can be hashed before choosing)."""
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return everyone, None, body  # the upstream answers the malformed body as AgentOS does
    if not isinstance(data, dict):
        return everyone, None, body
    for kind in EntityKind:
        entity_id = data.get(kind.spec.id_field)
        target = directory.resolve(kind, entity_id) if isinstance(entity_id, str) else None
        if isinstance(target, LocalEntity):  # its runs are the gateway's own: its AgentOS's store
            return directory.local_data(), None, body
        if isinstance(target, Remote):
            given = data.get("session_id") if isinstance(data.get("session_id"), str) else None
            check_id("session_id", given)
            session_id, session_is_new = new_session(given)
            if session_is_new:
                body = json.dumps({**data, "session_id": session_id}).encode()
            return target.upstreams, session_id, body
    return everyone, None, body

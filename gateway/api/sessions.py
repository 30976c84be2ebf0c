"""AgentOS's session routes, routed by session id.

A session lives where its runs ran: the upstream its id hashes to among those serving its entity.
Routes that name only the session (``/sessions/{id}...``) cannot know the entity, so they try the
usable upstreams in the session's rendezvous order and answer with the first that knows it (not
404). Listing and creating without a session go to one upstream (with a shared database, as in the
compose deployment, every upstream sees every session); a bulk delete goes to all.
"""

from __future__ import annotations

import json
from typing import List, Optional, Tuple

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.forwarding import Forwarder, new_session, upstream_path
from gateway.api.ownership import check_session
from gateway.api.runs import resolve
from gateway.pool import Upstream
from gateway.sender import Outgoing
from gateway.routing import Directory, Remote
from gateway.wire.ids import check_id
from gateway.wire.kinds import EntityKind

SESSION_METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]


async def _outgoing(request: Request) -> Outgoing:
    return Outgoing(request.method, upstream_path(request), body=await request.body() or None)


def sessions_router(directory: Directory, forwarder: Optional[Forwarder]) -> APIRouter:
    router = APIRouter(tags=["AgentOS sessions"])
    if forwarder is None:
        return router  # local components' sessions are not served over HTTP by the gateway

    def everyone() -> List[Upstream]:
        return list(forwarder.pool.upstreams.values())

    async def first_that_knows(request: Request, order: List[str]) -> Response:
        return await forwarder.first_that_knows(request, order, await _outgoing(request))

    @router.api_route("/sessions", methods=["GET", "POST", "DELETE"], summary="List, create or delete sessions")
    async def sessions(request: Request) -> Response:
        if request.method == "DELETE":  # the ids may live on any upstream
            return await first_that_knows(request, forwarder.choose(everyone(), None).order)
        outgoing = await _outgoing(request)
        upstreams, session_id = everyone(), None
        if request.method == "POST":
            upstreams, session_id, outgoing.body = _creation_target(directory, outgoing.body or b"", upstreams)
        choice = forwarder.choose(upstreams, session_id)
        return await forwarder.forward(request, choice, outgoing, with_affinity=False)

    @router.api_route("/sessions/{session_id}", methods=SESSION_METHODS, summary="One session")
    @router.api_route("/sessions/{session_id}/{rest:path}", methods=SESSION_METHODS, summary="A session's parts")
    async def session(session_id: str, request: Request, rest: str = "") -> Response:
        check_id("session_id", session_id)
        return await first_that_knows(request, forwarder.choose(everyone(), session_id).order)

    for kind in EntityKind:
        _add_entity_session_route(router, kind, directory, forwarder)
    return router


def _add_entity_session_route(router: APIRouter, kind: EntityKind, directory: Directory, forwarder: Forwarder) -> None:
    async def entity_session(entity_id: str, session_id: str, action: str, request: Request) -> Response:
        target = resolve(directory, kind, entity_id)
        check_id("session_id", session_id)
        if not isinstance(target, Remote):
            return Response(status_code=501)
        await check_session(forwarder, request, kind, entity_id, session_id, target.upstreams)
        choice = forwarder.choose(target.upstreams, session_id)
        return await forwarder.forward(request, choice, await _outgoing(request), with_affinity=False)

    router.add_api_route(
        f"/{kind.path}/{{entity_id}}/sessions/{{session_id}}/{{action}}",
        entity_session,
        methods=["POST"],
        summary=f"Fork or compact a {kind.name.lower()} session",
        name=f"{kind.name.lower()}_session_action",
    )


def _creation_target(
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
        if isinstance(target, Remote):
            given = data.get("session_id") if isinstance(data.get("session_id"), str) else None
            check_id("session_id", given)
            session_id, session_is_new = new_session(given)
            if session_is_new:
                body = json.dumps({**data, "session_id": session_id}).encode()
            return target.upstreams, session_id, body
    return everyone, None, body

"""A run-scoped or forked/compacted session must belong to the entity in its path.

AgentOS without RBAC acts on any run id or session id whatever its path names:
``POST /teams/T/runs/R/cancel`` cancels an agent's run R, ``/agents/A/runs/R/continue`` continues
a team's run, ``/teams/T/runs/R/resume`` replays an agent's, ``/teams/T/sessions/S/fork`` copies an
agent's session. A key limited to T would reach A's work through T's routes. AgentOS with RBAC
binds them (``verify_run_belongs_to_component`` in ``agno/os/middleware/user_scope.py``), and so
does the gateway, with the same answers: a mismatch is a 404 ``Run not found`` or ``Session not
found``, which hides whether the other entity's run exists, as AgentOS does. The upstream never
sees such a request.

How the gateway knows a run's entity, in order:

1. its own record (``gateway/run_owners.py``: every run it started, with its entity and key);
2. for a read (``GET .../runs/{run_id}``, checkpoints): nothing more; AgentOS itself answers a run
   of another entity there with 404 (checked on agno 3.1);
3. else, when the request names its session (``session_id``, query or form), the run read back
   from the session's upstreams: ``GET /sessions/{session_id}/runs/{run_id}`` answers any stored
   run with its ``agent_id``, ``team_id`` or ``workflow_id`` (``GET /{kind}/{id}/runs/{run_id}``
   filters by entity, so cannot tell a run of another entity from none);
4. else the run is unknown: not stored yet (a run in progress is stored when it ends, a
   background run when it starts), started through another gateway replica without a session id,
   or no run at all. A caller whose key reaches every entity loses nothing by naming the wrong one,
   so its request goes on as before (a cancel to every upstream serving the entity). Any other
   caller gets AgentOS's answer to a run it does not have: ``{}`` for a cancel (AgentOS accepts a
   cancel of any id), 404 ``Run not found`` else; nothing is sent.

A session's entity is read the same way: ``GET /sessions/{session_id}`` answers its ``agent_id``,
``team_id`` or ``workflow_id``; a session no upstream has is unknown (step 4).

The field checked is the path's kind's own (``team_id`` for a team's route); a run or session
without it does not belong (fail closed, as AgentOS: a member agent's run inside a team session
belongs to the member agent, not the team).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from typing import Any, Dict, Optional, Sequence

from starlette.requests import Request

from gateway.api.forwarding import Forwarder, segment
from gateway.api.route_table import RUNNABLE_KINDS, Route
from gateway.balancing import Affinity, Choice
from gateway.errors import NotFound, UpstreamFailure
from gateway.pool import Upstream
from gateway.sender import Outgoing
from gateway.wire.kinds import EntityKind

logger = logging.getLogger(__name__)

RUN_NOT_FOUND = "Run not found"  # AgentOS's answer to a run of another entity
SESSION_NOT_FOUND = "Session not found"
READ_BACK_TIMEOUT_S = 5.0
READ_BACK_MAX_BYTES = 16 * 1024 * 1024  # a session with its history; more is not read


class RunAccess(enum.Enum):
    READ = "read"  # GET a run, its checkpoints: AgentOS answers another entity's run with a 404
    CANCEL = "cancel"  # AgentOS cancels any run id, and answers {} for one it does not know
    ACT = "act"  # continue, resume: AgentOS acts on any run of the session it is given


class _Unknown(Exception):
    """The entity could not be read back: no upstream has it (``failed`` False) or some could
    not be asked."""

    def __init__(self, failed: bool) -> None:
        self.failed = failed


async def check_run(
    forwarder: Forwarder, request: Request, access: RunAccess, kind: EntityKind, entity_id: str, run_id: str,
    upstreams: Sequence[Upstream], session_id: Optional[str],
) -> bool:  # fmt: skip
    """Whether the run-scoped request may be forwarded. ``NotFound`` when the run belongs to
    another entity (or is unknown to a caller limited to some entities); False for such a
    caller's cancel of an unknown run, answered ``{}`` without forwarding."""
    record = forwarder.run_owners.record(run_id)
    if record is not None:
        _require(record.kind is kind and record.entity_id == entity_id, RUN_NOT_FOUND)
        return True
    if access is RunAccess.READ:
        return True
    try:
        if not session_id:
            raise _Unknown(failed=False)
        run = await _read_back(forwarder, request, upstreams, session_id, f"/sessions/{segment(session_id)}/runs/{segment(run_id)}")
    except _Unknown as unknown:
        if reaches_every_entity(request):
            return True
        if unknown.failed:
            raise forwarder.unavailable("The run's owner could not be read back; try again") from None
        if access is RunAccess.CANCEL:
            return False
        raise NotFound(RUN_NOT_FOUND) from None
    _require(run.get(kind.spec.id_field) == entity_id, RUN_NOT_FOUND)
    return True


async def check_run_route(
    forwarder: Forwarder, request: Request, route: Route, params: Dict[str, str], upstreams: Sequence[Upstream],
    session_id: Optional[str],
) -> None:  # fmt: skip
    """``check_run`` for a run route of the table (resume, checkpoints): a read for GET."""
    assert route.entity is not None and route.entity.kind in RUNNABLE_KINDS  # an agent's, a team's, a workflow's
    access = RunAccess.READ if request.method == "GET" else RunAccess.ACT
    kind = EntityKind[route.entity.kind.upper()]
    await check_run(forwarder, request, access, kind, params[route.entity.parameter], params["run_id"], upstreams, session_id)


async def check_session(
    forwarder: Forwarder, request: Request, kind: EntityKind, entity_id: str, session_id: str, upstreams: Sequence[Upstream]
) -> None:
    """A fork or compact names a session of the path's entity; ``NotFound`` otherwise."""
    try:
        session = await _read_back(forwarder, request, upstreams, session_id, f"/sessions/{segment(session_id)}")
    except _Unknown as unknown:
        if reaches_every_entity(request):
            return
        if unknown.failed:
            raise forwarder.unavailable("The session's owner could not be read back; try again") from None
        raise NotFound(SESSION_NOT_FOUND) from None
    _require(session.get(kind.spec.id_field) == entity_id, SESSION_NOT_FOUND)


def reaches_every_entity(request: Request) -> bool:
    """Whether the caller may run every agent, team and workflow: no keys are configured, or its
    key's scopes allow it (``api/auth.py`` names the key in the request's state)."""
    keyring = request.app.state.services.keyring
    name = request.scope.get("state", {}).get("api_key")
    if not keyring.keys or name is None:
        return not keyring.keys
    return any(key.name == name and key.grants.runs_every_entity for key in keyring.keys.values())


def _require(belongs: bool, detail: str) -> None:
    if not belongs:
        raise NotFound(detail)


async def _read_back(
    forwarder: Forwarder, request: Request, upstreams: Sequence[Upstream], session_id: str, path: str
) -> Dict[str, Any]:
    """The JSON object the first of ``upstreams`` (in the session's order) that has ``path``
    answers; ``_Unknown`` when none has it."""
    order = forwarder.choose(upstreams, session_id).order
    failed = not order  # nothing usable to ask
    for name in order:
        answer = await _get(forwarder, request, name, path)
        if isinstance(answer, dict):
            return answer
        failed = failed or answer is None
    raise _Unknown(failed)


async def _get(forwarder: Forwarder, request: Request, upstream: str, path: str) -> Optional[object]:
    """``GET path`` on one upstream, through the forwarder's bounded fetch: its JSON object on a
    200, False on a 404, None when it failed (reported, never raised)."""
    try:
        async with asyncio.timeout(READ_BACK_TIMEOUT_S):
            fetched = await forwarder.fetch(
                request, Choice([upstream], Affinity.HIT), Outgoing("GET", path), max_bytes=READ_BACK_MAX_BYTES
            )
    # KeyError, RuntimeError: the upstream was removed (its session closed) meanwhile.
    except (TimeoutError, UpstreamFailure, KeyError, RuntimeError) as error:
        logger.warning("read-back %s on upstream %s failed: %s", path, upstream, error)
        return None
    if fetched.status == 404:
        return False
    try:
        value = json.loads(fetched.body) if fetched.status == 200 else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        logger.warning("read-back %s on upstream %s: status %d, not a JSON object", path, upstream, fetched.status)
        return None
    return value

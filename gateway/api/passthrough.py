"""The generic forwarder: every route of ``api/route_table.py`` no dedicated handler answers.

Installed as the router's default (``install``): it sees only requests that match none of the
app's own routes, not even by path (those keep their 405s). The request is matched against the
table; no match is the gateway's 404, a path of the table with another method a 405. The upstream
URL is the route's template with each matched parameter encoded by ``segment`` and the query
encoded again by ``query``, never the client's raw path; the body goes as it came. Upstreams are
chosen by the route's rule (see the table's docstring), and ``Forwarder.forward`` sends, retries
and answers. Routes that run hold a ``Limiter`` slot until their answer has been sent.

Local components' data routes go to their in-process AgentOS, the pool member ``local``
(``gateway/local_os.py``), by the same rules: it is one more database group.
"""

from __future__ import annotations

from typing import List, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.errors import error_response
from gateway.api.forwarding import Forwarder, query, segment
from gateway.api.limits import Limiter
from gateway.api.merging import MERGED_WRITES
from gateway.api.ownership import check_run_route
from gateway.api.route_table import TABLE, Limit, Match, Route, RouteTable, Rule
from gateway.api.storage import StorageRouter, named_value
from gateway.api.runs import resolve
from gateway.api.sessions import session_route
from gateway.doors import mcp
from gateway.doors.handlers import HANDLERS
from gateway.doors.http import Doors
from gateway.doors.membership import Door
from gateway.errors import GatewayError, NotFound
from gateway.local import LocalEntity
from gateway.pool import Upstream
from gateway.routing import Directory
from gateway.sender import Outgoing
from gateway.wire import form as wire_form
from gateway.wire.ids import check_id
from gateway.wire.kinds import EntityKind

NOT_FOUND = "Not Found"
_KINDS = {"agent": EntityKind.AGENT, "team": EntityKind.TEAM, "workflow": EntityKind.WORKFLOW}


class Passthrough:
    def __init__(
        self, fallback: ASGIApp, directory: Directory, forwarder: Optional[Forwarder], limiter: Limiter,
        storage: Optional[StorageRouter] = None, table: RouteTable = TABLE, doors: Optional[Doors] = None,
    ) -> None:  # fmt: skip
        self.fallback = fallback  # the router's own default, for what is no HTTP request
        self.directory = directory
        self.forwarder = forwarder
        self.limiter = limiter
        self.storage = storage if storage is not None or forwarder is None else StorageRouter(forwarder)
        self.table = table
        self.doors = doors if doors is not None or forwarder is None else Doors(forwarder, HANDLERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await self.answer(request)
        except GatewayError as error:
            response = error_response(error)
        await response(scope, receive, send)

    async def answer(self, request: Request) -> Response:
        path = request.scope["path"]
        matched = self.table.match(request.method, path)
        door = None
        if self.doors is not None and (matched is None or matched.route is None or matched.route.rule is Rule.DOOR):
            door = self.doors.door_path(path)
            if door is not None and door.canonical != path:  # a door under another prefix than agno's default
                matched = self.table.match(request.method, door.canonical)
        if matched is None:
            raise NotFound(NOT_FOUND)
        if matched.route is None:
            allow = ", ".join(sorted(matched.allowed))
            return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": allow})
        route = matched.route
        request.scope["route"] = route  # its template labels the metrics and the log line
        if self.forwarder is None or route.own_handler or route.rule in (Rule.LOCAL, Rule.NOT_FORWARDED):
            raise NotFound(NOT_FOUND)
        if route.rule is Rule.DOOR:  # AG-UI, A2A, MCP: gateway/doors/
            doors = self.doors
            assert doors is not None
            if door is not None and door.door is Door.MCP:  # its slot depends on the message
                return await mcp.within_slot(self.limiter, request, lambda: doors.answer(request, matched, door))
            if route.limit is Limit.OTHER:
                return await doors.answer(request, matched, door)
            return await self.limiter.run(await _streams(request, route), lambda: doors.answer(request, matched, door))
        if route.limit is Limit.OTHER:
            return await self._forward(request, self.forwarder, matched)
        stream = await _streams(request, route)
        return await self.limiter.run(stream, lambda: self._forward(request, self.forwarder, matched, stream))

    async def _forward(self, request: Request, fwd: Forwarder, matched: Match, stream: bool = False) -> Response:
        route, params = matched.route, matched.params
        assert route is not None
        upstreams = self._upstreams(request, fwd, route, params)
        outgoing = Outgoing(
            request.method,
            route.path(params, segment) + query(request.url.query),
            body=await request.body() or None,
            expects_stream=stream,
        )
        content_type = request.headers.get("content-type")
        if content_type:
            outgoing.headers["Content-Type"] = content_type
        if route.rule is Rule.OS_WIDE:
            return await fwd.forward(request, fwd.choose(upstreams, None), outgoing, with_affinity=False)
        if route.rule in (Rule.COLLECTION, Rule.ITEM):
            return await self._by_storage(request, fwd, matched, outgoing)
        if route.rule is Rule.RUN:
            run_id = params["run_id"]
            check_id("run_id", run_id)
            session_id = request.query_params.get("session_id") or await _form_field(request, "session_id")
            check_id("session_id", session_id)
            await check_run_route(fwd, request, route, params, upstreams, session_id)
            owner = fwd.run_owners.owner(run_id)
            owned = [u for u in upstreams if u.name == owner and fwd.pool.is_usable(u)]
            if owned:
                return await fwd.forward(request, fwd.choose(owned, None), outgoing, with_affinity=False)
            return await fwd.first_that_knows(request, fwd.choose(upstreams, session_id).order, outgoing)
        assert route.rule is Rule.SESSION
        assert self.storage is not None
        return await session_route(request, self.storage, self.directory, route.template, params, outgoing, upstreams)

    async def _by_storage(self, request: Request, fwd: Forwarder, matched: Match, outgoing: Outgoing) -> Response:
        """A collection or an item: by the database groups that hold it (``api/storage.py``)."""
        route, params = matched.route, matched.params
        assert route is not None
        storage = self.storage
        assert storage is not None
        pairs = request.query_params.multi_items()
        content_type = request.headers.get("content-type", "")
        db_id = params.get("db_id") or named_value(pairs, outgoing.body, content_type, "db_id")
        if request.method == "DELETE" or "db_id" in params:  # a database by its id: all behind it
            return await storage.everywhere(request, outgoing, db_id)
        if route.rule is Rule.ITEM:
            return await storage.lookup(
                request, outgoing, db_id, key=params[route.parameters[0]], ids=tuple(params.values())
            )
        if request.method == "GET" or route.template in MERGED_WRITES:
            return await storage.read(request, route.template, outgoing, db_id)
        user_id = named_value(pairs, outgoing.body, content_type, "user_id")
        return await storage.write(request, outgoing, db_id, user_id)

    def _upstreams(self, request: Request, fwd: Forwarder, route: Route, params: dict) -> List[Upstream]:  # type: ignore[type-arg]
        """The entity's upstreams for an agent's, a team's or a workflow's route; else all."""
        if route.entity is not None and route.entity.kind in _KINDS:
            target = resolve(self.directory, _KINDS[route.entity.kind], params[route.entity.parameter], request)
            if isinstance(target, LocalEntity):  # its data: the local components' AgentOS
                return self.directory.local_data()
            return target.upstreams
        return list(fwd.pool.upstreams.values())


async def _form_field(request: Request, name: str) -> Optional[str]:
    """One field of an urlencoded or multipart form body, read as AgentOS reads it; None else."""
    media_type = wire_form.media_type(request.headers.get("content-type", ""))
    if media_type == wire_form.URLENCODED:
        return wire_form.last_values(await request.body(), frozenset({name})).get(name) or None
    if media_type == wire_form.MULTIPART:
        await request.body()  # kept for forwarding; the form is parsed from it
        value = (await request.form()).get(name)
        return value if isinstance(value, str) and value else None
    return None


async def _streams(request: Request, route: Route) -> bool:
    """Whether a route that runs answers with a stream: one the table says always does (resume,
    AG-UI, A2A's message stream); a run or continue when its ``stream`` form field says so
    (AgentOS's default: yes); a JSON body never."""
    if route.always_streams:
        return True
    if route.rule is Rule.DOOR:
        return request.method == "GET"  # MCP's server stream
    media_type = wire_form.media_type(request.headers.get("content-type", ""))
    if media_type == wire_form.URLENCODED:
        value = wire_form.last_values(await request.body(), frozenset({"stream"})).get("stream")
        return wire_form.read_bool(value, True) is not False
    if media_type == wire_form.MULTIPART:
        await request.body()
        value = (await request.form()).get("stream")
        return wire_form.read_bool(value if isinstance(value, str) else None, True) is not False
    return False


def install(  # type: ignore[no-untyped-def]
    app, directory: Directory, forwarder: Optional[Forwarder], limiter: Limiter, storage: Optional[StorageRouter] = None
) -> None:
    """Make the table's forwarder what the app's router runs when none of its routes matches."""
    app.router.default = Passthrough(app.router.default, directory, forwarder, limiter, storage)

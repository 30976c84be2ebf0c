"""Every route of AgentOS (agno 3.1), declared once, and the one matcher over them.

Each ``Route`` says: its methods; its path template (``{name}`` segments are parameters, every
other segment is literal); the entity it belongs to (named by its first parameter: ``agent_id``
makes it an agent's route, ``memory_id`` a memory's); its routing ``Rule``; its ``Limit``; whether
it starts a run; and whether one of the gateway's dedicated handlers answers it (runs, sessions,
config, listings) or the generic forwarder (``api/passthrough.py``) does.

The rules, by what decides the upstream:

* ``SESSION``: the session id: runs, fork and compact by rendezvous hashing over the entity's
  upstreams; ``/sessions/{session_id}...`` by the database groups in the session's rendezvous
  order, deletes to every group (``api/sessions.py``).
* ``RUN``: the run's recorded owner (``Forwarder.run_owners``) when usable, else the ``session_id``
  form or query field, else the ``ITEM`` rule; the run must belong to the path's entity
  (``api/ownership.py``).
* ``COLLECTION``: a family's list (merged over the database groups), its create (the group of
  its ``db_id``, else of its ``user_id``), its bulk delete (every group): ``api/storage.py``.
* ``ITEM``: one stored object: each database group in turn until one does not answer 404; a
  delete to every group.
* ``OS_WIDE``: what describes the AgentOS itself (``/info``, ``/registry``, ``/knowledge/config``):
  any usable upstream (``/config`` and the listings are merged by their
  own handlers).
* ``DOOR``: AgentOS's other doors (AG-UI, A2A, MCP), each by its protocol's conversation key,
  to the upstreams that serve the door (``gateway/doors/``); declared here at agno's default
  prefixes (``doors/membership.py`` maps another prefix onto them). The workflow WebSocket is no
  HTTP route: ``doors/websocket.py`` answers it.
* ``LOCAL``: the gateway answers itself (``/health``).
* ``NOT_FORWARDED``: never sent to an upstream; ``reason`` says why.

Database groups are the upstreams that report the same database ids (``balancing/storage.py``);
with one group (every upstream on one database) COLLECTION and ITEM are plain forwards.

Limits (``api/limits.py``): ``STARTS_RUN`` takes a run slot, and a stream slot when the request
streams; ``HOLDS_STREAM`` a stream slot when it streams; ``OTHER`` nothing.

The matcher splits the decoded path on ``/`` and walks a tree of segments, literal segments
before parameters (``/learnings/users`` is not the learning ``users``, as on AgentOS, unless only
the parameter route takes the method); no regular expression runs per request. A path that
matches a template but none with the request's method is a ``Match`` with no route (405).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterator, List, Optional, Tuple


class Rule(enum.Enum):
    SESSION = "session"
    RUN = "run"
    COLLECTION = "collection"
    ITEM = "item"
    OS_WIDE = "os_wide"
    DOOR = "door"
    LOCAL = "local"
    NOT_FORWARDED = "not_forwarded"


class Limit(enum.Enum):
    STARTS_RUN = "starts_run"  # a run slot, and a stream slot when it streams
    HOLDS_STREAM = "holds_stream"  # a stream slot when it streams
    OTHER = "other"


# The entity a route belongs to, by its first parameter: (kind, id parameter).
ENTITY_KINDS: Dict[str, str] = {
    "agent_id": "agent",
    "team_id": "team",
    "workflow_id": "workflow",
    "session_id": "session",
    "approval_id": "approval",
    "component_id": "component",
    "db_id": "database",
    "eval_run_id": "eval_run",
    "content_id": "knowledge_content",
    "knowledge_id": "knowledge",
    "learning_id": "learning",
    "user_id": "user",
    "memory_id": "memory",
    "schedule_id": "schedule",
    "service_account_id": "service_account",
    "trace_id": "trace",
}
RUNNABLE_KINDS = frozenset({"agent", "team", "workflow"})


@dataclass(frozen=True)
class Entity:
    kind: str  # agent, team, workflow, session, memory, ...
    parameter: str  # the template parameter holding its id


@dataclass(frozen=True)
class Route:
    methods: FrozenSet[str]
    template: str
    rule: Rule
    limit: Limit = Limit.OTHER
    starts_run: bool = False
    own_handler: bool = False  # answered by a dedicated handler of api/ (runs, sessions, catalog, app)
    reason: str = ""  # why a NOT_FORWARDED route is not
    door: str = ""  # a DOOR route's door (``doors.membership.Door`` value)
    always_streams: bool = False  # answered with a stream whatever the request says (else its ``stream`` field says)
    parameters: Tuple[str, ...] = field(init=False)
    entity: Optional[Entity] = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(part[1:-1] for part in self.template.split("/") if part.startswith("{"))
        object.__setattr__(self, "parameters", names)
        kind = ENTITY_KINDS.get(names[0]) if names else None
        object.__setattr__(self, "entity", Entity(kind, names[0]) if kind else None)
        if (self.rule is Rule.NOT_FORWARDED) != bool(self.reason):
            raise ValueError(f"{self.template}: a reason is given exactly for a NOT_FORWARDED route")
        if (self.rule is Rule.DOOR) != bool(self.door):
            raise ValueError(f"{self.template}: a door is named exactly for a DOOR route")

    @property
    def path_format(self) -> str:
        """The template, under the name the observe middleware reads a route's label from."""
        return self.template

    @property
    def runnable_entity(self) -> bool:
        """Whether the route belongs to an agent, a team or a workflow (a key's ``entities``)."""
        return self.entity is not None and self.entity.kind in RUNNABLE_KINDS

    def path(self, params: Dict[str, str], encode) -> str:  # type: ignore[no-untyped-def]
        """The upstream path: the template with each parameter passed through ``encode``."""
        return "/".join(encode(params[part[1:-1]]) if part.startswith("{") else part for part in self.template.split("/"))


def _routes(methods: str, template: str, rule: Rule, **details) -> Route:  # type: ignore[no-untyped-def]
    return Route(frozenset(methods.split()), template, rule, **details)


S, R, C, I, W = Rule.SESSION, Rule.RUN, Rule.COLLECTION, Rule.ITEM, Rule.OS_WIDE
OWN = {"own_handler": True}
RUNS = {"limit": Limit.STARTS_RUN, "starts_run": True}


def _runnable(kind: str, param: str) -> List[Route]:
    base, runs = f"/{kind}/{{{param}}}", f"/{kind}/{{{param}}}/runs"
    routes = [
        _routes("GET", f"/{kind}", W, **OWN),  # merged listing
        _routes("GET", base, W, **OWN),
        _routes("POST", runs, S, **OWN, **RUNS),
        _routes("GET", runs, R, **OWN),
        _routes("GET", f"{runs}/{{run_id}}", R, **OWN),
        _routes("POST", f"{runs}/{{run_id}}/cancel", R, **OWN),
        _routes("POST", f"{runs}/{{run_id}}/continue", R, **OWN, **RUNS),
        # replays, then follows a run
        _routes("POST", f"{runs}/{{run_id}}/resume", R, limit=Limit.STARTS_RUN, always_streams=True),
    ]
    if kind != "workflows":
        routes += [
            _routes("POST", f"{base}/sessions/{{session_id}}/fork", S),
            _routes("GET", f"{runs}/{{run_id}}/checkpoints", R),
            _routes("GET", f"{runs}/{{run_id}}/checkpoints/{{message_index}}", R),
        ]
    if kind == "agents":
        routes.append(_routes("POST", f"{base}/sessions/{{session_id}}/compact", S))
    return routes


def _doors() -> List[Route]:
    """AG-UI, A2A and MCP at agno's default prefixes (``gateway/doors/``)."""
    door = Rule.DOOR
    routes = [
        _routes("POST", "/agui", door, door="agui", always_streams=True, **RUNS),
        _routes("GET", "/status", door, door="agui"),
        # GET: the server's stream; POST: a JSON-RPC message (a tools/call runs); DELETE: the session's end
        _routes("GET POST DELETE", "/mcp", door, door="mcp", limit=Limit.HOLDS_STREAM),
    ]
    for kind, param in (("agents", "agent_id"), ("teams", "team_id"), ("workflows", "workflow_id")):
        base = f"/a2a/{kind}/{{{param}}}"
        routes += [
            _routes("GET", f"{base}/.well-known/agent-card.json", door, door="a2a"),
            _routes("POST", f"{base}/v1/message:send", door, door="a2a", **RUNS),
            _routes("POST", f"{base}/v1/message:stream", door, door="a2a", always_streams=True, **RUNS),
        ]
        if kind != "workflows":
            routes += [
                _routes("POST", f"{base}/v1/tasks:get", door, door="a2a"),
                _routes("POST", f"{base}/v1/tasks:cancel", door, door="a2a"),
            ]
    return routes


ROUTES: Tuple[Route, ...] = (
    *_runnable("agents", "agent_id"),
    *_runnable("teams", "team_id"),
    *_runnable("workflows", "workflow_id"),
    # the gateway itself
    _routes("GET", "/health", Rule.LOCAL, **OWN),
    _routes("GET", "/config", W, **OWN),  # merged from the probes
    # sessions: merged lists, deletes everywhere, the rest by the session (api/sessions.py)
    _routes("GET DELETE", "/sessions", C),
    _routes("POST", "/sessions", S),  # created where its entity's runs will go
    _routes("GET DELETE PATCH", "/sessions/{session_id}", S),
    _routes("GET", "/sessions/{session_id}/media/{storage_key}", S),
    _routes("POST", "/sessions/{session_id}/rename", S),
    _routes("GET", "/sessions/{session_id}/run-previews", S),
    _routes("GET", "/sessions/{session_id}/runs", S),
    _routes("GET", "/sessions/{session_id}/runs/{run_id}", S),
    # approvals
    _routes("GET", "/approvals", C),
    _routes("GET", "/approvals/count", C),
    _routes("GET DELETE", "/approvals/{approval_id}", I),
    _routes("POST", "/approvals/{approval_id}/resolve", I),
    _routes("GET", "/approvals/{approval_id}/status", I),
    # components
    _routes("GET POST", "/components", C),
    _routes("GET PATCH DELETE", "/components/{component_id}", I),
    _routes("GET POST", "/components/{component_id}/configs", I),
    _routes("GET", "/components/{component_id}/configs/current", I),
    _routes("GET PATCH DELETE", "/components/{component_id}/configs/{version}", I),
    _routes("POST", "/components/{component_id}/configs/{version}/set-current", I),
    _routes("POST", "/components/{component_id}/restore", I),
    # databases
    _routes("POST", "/databases/all/migrate", W),
    _routes("POST", "/databases/{db_id}/migrate", I),
    # evals: creating one runs the evaluated agent or team
    _routes("GET DELETE", "/eval-runs", C),
    _routes("POST", "/eval-runs", C, **RUNS),
    _routes("GET PATCH", "/eval-runs/{eval_run_id}", I),
    # the upstream's own files
    _routes("GET", "/filesystem/content", W),
    _routes("GET", "/filesystem/entries", W),
    _routes("GET", "/filesystem/files", W),
    _routes("GET", "/filesystem/search", W),
    _routes("GET", "/info", W),
    # knowledge
    _routes("GET", "/knowledge/config", W),
    _routes("POST GET DELETE", "/knowledge/content", C),
    _routes("PATCH GET DELETE", "/knowledge/content/{content_id}", I),
    _routes("POST", "/knowledge/content/{content_id}/refresh", I),
    _routes("GET", "/knowledge/content/{content_id}/status", I),
    _routes("POST", "/knowledge/remote-content", C),
    _routes("POST", "/knowledge/search", C),
    _routes("GET", "/knowledge/{knowledge_id}/sources", I),
    _routes("GET", "/knowledge/{knowledge_id}/sources/{source_id}/files", I),
    # learnings
    _routes("GET POST", "/learnings", C),
    _routes("GET", "/learnings/users", C),
    _routes("DELETE", "/learnings/users/{user_id}", I),
    _routes("GET PATCH DELETE", "/learnings/{learning_id}", I),
    # memories
    _routes("POST DELETE GET", "/memories", C),
    _routes("DELETE GET PATCH", "/memories/{memory_id}", I),
    _routes("GET", "/memory_topics", C),
    _routes("POST", "/optimize-memories", C),
    _routes("GET", "/user_memory_stats", C),
    # usage metrics (the gateway's own Prometheus scrape is on its admin port: api/admin_listener.py)
    _routes("GET", "/metrics", C),  # merged by day over the database groups
    _routes("POST", "/metrics/refresh", C),  # every group refreshed, the rows merged
    _routes("GET", "/metrics/refresh/status", W),
    _routes("GET PUT POST DELETE PATCH", "/queue", W),
    _routes("GET", "/registry", W),
    # schedules: a trigger runs the scheduled entity
    _routes("GET POST", "/schedules", C),
    _routes("GET PATCH DELETE", "/schedules/{schedule_id}", I),
    _routes("POST", "/schedules/{schedule_id}/disable", I),
    _routes("POST", "/schedules/{schedule_id}/enable", I),
    _routes("GET", "/schedules/{schedule_id}/runs", I),
    _routes("GET", "/schedules/{schedule_id}/runs/{run_id}", I),
    _routes("POST", "/schedules/{schedule_id}/trigger", I, **RUNS),
    # service accounts
    _routes("POST GET", "/service-accounts", C),
    _routes("DELETE", "/service-accounts/{service_account_id}", I),
    # traces
    _routes("GET", "/trace_session_stats", C),
    _routes("GET", "/traces", C),
    _routes("GET", "/traces/filter-schema", W),
    _routes("POST", "/traces/search", C),
    _routes("GET", "/traces/{trace_id}", I),
    *_doors(),
)


@dataclass(frozen=True)
class Match:
    """A path's match: its ``route`` (None when no template with this path takes the method, a
    405), the decoded ``params``, and the methods the path's templates take."""

    route: Optional[Route]
    params: Dict[str, str]
    allowed: FrozenSet[str]


class _Node:
    __slots__ = ("literals", "parameter", "routes")

    def __init__(self) -> None:
        self.literals: Dict[str, _Node] = {}
        self.parameter: Optional[_Node] = None
        self.routes: List[Route] = []


class RouteTable:
    def __init__(self, routes: Tuple[Route, ...]) -> None:
        self.routes = routes
        self._root = _Node()
        seen = set()
        for route in routes:
            node = self._root
            for part in route.template.split("/")[1:]:
                if part.startswith("{"):
                    node.parameter = node.parameter or _Node()
                    node = node.parameter
                else:
                    node = node.literals.setdefault(part, _Node())
            shape = tuple("{}" if part.startswith("{") else part for part in route.template.split("/"))
            for method in route.methods:
                if (shape, method) in seen:
                    raise ValueError(f"{method} {route.template} is declared twice")
                seen.add((shape, method))
            node.routes.append(route)

    def match(self, method: str, path: str) -> Optional[Match]:
        """The route ``method path`` (a decoded path) is for; None when no template has its shape."""
        if not path.startswith("/"):
            return None
        parts = path.split("/")[1:]
        allowed: FrozenSet[str] = frozenset()
        for node, values in self._walk(self._root, parts, 0, ()):
            for route in node.routes:
                if method in route.methods:
                    return Match(route, dict(zip(route.parameters, values)), route.methods)
                allowed |= route.methods
        return Match(None, {}, allowed) if allowed else None

    def _walk(self, node: _Node, parts: List[str], index: int, values: Tuple[str, ...]) -> Iterator[Tuple[_Node, Tuple[str, ...]]]:
        """The nodes ``parts[index:]`` reach from ``node``: literal segments first."""
        if index == len(parts):
            if node.routes:
                yield node, values
            return
        part = parts[index]
        literal = node.literals.get(part)
        if literal is not None:
            yield from self._walk(literal, parts, index + 1, values)
        if node.parameter is not None and part:
            yield from self._walk(node.parameter, parts, index + 1, values + (part,))

    def find(self, template: str) -> List[Route]:
        """The routes declared with ``template`` (for the tests and the docs)."""
        return [route for route in self.routes if route.template == template]


TABLE = RouteTable(ROUTES)

"""What a client key may do: agno's own checker, asked once per key and route at load.

AgentOS authorizes a JWT in two places, and a key's scopes (``gateway/scopes.py``) are asked both:

* its middleware: ``check_route_scopes`` with agno's ``get_default_scope_mappings`` (the route's
  required scopes, per id for the routes of an agent, team or workflow), and the listings'
  filtered access (``GET /agents`` with ``agents:x:read`` only: a list of ``x``; with no read scope
  of the family: 403, as AgentOS's routers answer);
* its routers: ``require_resource_access`` on every route of an agent, team or workflow: ``read``
  for ``GET /{kind}/{id}``, ``run`` for every other route under it (fork, compact and resume,
  which the mappings do not name, included). agno declares those in its routers' code, not in
  data: this is the one rule the gateway states itself, and ``tests/test_scopes.py`` checks it
  against a real AgentOS.

The gateway's own ``POST /v1/{kind}/{id}/run`` needs what ``POST /{kind}/{id}/runs`` needs.

Asking agno per request would parse every scope and run ``fnmatch`` over ~150 patterns each
time. Instead, at load, each (route, method) of the route table gets a ``Permission`` per key:
agno's answer for an id no scope of the key names (``default``) and for each id one does
(agno compares ids by equality only, so these answers are all there is). A request then costs one
table match (the ``/v1`` run path: a split) and a dictionary lookup.

A path or method the route table does not know is refused to a limited key (AgentOS would answer
404 or 405): nothing a limited key sends reaches an upstream by a route no scope describes (the
session routes, for one, forward methods and sub-paths AgentOS does not have).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from gateway.api.route_table import TABLE, Route
from gateway.errors import Forbidden
from gateway.scopes import ADMIN_SCOPE, PER_ID_FAMILIES
from gateway.wire.paths import entity_path

_PLACEHOLDER = "_"  # any other parameter's value: agno's patterns match every id alike
_RUN_TEMPLATES: Dict[str, str] = {}  # kind segment -> its "POST /{kind}/{id}/runs" template


@dataclass(frozen=True)
class Permission:
    """Whether a key may use one route with one method, for every id of its entity."""

    default: bool  # for an id none of the key's scopes names, and for routes of no agent/team/workflow
    exceptions: Mapping[str, bool]  # the named ids whose answer differs
    needs: Tuple[str, ...]  # agno's required scopes (for the refusal's text)

    def allows(self, entity_id: Optional[str]) -> bool:
        if entity_id is None or not self.exceptions:
            return self.default
        return self.exceptions.get(entity_id, self.default)


class Grants:
    """One key's permissions over the route table (``admin``: everything, nothing checked)."""

    def __init__(self, name: str, scopes: Sequence[str]) -> None:
        from agno.os.scopes import get_accessible_resource_ids, get_default_scope_mappings, parse_scope

        self.name = name
        self.admin = any(parse_scope(scope).scope_type == "admin" for scope in scopes)
        self.permissions: Dict[Tuple[str, str], Permission] = {}
        # kind segment -> the ids the key may read (None: all): what /config and the listings show
        self.visible: Dict[str, Optional[FrozenSet[str]]] = {family: None for family in PER_ID_FAMILIES}
        if self.admin:
            return
        mappings = {**get_default_scope_mappings(), **door_scope_mappings()}
        named = _named_ids(scopes)
        for route in TABLE.routes:
            family = _family(route)
            candidates = named.get(family, frozenset()) if family else frozenset()
            for method in route.methods:
                self.permissions[(route.template, method)] = _permission(scopes, mappings, route, method, candidates)
        for family in PER_ID_FAMILIES:
            # AgentOS filters /config and the listings by the read action (filter_resources_by_access)
            ids = get_accessible_resource_ids(list(scopes), family, action="read")
            self.visible[family] = None if "*" in ids else frozenset(ids)

    @property
    def runs_every_entity(self) -> bool:
        """Whether the key may run every agent, team and workflow (``agents:*:run``, ...)."""
        if self.admin:
            return True
        runs = [self.permissions[(template, "POST")] for template in _RUN_TEMPLATES.values()]
        return all(run.default and all(run.exceptions.values()) for run in runs)

    def refusal(self, method: str, path: str) -> Optional[Forbidden]:
        """None when the key may send ``method path`` (a decoded path), else the 403."""
        if self.admin:
            return None
        # The run routes, the hot path, without the table's walk: /v1/{kind}/{id}/run (any method:
        # the app answers 405) and POST /{kind}/{id}/runs.
        run = entity_path(path)
        if run is not None and run.is_run and run.entity_id and (run.v1 or method == "POST"):
            family, entity_id = run.kind.path, run.entity_id
        else:
            family = entity_id = ""
        if family:
            if self.permissions[(_RUN_TEMPLATES[family], "POST")].allows(entity_id):
                return None
            return Forbidden(f"Key {self.name!r} may not use {family} {entity_id!r}")
        match = TABLE.match(method, path)
        route = match.route if match is not None else None
        if route is None:  # no route, or none with this method (where AgentOS answers 404 or 405)
            return Forbidden(f"Key {self.name!r} may not {method} this path: no AgentOS route takes it")
        permission = self.permissions[(route.template, method)]
        family = _family(route)
        entity_id = match.params[route.parameters[0]] if family else None
        if permission.allows(entity_id):
            return None
        if family and entity_id is not None:
            return Forbidden(f"Key {self.name!r} may not use {family} {entity_id!r}")
        return Forbidden(f"Key {self.name!r} may not {method} {route.template}: it needs {' and '.join(permission.needs)}")


def visible_only(state: Any, family: str, items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """``items`` (agno's listing entries, with ``id``) the request's key may read, as AgentOS
    filters ``/config`` and ``GET /{family}``. ``state``: the request's state (no key: all)."""
    visible = getattr(state, "visible", None)
    allowed = visible.get(family) if isinstance(visible, dict) else None
    if allowed is None:
        return items
    return [item for item in items if item.get("id") in allowed]


_FAMILIES = {"agent": "agents", "team": "teams", "workflow": "workflows"}


def _family(route: Route) -> Optional[str]:
    """The kind segment (``agents``) of a route of an agent, team or workflow, else None."""
    return _FAMILIES[route.entity.kind] if route.runnable_entity and route.entity is not None else None


def door_scope_mappings() -> Dict[str, List[str]]:
    """The scopes AgentOS's interfaces ask for their routes (their own ``get_scope_mappings``) at
    agno's default prefixes, where the route table declares the doors. AG-UI's is the agent
    family's (an AG-UI door serving a team asks ``teams:run`` on AgentOS; the gateway cannot
    see which entity a door serves). MCP's transport is gated per tool (``doors/mcp.py``)."""
    mappings = {"POST /agui": ["agents:run"]}
    try:
        from agno.os.interfaces.a2a.scopes import get_a2a_scope_mappings
    except ImportError:  # pragma: no cover - agno without its A2A interface module
        return mappings
    return {**mappings, **get_a2a_scope_mappings("/a2a")}


def _named_ids(scopes: Sequence[str]) -> Dict[str, FrozenSet[str]]:
    """family -> the ids the key's per-resource scopes name (``*`` aside)."""
    from agno.os.scopes import parse_scope

    named: Dict[str, set] = {}
    for scope in scopes:
        parsed = parse_scope(scope)
        if parsed.is_per_resource_scope and not parsed.is_wildcard_resource and parsed.resource_id:
            named.setdefault(parsed.resource or "", set()).add(parsed.resource_id)
    return {family: frozenset(ids) for family, ids in named.items()}


def _permission(
    scopes: Sequence[str], mappings: Mapping[str, List[str]], route: Route, method: str, named: FrozenSet[str]
) -> Permission:
    unnamed = "~"  # no scope names it: entity ids cannot hold "~" (wire/kinds.py), a scope's id is checked too
    while unnamed in named:
        unnamed += "~"
    answers = {entity_id: _agno_allows(scopes, mappings, route, method, entity_id) for entity_id in (*named, unnamed)}
    default = answers.pop(unnamed)
    from agno.os.scopes import get_required_scopes_for_route

    needs = tuple(get_required_scopes_for_route(dict(mappings), method, _sample_path(route, unnamed)))
    if method == "GET" and route.template[1:] in PER_ID_FAMILIES:  # a listing: one id's read scope is enough
        needs = (f"{needs[0]} (or {route.template[1:]}:<id>:read)",) if needs else needs
    return Permission(default, {i: answer for i, answer in answers.items() if answer != default}, needs)


def _agno_allows(scopes: Sequence[str], mappings: Mapping[str, List[str]], route: Route, method: str, entity_id: str) -> bool:
    """AgentOS's verdict on a JWT with ``scopes`` for ``method`` on the route (its entity: ``entity_id``)."""
    from agno.os.authz.provider import AuthorizationContext
    from agno.os.authz.scope_provider import ScopeAuthorizationProvider
    from agno.os.scopes import check_route_scopes, get_required_scopes_for_route

    path = _sample_path(route, entity_id)
    checked = check_route_scopes(list(scopes), dict(mappings), method, path, admin_scope=ADMIN_SCOPE)
    if not checked.allowed:
        return False
    if checked.accessible_resource_ids is not None and not checked.accessible_resource_ids:
        return False  # a listing with nothing readable: AgentOS's routers answer 403
    family = _family(route)
    if family is None:
        return True
    # The routers' require_resource_access: read the entity itself, run for everything under it;
    # a door's route: what its mapping asks (an A2A card or task is read, a message runs).
    if route.door:
        needed = get_required_scopes_for_route(dict(mappings), method, path)
        action = "read" if needed and all(scope.endswith(":read") for scope in needed) else "run"
    else:
        action = "read" if route.template == f"/{family}/{{{route.parameters[0]}}}" and method == "GET" else "run"
    context = AuthorizationContext(
        scopes=list(scopes), resource_type=family, resource_id=entity_id, action=action, admin_scope=ADMIN_SCOPE
    )
    return ScopeAuthorizationProvider().check(context)


def _sample_path(route: Route, entity_id: str) -> str:
    values = {name: _PLACEHOLDER for name in route.parameters}
    if route.parameters and _family(route):
        values[route.parameters[0]] = entity_id
    return route.path(values, lambda value: value)


def _run_templates() -> Dict[str, str]:
    runs = {}
    for route in TABLE.routes:
        family = _family(route)
        if family and "POST" in route.methods and route.template == f"/{family}/{{{route.parameters[0]}}}/runs":
            runs[family] = route.template
    return runs


_RUN_TEMPLATES.update(_run_templates())

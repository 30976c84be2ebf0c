"""Client keys' permissions in agno's own vocabulary: AgentOS's RBAC scopes (``agno/os/scopes.py``).

A scope is ``agent_os:admin`` (everything), ``<family>:<action>`` (``sessions:read``,
``memories:write``: every item of the family) or ``<family>:<id>:<action>`` (``agents:echo-agent:run``;
``*`` for every id). What each route needs comes from agno's own route→scope mappings
(``get_default_scope_mappings``); ``api/permissions.py`` asks agno's checker.

This module only reads a key's configuration: which scope strings are valid, and what a key's
``entities`` shorthand and its defaults stand for.
"""

from __future__ import annotations

import functools
from typing import FrozenSet, List, Optional, Sequence, Tuple

from gateway.wire.kinds import ENTITY_ID_PATTERN, EntityKind, is_valid_entity_id

ADMIN_SCOPE = "agent_os:admin"
# The families AgentOS checks per id (agno's get_resource_context_from_path reads only these).
PER_ID_FAMILIES: Tuple[str, ...] = tuple(kind.path for kind in EntityKind)
# What a key's ``entities`` stands for, per id and family: run it, read it. ``config:read`` keeps
# ``GET /config`` (open to such keys before scopes existed) open to them; AgentOS filters its roster.
ENTITY_ACTIONS: Tuple[str, ...] = ("run", "read")
SHORTHAND_EXTRAS: Tuple[str, ...] = ("config:read",)


@functools.lru_cache(maxsize=1)
def known_scopes() -> FrozenSet[Tuple[str, str]]:
    """Every (family, action) some AgentOS route requires, from agno's own mappings (the company
    routes included), plus running an agent, team or workflow."""
    from agno.os.scopes import LEGACY_RESOURCE_ALIASES, get_default_scope_mappings

    pairs = {
        (scope.split(":", 1)[0], scope.rsplit(":", 1)[1])
        for scopes in get_default_scope_mappings(company=True).values()
        for scope in scopes
    }
    pairs |= {(family, action) for family in PER_ID_FAMILIES for action in ENTITY_ACTIONS}
    pairs |= {(legacy, action) for legacy, current in LEGACY_RESOURCE_ALIASES.items() for (f, action) in set(pairs) if f == current}
    return frozenset(pairs)


def scope_problem(scope: str) -> Optional[str]:
    """Why ``scope`` is not a scope AgentOS would honour, or None when it is one.

    agno parses any string (an unknown one simply grants nothing); a key's configuration is
    stricter, so a typo is an error at load instead of a key that silently cannot do anything.
    """
    from agno.os.scopes import parse_scope

    parsed = parse_scope(scope)
    if parsed.scope_type == "admin":
        return None
    if parsed.scope_type == "unknown" or any(not part for part in scope.split(":")):
        return f"{scope!r}: not a scope (resource:action, resource:<id>:action or {ADMIN_SCOPE})"
    family, action = scope.split(":")[0], scope.rsplit(":", 1)[1]
    if (family, action) not in known_scopes():
        return f"{scope!r}: no AgentOS route needs {family}:{action}"
    if parsed.is_per_resource_scope and not parsed.is_wildcard_resource:
        if family not in PER_ID_FAMILIES:
            return f"{scope!r}: only {', '.join(PER_ID_FAMILIES)} take an id ({family}:{action} or {family}:*:{action})"
        if not is_valid_entity_id(parsed.resource_id or ""):
            return f"{scope!r}: the id must match {ENTITY_ID_PATTERN.pattern} (or be *)"
    return None


def entity_scopes(entity_ids: Sequence[str]) -> List[str]:
    """The scopes a key's ``entities: [...]`` stands for: each id run and read as an agent, a team
    and a workflow, and ``config:read``."""
    scopes = [f"{family}:{entity_id}:{action}" for entity_id in entity_ids for family in PER_ID_FAMILIES for action in ENTITY_ACTIONS]
    return [*scopes, *SHORTHAND_EXTRAS]


def key_scopes(scopes: Optional[Sequence[str]], entities: Optional[Sequence[str]]) -> List[str]:
    """A key's effective scopes: its ``scopes`` and the shorthand of its ``entities``; a key with
    neither may do everything (``agent_os:admin``), as a key did before scopes existed."""
    if scopes is None and entities is None:
        return [ADMIN_SCOPE]
    return [*(scopes or ()), *(entity_scopes(entities) if entities is not None else ())]

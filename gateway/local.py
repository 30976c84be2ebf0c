"""The in-process components the gateway serves itself, loaded from ``module:attribute`` paths."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from agno.agent import Agent
from agno.db.base import BaseDb
from agno.team import Team
from agno.workflow import Workflow

from gateway.settings import ConfigError, LocalEntities
from gateway.wire.kinds import EntityKind, is_valid_entity_id

Component = Union[Agent, Team, Workflow]
_EXPECTED: Dict[EntityKind, type] = {EntityKind.AGENT: Agent, EntityKind.TEAM: Team, EntityKind.WORKFLOW: Workflow}


@dataclass(frozen=True)
class LocalEntity:
    kind: EntityKind
    id: str
    component: Component

    def fresh(self) -> Component:
        """A copy for one request, as AgentOS makes: runs never share mutable component state.
        (The model and database instances are shared, as in AgentOS.)"""
        return self.component.deep_copy()


class LocalRegistry:
    def __init__(self, entities: Iterable[LocalEntity] = ()) -> None:
        self._entities: Dict[Tuple[EntityKind, str], LocalEntity] = {}
        for entity in entities:
            self._entities[(entity.kind, entity.id)] = entity

    @classmethod
    def from_config(cls, local: LocalEntities) -> "LocalRegistry":
        """Import every configured component; ``ConfigError`` names each bad entry's field."""
        problems: List[str] = []
        entities: List[LocalEntity] = []
        seen: Dict[Tuple[EntityKind, str], str] = {}
        for kind in EntityKind:
            for index, path in enumerate(getattr(local, kind.path)):
                field = f"local.{kind.path}[{index}]"
                try:
                    entity = _load(kind, path)
                except ConfigError as error:
                    problems.append(f"{field}: {error}")
                    continue
                if (kind, entity.id) in seen:
                    problems.append(f"{field}: id {entity.id!r} is already served by {seen[(kind, entity.id)]}")
                    continue
                seen[(kind, entity.id)] = field
                entities.append(entity)
        if problems:
            raise ConfigError("\n".join(problems))
        return cls(entities)

    def get(self, kind: EntityKind, entity_id: str) -> Optional[LocalEntity]:
        return self._entities.get((kind, entity_id))

    def entities(self) -> List[LocalEntity]:
        return list(self._entities.values())

    def ids_any(self) -> bool:
        return bool(self._entities)

    def ids(self, kind: EntityKind) -> List[str]:
        return [entity_id for (entity_kind, entity_id) in self._entities if entity_kind is kind]

    def summaries(self, kind: EntityKind) -> List[Dict[str, Any]]:
        """The entries of ``GET /config``'s ``agents``/``teams``/``workflows``, in AgentOS's shape."""
        from agno.os.schema import AgentSummaryResponse, TeamSummaryResponse, WorkflowSummaryResponse

        summarize = {
            EntityKind.AGENT: AgentSummaryResponse.from_agent,
            EntityKind.TEAM: TeamSummaryResponse.from_team,
            EntityKind.WORKFLOW: WorkflowSummaryResponse.from_workflow,
        }[kind]
        return [
            summarize(entity.component).model_dump(exclude_none=True)  # type: ignore[arg-type]
            for (entity_kind, _), entity in self._entities.items()
            if entity_kind is kind
        ]


def open_db(url: Optional[str]) -> BaseDb:
    """An agno database from a URL: ``sqlite:///file``, ``postgresql://...``, or in-memory when empty."""
    if not url:
        from agno.db.in_memory import InMemoryDb

        return InMemoryDb()
    if url.startswith("sqlite:///"):
        from agno.db.sqlite import SqliteDb

        return SqliteDb(db_file=url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        from agno.db.postgres import PostgresDb

        return PostgresDb(db_url=url)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://...")


def _load(kind: EntityKind, path: str) -> LocalEntity:
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{path!r} is not a module:attribute import path")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:  # an import runs user code: any failure is a config failure
        raise ConfigError(f"cannot import module {module_name!r}: {error}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    expected = _EXPECTED[kind]
    if not isinstance(target, expected):
        raise ConfigError(f"{path!r} is a {type(target).__name__}, not an agno {expected.__name__}")
    entity_id = getattr(target, "id", None)
    if not entity_id or not is_valid_entity_id(entity_id):
        raise ConfigError(f"{path!r} needs an explicit id matching [A-Za-z0-9._-]{{1,128}}, has {entity_id!r}")
    return LocalEntity(kind=kind, id=entity_id, component=target)

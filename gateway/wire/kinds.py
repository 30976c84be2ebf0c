"""The three kinds of runnable entity and everything the wire needs to know about each.

One table, so that the route segment, agno's parsers, the error event of a failed run and the
404 text of an unknown id cannot disagree between the runner, the API and the forwarding path.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from agno.db.base import SessionType
from agno.run.agent import RunErrorEvent, RunOutput, run_output_event_from_dict
from agno.run.base import BaseRunOutputEvent, RunStatus
from agno.run.team import RunErrorEvent as TeamRunErrorEvent
from agno.run.team import TeamRunOutput, team_run_output_event_from_dict
from agno.run.workflow import WorkflowErrorEvent, WorkflowRunOutput, workflow_run_output_event_from_dict

ENTITY_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclass(frozen=True)
class KindSpec:
    path: str  # the route segment: /v1/{path}/{id}/run, /{path}/{id}/runs
    id_field: str  # the id key in outputs and events: agent_id, team_id, workflow_id
    not_found: str  # AgentOS's 404 detail
    output_from_dict: Callable[[Dict[str, Any]], Any]
    event_from_dict: Callable[[Dict[str, Any]], BaseRunOutputEvent]
    error_event: Callable[..., BaseRunOutputEvent]
    session_type: SessionType


class EntityKind(enum.Enum):
    __hash__ = object.__hash__  # members are singletons: identity hashing, in C (Enum's is Python)

    AGENT = KindSpec(
        "agents", "agent_id", "Agent not found", RunOutput.from_dict, run_output_event_from_dict, RunErrorEvent,
        SessionType.AGENT,
    )
    TEAM = KindSpec(
        "teams",
        "team_id",
        "Team not found",
        TeamRunOutput.from_dict,
        team_run_output_event_from_dict,
        TeamRunErrorEvent,
        SessionType.TEAM,
    )
    WORKFLOW = KindSpec(
        "workflows",
        "workflow_id",
        "Workflow not found",
        WorkflowRunOutput.from_dict,
        workflow_run_output_event_from_dict,
        WorkflowErrorEvent,
        SessionType.WORKFLOW,
    )

    @property
    def spec(self) -> KindSpec:
        return self.value

    @property
    def path(self) -> str:
        return self.value.path

    @classmethod
    def from_path(cls, segment: str) -> Optional["EntityKind"]:
        return _BY_PATH.get(segment)

    def output_from_dict(self, data: Dict[str, Any]) -> Any:
        """agno's typed output; ``from_dict`` mutates its argument, so it gets a shallow copy."""
        output = self.value.output_from_dict(dict(data))
        if isinstance(output.status, str):  # WorkflowRunOutput.from_dict leaves it a str
            output.status = RunStatus(output.status)
        return output

    def event_from_dict(self, data: Dict[str, Any]) -> BaseRunOutputEvent:
        return self.value.event_from_dict(dict(data))

    def error_event(
        self, error: BaseException, *, entity_id: str, run_id: Optional[str], session_id: Optional[str]
    ) -> BaseRunOutputEvent:
        """The in-band event that ends a stream whose run failed outside the model.

        The error's identity is AgentOS's: ``error_type``, ``error_id`` and ``additional_data``
        only from agno's own exceptions (``InputCheckError``...), never a Python class name.
        """
        fields: Dict[str, Any] = {
            "run_id": run_id,
            "session_id": session_id,
            "error_type": getattr(error, "type", None),
            "error_id": getattr(error, "error_id", None),
            "additional_data": getattr(error, "additional_data", None),
        }
        if self is EntityKind.WORKFLOW:
            fields.update(workflow_id=entity_id, error=str(error))
        else:
            fields.update({self.value.id_field: entity_id, "content": str(error)})
        return self.value.error_event(**fields)


_BY_PATH = {kind.path: kind for kind in EntityKind}


def is_valid_entity_id(entity_id: str) -> bool:
    return ENTITY_ID_PATTERN.fullmatch(entity_id) is not None

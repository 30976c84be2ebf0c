"""The demo components: an agent, a delegating team and a one-step workflow, on the offline model.

Ids are explicit because AgentOS otherwise derives them from names, and the team delegates by
member id. ``echo_agent``, ``echo_team`` and ``echo_workflow`` are the module-level instances the
gateway's embedded default config imports (``gateway.demo.components:echo_agent``...); their
instance name comes from ``GATEWAY_INSTANCE_NAME`` and their database from ``GATEWAY_DEMO_DB``
(none when it is unset: the gateway then gives them its local database).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from agno.agent import Agent
from agno.db.base import BaseDb
from agno.db.in_memory import InMemoryDb
from agno.team import Team
from agno.workflow import Step, Workflow

from gateway.demo.model import MEMBER_ID, DeterministicModel
from gateway.local import open_db

AGENT_ID = "echo-agent"
TEAM_ID = "echo-team"
WORKFLOW_ID = "echo-workflow"

# Before agno reads it: runs would otherwise post telemetry to the network.
os.environ.setdefault("AGNO_TELEMETRY", "false")


@dataclass(frozen=True)
class DemoComponents:
    agent: Agent
    team: Team
    workflow: Workflow


def build_demo(instance: str = "local", db: Optional[BaseDb] = None) -> DemoComponents:
    """Fresh demo components answering as ``instance``, storing sessions in ``db`` (in memory
    when none is given)."""
    return _build(instance, db if db is not None else InMemoryDb())


def _build(instance: str, db: Optional[BaseDb]) -> DemoComponents:
    model = DeterministicModel(instance=instance)
    agent = Agent(
        id=AGENT_ID, name="Echo Agent", model=model, db=db, add_history_to_context=True, telemetry=False
    )
    member = Agent(id=MEMBER_ID, name="Member Agent", model=model, db=db, telemetry=False)
    team = Team(
        id=TEAM_ID,
        name="Echo Team",
        members=[member],
        model=model,
        db=db,
        add_history_to_context=True,
        telemetry=False,
    )
    step_agent = Agent(id="wf-agent", name="WF Agent", model=model, db=db, telemetry=False)
    workflow = Workflow(
        id=WORKFLOW_ID, name="Echo Workflow", steps=[Step(name="echo-step", agent=step_agent)], db=db, telemetry=False
    )
    # The step sees earlier runs: a session visibly continues. Set after construction: agno warns
    # about history without a database, and the gateway gives one later (gateway/local_os.py).
    workflow.add_workflow_history_to_steps = True
    return DemoComponents(agent=agent, team=team, workflow=workflow)


# Without GATEWAY_DEMO_DB they have no database: the gateway gives them its local one
# (gateway/local_os.py), which its in-process AgentOS serves the data routes of.
_demo_db_url = os.environ.get("GATEWAY_DEMO_DB")
_default = _build(os.environ.get("GATEWAY_INSTANCE_NAME", "gateway"), open_db(_demo_db_url) if _demo_db_url else None)
echo_agent: Agent = _default.agent
echo_team: Team = _default.team
echo_workflow: Workflow = _default.workflow

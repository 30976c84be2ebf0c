"""The demo components: an agent, a delegating team and a one-step workflow, on the offline model.

Ids are explicit because AgentOS otherwise derives them from names, and the team delegates by
member id. ``echo_agent``, ``echo_team`` and ``echo_workflow`` are the module-level instances the
gateway's embedded default config imports (``gateway.demo.components:echo_agent``...); their
instance name comes from ``GATEWAY_INSTANCE_NAME`` and their database from ``GATEWAY_DEMO_DB``.
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


def open_db(url: Optional[str]) -> BaseDb:
    """An agno database from a URL: ``sqlite:///file``, ``postgresql://...``, or in-memory when empty."""
    if not url:
        return InMemoryDb()
    if url.startswith("sqlite:///"):
        from agno.db.sqlite import SqliteDb

        return SqliteDb(db_file=url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        from agno.db.postgres import PostgresDb

        return PostgresDb(db_url=url)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://...")


def build_demo(instance: str = "local", db: Optional[BaseDb] = None) -> DemoComponents:
    """Fresh demo components answering as ``instance``, storing sessions in ``db``."""
    db = db if db is not None else InMemoryDb()
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
        id=WORKFLOW_ID,
        name="Echo Workflow",
        steps=[Step(name="echo-step", agent=step_agent)],
        db=db,
        add_workflow_history_to_steps=True,  # the step sees earlier runs: a session visibly continues
        telemetry=False,
    )
    return DemoComponents(agent=agent, team=team, workflow=workflow)


_default = build_demo(
    instance=os.environ.get("GATEWAY_INSTANCE_NAME", "gateway"), db=open_db(os.environ.get("GATEWAY_DEMO_DB"))
)
echo_agent: Agent = _default.agent
echo_team: Team = _default.team
echo_workflow: Workflow = _default.workflow

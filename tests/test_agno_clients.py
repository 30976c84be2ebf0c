"""agno's own remote clients pointed at ``agentos-gateway upstream``: it is a faithful AgentOS."""

from __future__ import annotations

import uuid

from agno.agent import RemoteAgent
from agno.run.base import RunStatus
from agno.team import RemoteTeam
from agno.workflow import RemoteWorkflow

from tests.conftest import INSTANCE


async def test_remote_agent_runs_streams_and_keeps_history(upstream) -> None:
    agent = RemoteAgent(base_url=upstream.url, agent_id="echo-agent")
    session_id = f"remote-{uuid.uuid4()}"
    first = await agent.arun("what is 6 * 7", session_id=session_id, user_id="u1")
    assert first.status == RunStatus.completed
    assert first.content == f"6 * 7 = 42 [instance={INSTANCE} history=0]"
    second = await agent.arun("hello", session_id=session_id, user_id="u1")
    assert second.content == f"Echo: hello [instance={INSTANCE} history=2]"
    events = [event async for event in agent.arun("a b", stream=True, session_id=session_id, user_id="u1")]
    assert events[0].event == "RunStarted" and events[-1].event == "RunCompleted"
    assert events[-1].content.endswith("history=4]")


async def test_remote_team_delegates(upstream) -> None:
    team = RemoteTeam(base_url=upstream.url, team_id="echo-team")
    output = await team.arun("delegate: 3 + 4")
    assert output.status == RunStatus.completed
    assert output.content.startswith("Member said: 3 + 4 = 7")
    assert [member.agent_id for member in output.member_responses] == ["member-agent"]


async def test_remote_workflow_runs(upstream) -> None:
    workflow = RemoteWorkflow(base_url=upstream.url, workflow_id="echo-workflow")
    output = await workflow.arun("10 / 4")
    assert output.content == f"10 / 4 = 2.5 [instance={INSTANCE} history=0]"


async def test_remote_agent_reports_a_model_failure_in_band(upstream) -> None:
    output = await RemoteAgent(base_url=upstream.url, agent_id="echo-agent").arun("fail: boom")
    assert output.status == RunStatus.error
    assert output.content == "deterministic failure: boom"


async def test_agentos_client_reads_the_gateways_config(gateway) -> None:
    from agno.client import AgentOSClient

    config = await AgentOSClient(base_url=gateway.url).aget_config()
    assert [agent.id for agent in config.agents] == ["echo-agent"]
    assert [team.id for team in config.teams] == ["echo-team"]
    assert [workflow.id for workflow in config.workflows] == ["echo-workflow"]
    assert config.databases and config.agents[0].db_id in config.databases

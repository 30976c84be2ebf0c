"""agno's own remote clients pointed at an AgentOS (``agentos-gateway upstream``), at the gateway
serving the demo components in-process, and at a gateway in front of two upstreams: all three
must behave alike, which is what makes the gateway a drop-in AgentOS."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from agno.agent import RemoteAgent
from agno.run.base import RunStatus
from agno.team import RemoteTeam
from agno.workflow import RemoteWorkflow

from tests.pools import answered_by

TARGETS = ["upstream", "gateway", "pool_gateway"]


@pytest.fixture(params=TARGETS)
def server(request):
    return request.getfixturevalue(request.param)


async def test_remote_agent_runs_streams_and_keeps_history(server) -> None:
    agent = RemoteAgent(base_url=server.url, agent_id="echo-agent")
    session_id = f"remote-{uuid.uuid4()}"
    first = await agent.arun("what is 6 * 7", session_id=session_id, user_id="u1")
    assert first.status == RunStatus.completed
    assert first.content.startswith("6 * 7 = 42 [instance=")
    instance, history = answered_by(first.content)
    assert history == 0
    second = await agent.arun("hello", session_id=session_id, user_id="u1")
    assert answered_by(second.content) == (instance, 2)
    events = [event async for event in agent.arun("a b", stream=True, session_id=session_id, user_id="u1")]
    assert events[0].event == "RunStarted" and events[-1].event == "RunCompleted"
    assert answered_by(events[-1].content) == (instance, 4)


async def test_remote_team_delegates(server) -> None:
    team = RemoteTeam(base_url=server.url, team_id="echo-team")
    output = await team.arun("delegate: 3 + 4")
    assert output.status == RunStatus.completed
    assert output.content.startswith("Member said: 3 + 4 = 7")
    assert [member.agent_id for member in output.member_responses] == ["member-agent"]


async def test_remote_workflow_runs_and_streams(server) -> None:
    workflow = RemoteWorkflow(base_url=server.url, workflow_id="echo-workflow")
    output = await workflow.arun("10 / 4")
    assert output.content.startswith("10 / 4 = 2.5 [instance=")
    events = [event async for event in workflow.arun("1 + 1", stream=True)]
    assert events[0].event == "WorkflowStarted" and events[-1].event == "WorkflowCompleted"


async def test_remote_agent_reports_a_model_failure_in_band(server) -> None:
    output = await RemoteAgent(base_url=server.url, agent_id="echo-agent").arun("fail: boom")
    assert output.status == RunStatus.error
    assert output.content == "deterministic failure: boom"


@pytest.mark.parametrize("client_class,id_field", [(RemoteAgent, "agent_id"), (RemoteTeam, "team_id"), (RemoteWorkflow, "workflow_id")])
async def test_an_unknown_id_fails_as_on_agentos(server, client_class, id_field) -> None:
    client = client_class(base_url=server.url, **{id_field: "no-such-id"})
    with pytest.raises(Exception) as raised:
        await client.arun("hi")
    assert "404" in str(raised.value) or "not found" in str(raised.value).lower()


async def test_remote_agent_cancels_a_running_stream(server) -> None:
    agent = RemoteAgent(base_url=server.url, agent_id="echo-agent")
    seen = []
    async with asyncio.timeout(30):
        async for event in agent.arun("slow: " + " ".join(["word"] * 40), stream=True, stream_events=True):
            seen.append(event.event)
            if event.event == "RunContent" and seen.count("RunContent") == 1:
                assert await agent.acancel_run(event.run_id) is True
    assert "RunCancelled" in seen
    assert seen.count("RunContent") < 40


async def test_agentos_client_reads_the_config(server) -> None:
    from agno.client import AgentOSClient

    config = await AgentOSClient(base_url=server.url).aget_config()
    assert [agent.id for agent in config.agents] == ["echo-agent"]
    assert [team.id for team in config.teams] == ["echo-team"]
    assert [workflow.id for workflow in config.workflows] == ["echo-workflow"]
    assert config.databases and config.agents[0].db_id in config.databases

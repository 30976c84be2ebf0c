"""The offline model's answers, in-process (no server)."""

from __future__ import annotations

import uuid

import pytest
from agno.run.base import RunStatus

from gateway.demo import build_demo

DEMO = build_demo(instance="unit")


@pytest.mark.parametrize(
    "message, answer",
    [
        ("what is 6 * 7", "6 * 7 = 42"),
        ("2 + 3", "2 + 3 = 5"),
        ("10 / 4", "10 / 4 = 2.5"),
        ("1.5 - 4", "1.5 - 4 = -2.5"),
        ("7 / 0", "7 / 0 = undefined"),
        ("hello there", "Echo: hello there"),
        ("delegate: no team here", "Echo: delegate: no team here"),  # an agent has no delegation tool
    ],
)
async def test_agent_answers(message: str, answer: str) -> None:
    output = await DEMO.agent.arun(message, session_id=str(uuid.uuid4()))
    assert output.status == RunStatus.completed
    assert output.content == f"{answer} [instance=unit history=0]"


async def test_history_counts_the_session_so_far() -> None:
    session_id = str(uuid.uuid4())
    contents = [(await DEMO.agent.arun(text, session_id=session_id)).content for text in ("a", "b", "c")]
    assert [content.rsplit("history=", 1)[1] for content in contents] == ["0]", "2]", "4]"]


async def test_fail_is_an_in_band_error() -> None:
    output = await DEMO.agent.arun("fail: boom")
    assert output.status == RunStatus.error
    assert output.content == "deterministic failure: boom"


async def test_team_leader_delegates_through_agnos_tool() -> None:
    output = await DEMO.team.arun("delegate: 3 + 4")
    assert output.content == "Member said: 3 + 4 = 7 [instance=unit history=0] [instance=unit history=0]"
    assert [tool.tool_name for tool in output.tools] == ["delegate_task_to_member"]
    assert output.member_responses[0].agent_id == "member-agent"


async def test_stream_is_word_by_word() -> None:
    chunks = [event.content async for event in DEMO.agent.arun("one two three", stream=True)]
    assert chunks == ["Echo: ", "one ", "two ", "three ", "[instance=unit ", "history=0]"]


async def test_workflow_runs_its_agent_step() -> None:
    output = await DEMO.workflow.arun("5 * 5")
    assert output.content == "5 * 5 = 25 [instance=unit history=0]"
    assert output.step_results[0].step_name == "echo-step"


"""A run whose ``arun`` raises outside the model, for agents, teams and workflows: a stream ends
with exactly one in-band error event, a non-stream run gets AgentOS's error answer. Against a
real gateway process serving ``tests.fixtures.broken``, each answer compared with what AgentOS
itself (in-process, the same components) answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator, Dict, Iterator, List, Tuple

import httpx
import pytest
from agno.run.agent import RunErrorEvent
from agno.run.team import RunErrorEvent as TeamRunErrorEvent
from agno.run.workflow import WorkflowErrorEvent

from gateway import AgentOSRunner
from tests.fixtures import broken
from tests.processes import Server, start_server

# kind -> (route segment, id, the error event's name, agno's class for it, the field with the message)
KINDS: Dict[str, Tuple[str, str, str, type, str]] = {
    "agent": ("agents", "broken-agent", "RunError", RunErrorEvent, "content"),
    "team": ("teams", "broken-team", "TeamRunError", TeamRunErrorEvent, "content"),
    "workflow": ("workflows", "broken-workflow", "WorkflowError", WorkflowErrorEvent, "error"),
}
# input -> (the message raised, status without a stream, body without a stream)
FAILURES: Dict[str, Tuple[str, int, Dict[str, Any]]] = {
    "boom": (f"{broken.MESSAGE}: boom", 500, {"detail": "Internal server error (RuntimeError)"}),
    "refuse: no": (f"{broken.REFUSED}: refuse: no", 400, {"detail": f"{broken.REFUSED}: refuse: no"}),
    "conflict: x": (
        f"{broken.CONFLICT}: conflict: x",
        409,
        {"detail": f"{broken.CONFLICT}: conflict: x", "error_id": "agno_error", "error_type": "agno_error"},
    ),
}


@pytest.fixture(scope="module")
def broken_gateway(tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[Server]:
    config = tmp_path_factory.mktemp("broken") / "gateway.yaml"
    config.write_text(
        "local:\n"
        "  agents: ['tests.fixtures.broken:agent']\n"
        "  teams: ['tests.fixtures.broken:team']\n"
        "  workflows: ['tests.fixtures.broken:workflow']\n"
    )
    server = start_server("broken-gateway", ["serve", "--config", str(config)], log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def agentos() -> AsyncIterator[httpx.AsyncClient]:
    """AgentOS itself serving the same broken components: what the gateway must answer."""
    from agno.os import AgentOS

    app = AgentOS(
        id="broken-os", agents=[broken.agent], teams=[broken.team], workflows=[broken.workflow], telemetry=False
    ).get_app()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # its 500 is an answer, not ours
    async with httpx.AsyncClient(transport=transport, base_url="http://agentos", timeout=30) as client:
        yield client


def _frames(raw: str) -> List[Tuple[str, Dict[str, Any]]]:
    """(event line's name, data) of every SSE frame."""
    frames = []
    for block in filter(None, raw.split("\n\n")):
        event_line, data_line = block.split("\n")
        frames.append((event_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))))
    return frames


def _identity(data: Dict[str, Any], message_field: str) -> Dict[str, Any]:
    return {key: data.get(key) for key in ("event", message_field, "error_type", "error_id", "additional_data")}


@pytest.mark.parametrize("text", list(FAILURES))
@pytest.mark.parametrize("kind", list(KINDS))
async def test_stream_ends_with_one_error_event(kind: str, text: str, broken_gateway: Server, agentos) -> None:
    path, entity_id, error_event, _, message_field = KINDS[kind]
    message = FAILURES[text][0]
    async with httpx.AsyncClient(base_url=broken_gateway.url, timeout=30) as client:
        response = await client.post(f"/v1/{path}/{entity_id}/run", json={"input": text, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = _frames(response.text)
    assert [name for name, _ in frames].count(error_event) == 1, frames
    name, data = frames[-1]
    assert name == data["event"] == error_event
    assert message in data[message_field]
    assert data[f"{kind}_id"] == entity_id  # the gateway also says which run failed
    assert data["session_id"] and data["run_id"]

    theirs = await agentos.post(f"/{path}/{entity_id}/runs", data={"message": text, "stream": "true"})
    assert theirs.status_code == 200
    their_name, their_data = _frames(theirs.text)[-1]
    assert their_name == error_event
    assert _identity(data, message_field) == _identity(their_data, message_field)


@pytest.mark.parametrize("kind", list(KINDS))
async def test_runner_yields_agnos_typed_error_event(kind: str, broken_gateway: Server) -> None:
    _, entity_id, _, event_class, message_field = KINDS[kind]
    async with AgentOSRunner(base_url=broken_gateway.url, **{f"{kind}_id": entity_id}) as runner:
        events = [event async for event in runner.arun("boom", stream=True, stream_events=True)]
    assert [type(event) for event in events].count(event_class) == 1, events
    assert isinstance(events[-1], event_class)
    assert getattr(events[-1], message_field) == FAILURES["boom"][0]


@pytest.mark.parametrize("text", list(FAILURES))
@pytest.mark.parametrize("kind", list(KINDS))
async def test_non_stream_answers_as_agentos(kind: str, text: str, broken_gateway: Server, agentos) -> None:
    path, entity_id, *_ = KINDS[kind]
    _, status, body = FAILURES[text]
    async with httpx.AsyncClient(base_url=broken_gateway.url, timeout=30) as client:
        response = await client.post(f"/v1/{path}/{entity_id}/run", json={"input": text})
    assert (response.status_code, response.json()) == (status, body)
    theirs = await agentos.post(f"/{path}/{entity_id}/runs", data={"message": text, "stream": "false"})
    assert (theirs.status_code, theirs.json()) == (status, body)


async def test_runner_raises_the_status_of_a_non_stream_failure(broken_gateway: Server) -> None:
    async with AgentOSRunner(base_url=broken_gateway.url, agent_id="broken-agent") as runner:
        with pytest.raises(httpx.HTTPStatusError) as raised:
            await runner.arun("boom")
    assert raised.value.response.status_code == 500


def test_the_per_request_copy_stays_broken() -> None:
    """The gateway and AgentOS run a ``deep_copy()``: it must keep the overriding subclass."""
    for component in (broken.agent, broken.team, broken.workflow):
        assert type(component.deep_copy()) is type(component)

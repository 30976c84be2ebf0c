"""AgentOS's other routes through a pool gateway: listings, details, sessions, continue; and a
run that fails in the model never counts against its upstream."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.pools import upstream_states


def _without_db_ids(value):  # type: ignore[no-untyped-def]
    if isinstance(value, dict):
        return {key: _without_db_ids(item) for key, item in value.items() if key != "db_id"}
    if isinstance(value, list):
        return [_without_db_ids(item) for item in value]
    return value


@pytest.fixture
async def client(pool_gateway):
    async with httpx.AsyncClient(base_url=pool_gateway.url, timeout=30) as client:
        yield client


@pytest.mark.parametrize("target", ["gateway", "pool_gateway"])
@pytest.mark.parametrize("kind, entity", [("agents", "echo-agent"), ("teams", "echo-team"), ("workflows", "echo-workflow")])
async def test_listing_and_detail_as_agentos_answers_them(request, upstream, target, kind, entity) -> None:
    """Served in-process (the local gateway) or by upstreams: the same answers as an AgentOS."""
    async with httpx.AsyncClient(base_url=request.getfixturevalue(target).url, timeout=30) as client:
        await _compare_listing(client, upstream, kind, entity)


async def _compare_listing(client, upstream, kind, entity) -> None:  # type: ignore[no-untyped-def]
    listing = await client.get(f"/{kind}")
    detail = await client.get(f"/{kind}/{entity}")
    missing = await client.get(f"/{kind}/no-such-id")
    async with httpx.AsyncClient(base_url=upstream.url, timeout=30) as direct:
        direct_detail = (await direct.get(f"/{kind}/{entity}")).json()
    assert listing.status_code == 200 and [item["id"] for item in listing.json()] == [entity]
    assert detail.status_code == 200
    # the same answer as an AgentOS gives, but for the per-process database id
    assert _without_db_ids(detail.json()) == _without_db_ids(direct_detail)
    assert missing.status_code == 404


async def test_session_routes_find_the_upstream_that_holds_the_session(client) -> None:
    session_id = f"sessions-{uuid.uuid4()}"
    run = await client.post("/v1/agents/echo-agent/run", json={"input": "remember me", "session_id": session_id})
    home = run.headers["x-agentos-gateway-upstream"]
    session = await client.get(f"/sessions/{session_id}", params={"type": "agent"})
    runs = await client.get(f"/sessions/{session_id}/runs", params={"type": "agent"})
    missing = await client.get(f"/sessions/no-such-session-{uuid.uuid4()}", params={"type": "agent"})
    assert session.status_code == 200 and session.headers["x-agentos-gateway-upstream"] == home
    assert session.json()["session_id"] == session_id
    assert [r["run_id"] for r in runs.json()] == [run.json()["run_id"]]
    assert missing.status_code == 404  # every upstream was asked
    renamed = await client.post(f"/sessions/{session_id}/rename", params={"type": "agent"}, json={"session_name": "renamed"})
    assert renamed.status_code == 200, renamed.text
    assert (await client.get(f"/sessions/{session_id}", params={"type": "agent"})).json()["session_name"] == "renamed"


async def test_a_session_created_through_the_gateway_is_where_its_runs_go(client) -> None:
    created = await client.post("/sessions", params={"type": "agent"}, json={"agent_id": "echo-agent", "session_name": "new"})
    assert created.status_code in (200, 201), created.text
    session_id = created.json()["session_id"]
    run = await client.post("/v1/agents/echo-agent/run", json={"input": "hi", "session_id": session_id})
    assert run.headers["x-agentos-gateway-upstream"] == created.headers["x-agentos-gateway-upstream"]


async def test_continue_goes_to_the_upstream_of_the_run(client) -> None:
    session_id = f"continue-{uuid.uuid4()}"
    first = await client.post("/v1/agents/echo-agent/run", json={"input": "first", "session_id": session_id})
    run_id = first.json()["run_id"]
    followed = await client.post(
        f"/agents/echo-agent/runs/{run_id}/continue",
        data={"input": "and then", "session_id": session_id, "stream": "false"},
    )
    assert followed.status_code == 200, followed.text
    assert followed.headers["x-agentos-gateway-upstream"] == first.headers["x-agentos-gateway-upstream"]
    assert followed.json()["session_id"] == session_id
    unknown = await client.post(
        "/agents/echo-agent/runs/nope/continue", data={"input": "x", "session_id": session_id, "stream": "false"}
    )
    assert unknown.status_code == 404 and "No runs found" in unknown.json()["detail"]


@pytest.mark.parametrize("target", ["gateway", "pool_gateway"])
@pytest.mark.parametrize("kind, entity", [("agents", "echo-agent"), ("teams", "echo-team"), ("workflows", "echo-workflow")])
async def test_a_form_field_that_must_be_an_object_is_checked(request, target, kind, entity) -> None:
    """AgentOS answers an empty ``dependencies`` or ``session_state``, or one holding JSON that is
    no object, with a 500 (found by tests/test_fuzz.py); local or forwarded, it is a 400 here."""
    async with httpx.AsyncClient(base_url=request.getfixturevalue(target).url, timeout=30) as client:
        for field, value in (("dependencies", ""), ("session_state", ""), ("session_state", "[1]"), ("dependencies", "3")):
            answer = await client.post(f"/{kind}/{entity}/runs", data={"message": "hi", "stream": "false", field: value})
            assert answer.status_code == 400, (field, value, answer.text)
            assert answer.json() == {"detail": f"Invalid {field} parameter: expected a JSON object"}
        for field, value in (("dependencies", '{"a": 1}'), ("session_state", "null"), ("dependencies", "not json")):
            answer = await client.post(f"/{kind}/{entity}/runs", data={"message": "hi", "stream": "false", field: value})
            assert answer.status_code == 200 and answer.json()["status"] == "COMPLETED", (field, value, answer.text)


async def test_a_workflow_continue_without_a_session_is_the_callers_error(client, pool_gateway) -> None:
    """AgentOS answers it with a 500 (found by tests/test_fuzz.py); through the gateway it is a
    422 naming the field, and never counts against an upstream."""
    before = {name: state["ejections"] for name, state in (await upstream_states(pool_gateway)).items()}
    for data in ({"input": "x"}, {"input": "x", "session_id": ""}, {"stream": "false"}) * 2:  # more than outlier.consecutive_failures (5)
        answer = await client.post("/workflows/echo-workflow/runs/some-run/continue", data=data)
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["body", "session_id"]
    after = {name: state["ejections"] for name, state in (await upstream_states(pool_gateway)).items()}
    assert after == before


async def test_a_run_failing_in_the_model_never_ejects_its_upstream(client, pool_gateway) -> None:
    session_id = f"failing-{uuid.uuid4()}"
    for _ in range(7):  # more than outlier.consecutive_failures (5)
        failed = await client.post("/v1/agents/echo-agent/run", json={"input": "fail: again", "session_id": session_id})
        assert failed.status_code == 200 and failed.json()["status"] == "ERROR"
        assert failed.headers["x-agentos-gateway-affinity"] == "hit"
    streamed = await client.post(
        "/v1/agents/echo-agent/run", json={"input": "fail: again", "stream": True, "session_id": session_id}
    )
    assert "event: RunError" in streamed.text
    state = (await upstream_states(pool_gateway))[failed.headers["x-agentos-gateway-upstream"]]
    assert state["usable"] and state["ejections"] == 0


async def test_a_bad_form_gets_agentos_answers(client) -> None:
    json_body = await client.post("/agents/echo-agent/runs", json={"message": "hi"})
    assert json_body.status_code == 422 and json_body.json()["detail"][0]["loc"] == ["body", "message"]
    bad_bool = await client.post("/agents/echo-agent/runs", data={"message": "hi", "stream": "maybe"})
    assert bad_bool.status_code == 422
    no_message = await client.post("/agents/echo-agent/runs", data={"stream": "false"})
    assert no_message.status_code == 422  # AgentOS's own answer, passed through
    broken = await client.post(
        "/agents/echo-agent/runs", content=b"--xx\r\nbroken", headers={"content-type": "multipart/form-data; boundary=xx"}
    )
    assert broken.status_code in (400, 422) and "detail" in broken.json()


async def test_continue_checks_the_object_fields_too(client) -> None:
    """AgentOS's continue route fails on an empty ``dependencies`` with a 500 (found by
    tests/test_fuzz.py); here it is the caller's 400, before any upstream sees it."""
    answer = await client.post(
        "/agents/echo-agent/runs/some-run/continue", data={"dependencies": "", "session_id": "s", "stream": "false"}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json() == {"detail": "Invalid dependencies parameter: expected a JSON object"}


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/agui"),
        ("GET", "/status"),
        ("POST", "/a2a/agents/echo-agent/v1/message:send"),
        ("GET", "/a2a/agents/echo-agent/.well-known/agent-card.json"),
        ("POST", "/mcp"),
    ],
)
async def test_a_door_no_upstream_serves_is_agentos_404(client, method: str, path: str) -> None:
    """Upstreams without AG-UI, A2A or MCP: their doors answer as such an AgentOS does."""
    answer = await client.request(method, path, json={"threadId": "t", "jsonrpc": "2.0"})
    assert answer.status_code == 404 and answer.json() == {"detail": "Not Found"}
    assert "x-agentos-gateway-upstream" not in answer.headers

"""Every malformed input to the v1 API gets a clear JSON error; failures stay in-band; a client
that leaves cancels its run; nothing is left behind. Against a real gateway process."""

from __future__ import annotations

import json
import uuid
from typing import AsyncIterator

import httpx
import pytest

from tests.helpers import eventually, stored_run_status
from tests.processes import held_connections

LIMIT = 10 * 1024 * 1024


@pytest.fixture
async def client(gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        yield client


@pytest.mark.parametrize(
    "path, detail",
    [
        ("/v1/agents/no-such-agent/run", "Agent not found"),
        ("/v1/teams/no-such-team/run", "Team not found"),
        ("/v1/workflows/no-such-workflow/run", "Workflow not found"),
    ],
)
async def test_unknown_id_is_404(client, path: str, detail: str) -> None:
    response = await client.post(path, json={"input": "hi"})
    assert response.status_code == 404
    assert response.json() == {"detail": detail}


@pytest.mark.parametrize("bad_id", ["bad%20id", "a" * 129, "caf%C3%A9", "semi;colon", "x%0D%0Ay"])
async def test_id_outside_the_pattern_is_400(client, bad_id: str) -> None:
    response = await client.post(f"/v1/agents/{bad_id}/run", json={"input": "hi"})
    assert response.status_code == 400, response.text
    assert "A-Za-z0-9._-" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/agents/a/b/run", "/v1/agents//run"])
async def test_an_id_with_a_slash_matches_no_route(client, path: str) -> None:
    response = await client.post(path, json={"input": "hi"})
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


@pytest.mark.parametrize("path", ["/v1/agents/..%2Fteams%2Fecho-team/run", "/v1/agents/..%5Cx/run"])
async def test_an_encoded_slash_is_refused_before_routing(client, path: str) -> None:
    """Once 404 (no route) or 400 (an id outside the pattern); now the path check's 400, before
    any route is matched."""
    response = await client.post(path, json={"input": "hi"})
    assert response.status_code == 400
    assert response.json() == {"detail": "Invalid path: encoded slash"}


async def test_malformed_json_is_422(client) -> None:
    response = await client.post(
        "/v1/agents/echo-agent/run", content=b'{"input": "hi",', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"message": "hi"}, "input"),  # missing input
        ({"input": 5}, "input"),
        ({"input": "hi", "stream": "maybe"}, "stream"),
        ({"input": "hi", "session_id": 12}, "session_id"),
        ({"input": "hi", "session_state": "not an object"}, "session_state"),
        ({"input": "hi", "metadata": [1, 2]}, "metadata"),
        ({"input": "hi", "retries": -1}, "retries"),
        ({"input": "hi", "images": "not a list"}, "images"),
    ],
)
async def test_wrong_or_missing_field_is_422_naming_it(client, body: dict, field: str) -> None:
    response = await client.post("/v1/agents/echo-agent/run", json=body)
    assert response.status_code == 422, response.text
    locations = [error["loc"] for error in response.json()["detail"]]
    assert any(loc[:2] == ["body", field] for loc in locations), locations


async def test_a_body_that_is_not_an_object_is_422(client) -> None:
    response = await client.post("/v1/agents/echo-agent/run", json=["input", "hi"])
    assert response.status_code == 422


@pytest.mark.parametrize(
    "media, named",
    [
        ({"images": [{"no": "content"}]}, "images[0]: not an agno Image"),
        ({"images": [{"url": "https://example.com/a.png"}, {"url": None}]}, "images[1]: not an agno Image"),
        ({"audio": [{"url": 5}]}, "audio[0]: not an agno Audio"),
        ({"files": [{"filename": "a.txt"}]}, "files[0]: not an agno File"),
    ],
)
async def test_broken_media_is_422_naming_the_item(client, media: dict, named: str) -> None:
    response = await client.post("/v1/agents/echo-agent/run", json={"input": "hi", **media})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(named), response.json()


async def test_a_media_item_that_is_not_an_object_is_422(client) -> None:
    response = await client.post("/v1/agents/echo-agent/run", json={"input": "hi", "images": [5]})
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "images", 0]]


async def test_declared_body_over_the_limit_is_413(client) -> None:
    body = json.dumps({"input": "x" * (LIMIT + 1)}).encode()
    response = await client.post("/v1/agents/echo-agent/run", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


async def test_chunked_body_over_the_limit_is_413(client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"input": "'
        for _ in range(11):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    response = await client.post(
        "/v1/agents/echo-agent/run", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


@pytest.mark.parametrize("kind, entity", [("agents", "echo-agent"), ("teams", "echo-team")])
async def test_model_failure_is_200_with_status_error(client, kind: str, entity: str) -> None:
    response = await client.post(f"/v1/{kind}/{entity}/run", json={"input": "fail: boom"})
    assert response.status_code == 200
    assert response.json()["status"] == "ERROR"
    assert response.json()["content"] == "deterministic failure: boom"


@pytest.mark.parametrize(
    "kind, entity, error_event",
    [("agents", "echo-agent", "RunError"), ("teams", "echo-team", "TeamRunError"), ("workflows", "echo-workflow", "RunError")],
)
async def test_model_failure_in_a_stream_is_an_in_band_event(client, kind: str, entity: str, error_event: str) -> None:
    async with client.stream("POST", f"/v1/{kind}/{entity}/run", json={"input": "fail: boom", "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        lines = [line async for line in response.aiter_lines()]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert error_event in names
    frames = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [frame["event"] for frame in frames] == names  # every frame: event line == JSON "event"


async def test_stream_frames_are_agentos_frames(client) -> None:
    async with client.stream("POST", "/v1/agents/echo-agent/run", json={"input": "a b", "stream": True}) as response:
        raw = (await response.aread()).decode()
    frames = [frame for frame in raw.split("\n\n") if frame]
    assert frames, raw
    for frame in frames:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ")
        assert json.loads(data_line.removeprefix("data: "))["event"] == event_line.removeprefix("event: ")
    assert frames[0].startswith("event: RunStarted") and frames[-1].startswith("event: RunCompleted")


async def test_client_leaving_a_stream_cancels_the_run(client, gateway_db) -> None:
    session_id = f"leave-stream-{uuid.uuid4()}"
    body = {"input": "slow: " + " ".join(["word"] * 40), "stream": True, "session_id": session_id}
    async with client.stream("POST", "/v1/agents/echo-agent/run", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: RunContent"):
                break  # the run is producing: leave now
    status = await eventually(lambda: stored_run_status(gateway_db, session_id), what="the run to be stored")
    assert status == "CANCELLED"


async def test_client_leaving_a_non_stream_run_cancels_it(gateway, gateway_db) -> None:
    session_id = f"leave-json-{uuid.uuid4()}"
    # 40 slow words take 10 s; the client gives up after 2 s, long after the run started.
    body = {"input": "slow: " + " ".join(["word"] * 40), "session_id": session_id}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=httpx.Timeout(2.0)) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post("/v1/agents/echo-agent/run", json=body)
    status = await eventually(lambda: stored_run_status(gateway_db, session_id), what="the run to be stored")
    assert status == "CANCELLED"


async def test_nothing_is_left_open_after_bad_requests(gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        await client.post("/v1/agents/nope/run", json={"input": "x"})
        await client.post("/v1/agents/echo-agent/run", content=b"{", headers={"content-type": "application/json"})
        await client.post("/v1/agents/echo-agent/run", json={"input": "fail: x", "stream": True})
        async with client.stream("POST", "/v1/agents/echo-agent/run", json={"input": "slow: a b c d", "stream": True}) as r:
            async for _ in r.aiter_lines():
                break
            assert held_connections(gateway.port) >= 1  # the check below can see an open connection
    # Every connection the gateway accepted is closed once its client has gone.
    await eventually(lambda: held_connections(gateway.port) == 0, what="the gateway to close every connection")


async def test_a_session_owned_by_another_user_is_not_found(client) -> None:
    session_id = f"owned-{uuid.uuid4()}"
    run = "/v1/agents/echo-agent/run"
    first = await client.post(run, json={"input": "my secret", "user_id": "alice", "session_id": session_id})
    assert first.status_code == 200
    for intruder in ({"user_id": "mallory"}, {}):
        response = await client.post(run, json={"input": "hi", "session_id": session_id, **intruder})
        assert response.status_code == 404, intruder
        assert response.json() == {"detail": "Session not found"}
    owner = await client.post(run, json={"input": "again", "user_id": "alice", "session_id": session_id})
    assert owner.json()["content"].endswith("history=2]")


async def test_an_empty_session_id_starts_a_new_session(client) -> None:
    answers = [
        (await client.post("/v1/agents/echo-agent/run", json={"input": "hi", "session_id": ""})).json() for _ in range(2)
    ]
    assert all(answer["session_id"] for answer in answers)
    assert answers[0]["session_id"] != answers[1]["session_id"]
    assert all(answer["content"].endswith("history=0]") for answer in answers)


@pytest.mark.parametrize("keyword", ["background", "yield_run_output", "websocket"])
async def test_execution_keywords_are_refused(client, keyword: str) -> None:
    response = await client.post("/v1/agents/echo-agent/run", json={"input": "slow: a b", keyword: True})
    assert response.status_code == 422
    assert keyword in json.dumps(response.json())

"""Run forms and ids through a real gateway to real AgentOS upstreams, AgentOS as the oracle.

* The session id the gateway hashes (affinity) and the run id it remembers (the run's owner) are
  the ids the upstream records, however the form spells them: raw UTF-8 bytes, ``+``, ``%20``, a
  repeated field, ``;``; on the fast path and the routes' (a form with ``session_state``,
  multipart) alike. Each id is chosen so that a reader getting it wrong would pick the other
  upstream: a wrong reading cannot pass by luck.
"""

from __future__ import annotations

import uuid
from typing import AsyncIterator, Callable, Dict, Iterator, List, Tuple
from urllib.parse import quote, unquote_plus

import httpx
import pytest

from gateway.balancing import rank
from tests.pools import ADMIN_KEY, answered_by, gateway_config, start_gateway
from tests.processes import Server

FORM = "application/x-www-form-urlencoded"
BOUNDARY = b"gateway-forms-boundary"
NONCE = uuid.uuid4().hex[:8]  # the upstreams live for the whole test session: ids stay unique


@pytest.fixture(scope="module")
def forms_gateway(log_dir, pool_upstreams) -> Iterator[Server]:
    server = start_gateway("forms-gateway", gateway_config(pool_upstreams), log_dir)
    yield server
    server.stop()


@pytest.fixture
async def client(forms_gateway: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=forms_gateway.url, timeout=30) as client:
        yield client


def _home(session_id: str, upstreams: List[Server]) -> str:
    return rank(session_id, [(server.name, 1.0) for server in upstreams])[0]


def _latin1(raw: bytes) -> str:
    """Starlette's reading of an urlencoded value: latin-1, then ``+`` and ``%XX``."""
    return unquote_plus(raw.decode("latin-1"))


# case -> (the session_id part of a form for a token, the id a wrong reader would take)
CASES: Dict[str, Tuple[Callable[[str], bytes], Callable[[str], str]]] = {
    "raw-utf8": (lambda t: b"session_id=caf\xc3\xa9-" + t.encode(), lambda t: f"caf\u00e9-{t}"),
    "plus": (lambda t: b"session_id=plus+" + t.encode(), lambda t: f"plus+{t}"),
    "percent-20": (lambda t: b"session_id=pct%20" + t.encode(), lambda t: f"pct%20{t}"),
    "repeated": (lambda t: f"session_id=first-{t}&session_id=last-{t}".encode(), lambda t: f"first-{t}"),
    "semicolon": (lambda t: f"session_id=semi;{t}".encode(), lambda t: "semi"),
    "escapes": (lambda t: b"session_id=%C3%A9\xc3\xa9%zz%ff-" + t.encode(), lambda t: f"\u00e9\u00e9%zz\ufffd-{t}"),
}


def _decisive(case: str, prefix: str, upstreams: List[Server]) -> Tuple[bytes, str]:
    """The form part of ``case`` and the id AgentOS reads from it, for a token (new in each test)
    with which the wrong reading hashes to the other upstream."""
    part, wrong = CASES[case]
    for index in range(1000):
        token = f"{prefix}-{case}-{NONCE}-{index}"
        raw = part(token)
        right = _latin1(raw.rsplit(b"session_id=", 1)[1])
        if _home(right, upstreams) != _home(wrong(token), upstreams):
            return raw, right
    raise AssertionError("no decisive token")


def _multipart(fields: List[Tuple[bytes, bytes]]) -> bytes:
    parts = [
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value + b"\r\n"
        for name, value in fields
    ]
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


async def _form_run(client: httpx.AsyncClient, body: bytes, content_type: str = FORM) -> httpx.Response:
    response = await client.post("/agents/echo-agent/runs", content=body, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    return response


async def _assert_recorded_where_hashed(
    client: httpx.AsyncClient, response: httpx.Response, session_id: str, upstreams: List[Server]
) -> None:
    """The upstream recorded ``session_id``, the gateway sent the run where that id hashes, and a
    later run of the session (v1 JSON: the id unambiguous) continues it there."""
    home = _home(session_id, upstreams)
    assert response.json()["session_id"] == session_id
    assert response.headers["x-agentos-gateway-upstream"] == home
    assert response.headers["x-agentos-gateway-affinity"] == "hit"
    for server in upstreams:  # read back from each upstream itself: only the home one has it
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as direct:
            stored = await direct.get(f"/sessions/{quote(session_id, safe='')}", params={"type": "agent"})
        assert stored.status_code == (200 if server.name == home else 404), (server.name, stored.text)
        if server.name == home:
            assert stored.json()["session_id"] == session_id
    again = await client.post("/v1/agents/echo-agent/run", json={"input": "again", "session_id": session_id})
    assert again.status_code == 200, again.text
    instance, history = answered_by(again.json()["content"])
    assert instance == home and history > 0


@pytest.mark.parametrize("path", ["fast", "routes"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_an_urlencoded_session_id_is_hashed_as_agentos_records_it(client, pool_upstreams, case, path) -> None:
    part, session_id = _decisive(case, path, pool_upstreams)
    extra = b"&session_state=%7B%7D" if path == "routes" else b""  # a form the routes check
    response = await _form_run(client, b"message=hi&stream=false&" + part + extra)
    await _assert_recorded_where_hashed(client, response, session_id, pool_upstreams)


@pytest.mark.parametrize("value", [b"caf\xc3\xa9+%20", b"semi;colon+%41"])
async def test_a_multipart_session_id_is_hashed_as_agentos_records_it(client, pool_upstreams, value) -> None:
    # multipart values are UTF-8 and never unescaped: a latin-1 or unescaping reader is wrong
    index = next(
        i for i in range(1000)
        if _home((value + f"-{NONCE}-{i}".encode()).decode(), pool_upstreams)
        != _home(_latin1(value + f"-{NONCE}-{i}".encode()), pool_upstreams)
    )  # fmt: skip
    raw = value + f"-{NONCE}-{index}".encode()
    body = _multipart([(b"message", b"hi"), (b"stream", b"false"), (b"session_id", b"ignored"), (b"session_id", raw)])
    response = await _form_run(client, body, f"multipart/form-data; boundary={BOUNDARY.decode()}")
    await _assert_recorded_where_hashed(client, response, raw.decode(), pool_upstreams)


@pytest.mark.parametrize("path", ["fast", "routes"])
async def test_the_run_owner_is_remembered_under_the_id_agentos_records(client, forms_gateway, pool_upstreams, path) -> None:
    """The run goes elsewhere than its session's hash (its home drained), so only the remembered
    owner finds it again: a read-back by run id succeeds only if the gateway remembered the run
    under the id the upstream uses."""
    session_id = f"owner-{path}-{NONCE}"
    home = _home(session_id, pool_upstreams)
    raw_run_id = b"run-caf\xc3\xa9+%C3%A9;" + f"{path}-{NONCE}".encode()
    run_id = _latin1(raw_run_id)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    extra = b"&session_state=%7B%7D" if path == "routes" else b""
    assert (await client.post(f"/admin/upstreams/{home}/drain", headers=admin)).status_code == 200
    try:
        body = f"message=hi&stream=false&session_id={session_id}&run_id=".encode() + raw_run_id + extra
        response = await _form_run(client, body)
    finally:
        assert (await client.post(f"/admin/upstreams/{home}/undrain", headers=admin)).status_code == 200
    owner = response.headers["x-agentos-gateway-upstream"]
    assert owner != home and response.json()["run_id"] == run_id
    read = await client.get(f"/agents/echo-agent/runs/{quote(run_id, safe='')}", params={"session_id": session_id})
    assert read.status_code == 200, read.text
    assert read.json()["run_id"] == run_id and read.headers["x-agentos-gateway-upstream"] == owner

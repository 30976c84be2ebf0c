"""Run forms and ids through a real gateway to real AgentOS upstreams, AgentOS as the oracle.

* The session id the gateway hashes (affinity) and the run id it remembers (the run's owner) are
  the ids the upstream records, however the form spells them: raw UTF-8 bytes, ``+``, ``%20``, a
  repeated field, ``;``; on the fast path and the routes' (a form with ``session_state``,
  multipart) alike. Each id is chosen so that a reader getting it wrong would pick the other
  upstream: a wrong reading cannot pass by luck.
* An id over 256 bytes is refused (400 naming it) on every path the gateway reads one, before
  any upstream sees it.
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


@pytest.fixture
async def admin(forms_gateway: Server) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway's admin listener: /admin and the Prometheus scrape."""
    async with httpx.AsyncClient(base_url=forms_gateway.admin_url, timeout=30) as client:
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
async def test_the_run_owner_is_remembered_under_the_id_agentos_records(client, admin, pool_upstreams, path) -> None:
    """The run goes elsewhere than its session's hash (its home drained), so only the remembered
    owner finds it again: a read-back by run id succeeds only if the gateway remembered the run
    under the id the upstream uses."""
    session_id = f"owner-{path}-{NONCE}"
    home = _home(session_id, pool_upstreams)
    raw_run_id = b"run-caf\xc3\xa9+%C3%A9;" + f"{path}-{NONCE}".encode()
    run_id = _latin1(raw_run_id)
    admin_key = {"Authorization": f"Bearer {ADMIN_KEY}"}
    extra = b"&session_state=%7B%7D" if path == "routes" else b""
    assert (await admin.post(f"/admin/upstreams/{home}/drain", headers=admin_key)).status_code == 200
    try:
        body = f"message=hi&stream=false&session_id={session_id}&run_id=".encode() + raw_run_id + extra
        response = await _form_run(client, body)
    finally:
        assert (await admin.post(f"/admin/upstreams/{home}/undrain", headers=admin_key)).status_code == 200
    owner = response.headers["x-agentos-gateway-upstream"]
    assert owner != home and response.json()["run_id"] == run_id
    read = await client.get(f"/agents/echo-agent/runs/{quote(run_id, safe='')}", params={"session_id": session_id})
    assert read.status_code == 200, read.text
    assert read.json()["run_id"] == run_id and read.headers["x-agentos-gateway-upstream"] == owner


# -- the 256-byte cap ------------------------------------------------------------------------------

LONG = "a" * 257
LONG_UTF8 = "\u00e9" * 129  # 129 characters, 258 bytes: the cap counts bytes
AT_CAP = "\u00e9" * 128  # 256 bytes: allowed


async def _upstream_requests(admin: httpx.AsyncClient) -> float:
    """Requests the gateway has sent to upstreams, from its own metrics (its admin listener's scrape)."""
    text = (await admin.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("agentos_gateway_upstream_requests_total{")
    )


def _form(**fields: str) -> bytes:
    return "&".join(f"{name}={quote(value, safe='')}" for name, value in fields.items()).encode()


REFUSED: List[Tuple[str, str, str, Dict[str, object]]] = [
    # (label, method, path, httpx keyword arguments) -> refused naming the field in the label
    ("session_id:form-fast", "POST", "/agents/echo-agent/runs", {"content": _form(message="x", session_id=LONG), "headers": {"content-type": FORM}}),
    ("run_id:form-fast", "POST", "/agents/echo-agent/runs", {"content": _form(message="x", run_id=LONG_UTF8), "headers": {"content-type": FORM}}),
    ("session_id:form-routes", "POST", "/agents/echo-agent/runs", {"content": _form(message="x", session_state="{}", session_id=LONG_UTF8), "headers": {"content-type": FORM}}),
    ("run_id:form-routes", "POST", "/agents/echo-agent/runs", {"content": _form(message="x", dependencies="{}", run_id=LONG), "headers": {"content-type": FORM}}),
    ("session_id:multipart", "POST", "/agents/echo-agent/runs", {"content": _multipart([(b"message", b"x"), (b"session_id", LONG.encode())]), "headers": {"content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}"}}),
    ("session_id:v1", "POST", "/v1/agents/echo-agent/run", {"json": {"input": "x", "session_id": LONG}}),
    ("run_id:v1", "POST", "/v1/agents/echo-agent/run", {"json": {"input": "x", "run_id": LONG_UTF8}}),
    ("run_id:v1-team", "POST", "/v1/teams/echo-team/run", {"json": {"input": "x", "run_id": LONG}}),
    ("run_id:cancel", "POST", f"/agents/echo-agent/runs/{LONG}/cancel", {}),
    ("run_id:continue", "POST", f"/agents/echo-agent/runs/{quote(LONG_UTF8)}/continue", {"content": _form(tools="[]"), "headers": {"content-type": FORM}}),
    ("session_id:continue", "POST", "/agents/echo-agent/runs/r1/continue", {"content": _form(tools="[]", session_id=LONG), "headers": {"content-type": FORM}}),
    ("run_id:read-back", "GET", f"/agents/echo-agent/runs/{LONG}", {"params": {"session_id": "s"}}),
    ("session_id:read-back", "GET", "/agents/echo-agent/runs", {"params": {"session_id": LONG_UTF8}}),
    ("session_id:session", "GET", f"/sessions/{LONG}", {}),
    ("session_id:session-part", "GET", f"/sessions/{quote(LONG_UTF8)}/runs", {}),
    ("session_id:session-delete", "DELETE", f"/sessions/{LONG}", {}),
    ("session_id:fork", "POST", f"/agents/echo-agent/sessions/{LONG}/fork", {"json": {}}),
    ("session_id:create", "POST", "/sessions", {"json": {"agent_id": "echo-agent", "session_id": LONG}}),
]


@pytest.mark.parametrize("label, method, path, kwargs", REFUSED, ids=[case[0] for case in REFUSED])
async def test_an_id_over_256_bytes_is_refused_before_any_upstream(client, admin, label, method, path, kwargs) -> None:
    before = await _upstream_requests(admin)
    response = await client.request(method, path, **kwargs)
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": f"{label.split(':')[0]}: longer than 256 bytes"}
    assert await _upstream_requests(admin) == before  # no upstream saw it


async def test_a_refused_cancel_never_reaches_an_upstream(client, pool_upstreams) -> None:
    """AgentOS keeps a cancel of a run it does not know and cancels the run when it starts: a run
    started later on each upstream directly says whether that upstream saw the cancel."""
    at_cap = f"{AT_CAP[:-2]}{NONCE[:4]}"  # 252 + 4: 256 bytes
    over = f"{at_cap}+"
    assert (await client.post(f"/agents/echo-agent/runs/{quote(at_cap)}/cancel")).status_code == 200
    assert (await client.post(f"/agents/echo-agent/runs/{quote(over)}/cancel")).status_code == 400
    for server in pool_upstreams:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as direct:
            statuses = {}
            for run_id in (at_cap, over):
                answer = await direct.post(
                    "/agents/echo-agent/runs", data={"message": "hi", "stream": "false", "run_id": run_id}
                )
                statuses[run_id] = answer.json()["status"]
        # the cancel at the cap reached every upstream (its owner unknown); the one over it none
        assert statuses == {at_cap: "CANCELLED", over: "COMPLETED"}, (server.name, statuses)


async def test_an_id_of_256_bytes_runs(client, pool_upstreams) -> None:
    session_id = f"{AT_CAP[:-4]}{NONCE}"  # 248 + 8: 256 bytes
    response = await _form_run(client, b"message=hi&stream=false&" + _form(session_id=session_id, run_id=AT_CAP))
    assert response.json()["session_id"] == session_id and response.json()["run_id"] == AT_CAP
    v1 = await client.post("/v1/agents/echo-agent/run", json={"input": "hi", "session_id": session_id})
    assert v1.status_code == 200 and v1.json()["session_id"] == session_id

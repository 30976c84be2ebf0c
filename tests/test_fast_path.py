"""The fast path's own reading of a run request: what it takes, and what it leaves to the routes."""

from __future__ import annotations

import pytest

from functools import partial

from gateway.api import fast_path
from gateway.wire.paths import entity_path
from gateway.errors import BadRequest
from gateway.wire.kinds import EntityKind

FORM = "application/x-www-form-urlencoded"
# An agent whose id needs encoding, to see that the upstream path encodes it.
_prepare_form = partial(fast_path._prepare_form, EntityKind.AGENT, "a b")
_prepare_v1 = partial(fast_path._prepare_v1, EntityKind.AGENT, "a b")


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/v1/agents/a/run", (True, EntityKind.AGENT, "a")),
        ("/teams/t/runs", (False, EntityKind.TEAM, "t")),
        ("/v1/robots/a/run", None),
        ("/agents/a/runs/x/cancel", None),
        ("/v1/agents/a/run/", None),
        ("/v1/agents/a/runs", None),
        ("/agents/a/run", None),
        ("/agents", None),
        ("/agents//runs", (False, EntityKind.AGENT, "")),  # an empty id: the routes answer it
    ],
)
def test_run_paths(path, expected) -> None:
    """The fast path takes exactly the run routes' paths (``gateway.wire.paths``, the one reader)."""
    matched = entity_path(path)
    assert ((matched.v1, matched.kind, matched.entity_id) if matched is not None and matched.is_run else None) == expected


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/agents/a", (False, EntityKind.AGENT, "a", None)),
        ("/v1/workflows/w/run", (True, EntityKind.WORKFLOW, "w", "run")),
        ("/teams/t/runs/r/cancel", (False, EntityKind.TEAM, "t", "runs/r/cancel")),
        ("/agents/", (False, EntityKind.AGENT, "", None)),
        ("/sessions/s", None),
        ("/v1/sessions/s", None),
        ("/", None),
    ],
)
def test_entity_paths(path, expected) -> None:
    assert entity_path(path) == expected


def test_form_ids_are_read_as_agentos_reads_them() -> None:
    """Raw bytes are latin-1, escapes UTF-8, ``;`` is data, the last of a field wins (Starlette's
    rules: tests/test_wire_form.py holds the reader to them)."""
    body = b"message=x&session_id=s1&session_id=caf\xc3\xa9+%C3%A9;1&run_id=a%20b&run_id&stream=F"
    run = _prepare_form(body, FORM)
    assert run.session_id == "caf\u00c3\u00a9 \u00e9;1" and not run.session_is_new and run.stream is False
    # the last run_id is empty: the gateway makes one, appended so that AgentOS reads it last too
    assert run.run_id not in ("", "a b") and run.body == body + f"&run_id={run.run_id}".encode()


@pytest.mark.parametrize(
    "prepare, body",
    [
        (_prepare_form, b"message=x&session_id=" + b"a" * 257),
        (_prepare_form, b"message=x&run_id=" + b"%C3%A9" * 129),
        (_prepare_v1, b'{"input": "x", "session_id": "' + b"a" * 257 + b'"}'),
        (_prepare_v1, b'{"input": "x", "run_id": "' + "\u00e9".encode() * 129 + b'"}'),
    ],
)
def test_an_id_over_256_bytes_is_refused(prepare, body: bytes) -> None:
    args = (body, FORM) if prepare is _prepare_form else (body,)
    with pytest.raises(BadRequest, match="_id: longer than 256 bytes"):
        prepare(*args)


def test_what_the_fast_path_leaves_to_the_routes() -> None:
    assert _prepare_form(b"stream=false", FORM) is None  # no message: AgentOS's 422
    assert _prepare_form(b"message=x&stream=maybe", FORM) is None  # AgentOS's 422
    assert _prepare_form(b"message=x&session_state=", FORM) is None  # checked by the routes
    assert _prepare_v1(b'{"input": "x", "yield_run_output": true}') is None
    assert _prepare_v1(b"{not json") is None


def test_a_form_gets_its_session_and_run_ids_appended() -> None:
    run = _prepare_form(b"message=hi&stream=false", FORM)
    assert run.session_is_new and run.stream is False and run.background is False
    assert run.body == f"message=hi&stream=false&session_id={run.session_id}&run_id={run.run_id}".encode()
    run = _prepare_form(b"message=hi&session_id=mine&run_id=r1", FORM)
    assert (run.session_id, run.session_is_new, run.run_id, run.stream) == ("mine", False, "r1", True)
    assert run.body == b"message=hi&session_id=mine&run_id=r1"


def test_a_v1_run_becomes_the_form_for_its_entity() -> None:
    run = _prepare_v1(b'{"input": "hi", "session_id": "s", "stream": true}')
    outgoing = run.outgoing()
    assert (outgoing.method, outgoing.path, outgoing.headers["Content-Type"]) == ("POST", "/agents/a%20b/runs", FORM)
    assert outgoing.expects_stream and b"message=hi" in outgoing.body and b"session_id=s" in outgoing.body
    assert run.info().labels == ("agent", "a b") and run.info().run_id == run.run_id


def test_a_background_run_is_known_as_one() -> None:
    assert _prepare_form(b"message=hi&background=true&stream=false", FORM).background is True
    assert _prepare_form(b"message=hi&background=false", FORM).background is False
    run = _prepare_v1(b'{"input": "hi", "background": true}')
    assert run.background is True and run.stream is False and b"background=true" in run.body
    assert b"background" not in _prepare_v1(b'{"input": "hi"}').body  # never sent unless asked

"""The fast path's own reading of a run request: what it takes, and what it leaves to the routes."""

from __future__ import annotations

import pytest

from gateway.api.fast_path import _prepare_form, _prepare_v1, match_run_path
from gateway.errors import BadRequest
from gateway.wire.kinds import EntityKind

FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/v1/agents/a/run", (True, EntityKind.AGENT, "a")),
        ("/teams/t/runs", (False, EntityKind.TEAM, "t")),
        ("/v1/robots/a/run", None),
        ("/agents/a/runs/x/cancel", None),
        ("/v1/agents/a/run/", None),
        ("/agents//runs", (False, EntityKind.AGENT, "")),  # an empty id: the routes answer it
    ],
)
def test_paths(path, expected) -> None:
    assert match_run_path(path) == expected


def test_form_ids_are_read_as_agentos_reads_them() -> None:
    """Raw bytes are latin-1, escapes UTF-8, ``;`` is data, the last of a field wins (Starlette's
    rules: tests/test_wire_form.py holds the reader to them)."""
    body = b"message=x&session_id=s1&session_id=caf\xc3\xa9+%C3%A9;1&run_id=a%20b&run_id&stream=F"
    outgoing, session_id, is_new, run_id, stream, _background = _prepare_form(body, FORM)
    assert session_id == "caf\u00c3\u00a9 \u00e9;1" and not is_new and stream is False
    # the last run_id is empty: the gateway makes one, appended so that AgentOS reads it last too
    assert run_id not in ("", "a b") and outgoing == body + f"&run_id={run_id}".encode()


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
    body, session_id, is_new, run_id, stream, background = _prepare_form(b"message=hi&stream=false", FORM)
    assert is_new and stream is False and background is False
    assert body == f"message=hi&stream=false&session_id={session_id}&run_id={run_id}".encode()
    body, session_id, is_new, run_id, stream, background = _prepare_form(b"message=hi&session_id=mine&run_id=r1", FORM)
    assert (session_id, is_new, run_id, stream) == ("mine", False, "r1", True) and body == b"message=hi&session_id=mine&run_id=r1"


def test_a_background_run_is_known_as_one() -> None:
    assert _prepare_form(b"message=hi&background=true&stream=false", FORM)[5] is True
    assert _prepare_form(b"message=hi&background=false", FORM)[5] is False
    body, _, _, _, stream, background = _prepare_v1(b'{"input": "hi", "background": true}')
    assert background is True and stream is False and b"background=true" in body
    assert b"background" not in _prepare_v1(b'{"input": "hi"}')[0]  # never sent unless asked

"""When a request may go to the next upstream (gateway/retry.py), and the upstream URLs a client's
ids can make (api/forwarding.py): pure rules, no I/O."""

from __future__ import annotations

import pytest

from gateway.api.forwarding import query, segment
from gateway.retry import RequestState, may_retry


@pytest.mark.parametrize(
    "state, status, on_503, allowed",
    [
        (RequestState.NOT_SENT, 0, False, True),  # refused or timed-out connect
        (RequestState.SENT, 0, False, False),  # reset, timeout or garbage after the request went
        (RequestState.SENT, 0, True, False),
        (RequestState.ANSWERED, 503, False, False),  # AgentOS may have run it: passed on
        (RequestState.ANSWERED, 503, True, True),  # opted in
        (RequestState.ANSWERED, 500, True, False),
        (RequestState.ANSWERED, 502, True, False),
    ],
)
def test_only_what_surely_never_started_is_retried(state: RequestState, status: int, on_503: bool, allowed: bool) -> None:
    assert may_retry(state, status, on_503=on_503, budget_allows=True) is allowed


def test_no_retry_past_the_budget() -> None:
    assert may_retry(RequestState.NOT_SENT, 0, on_503=False, budget_allows=False) is False


@pytest.mark.parametrize(
    "value, encoded",
    [
        ("run-1", "run-1"),
        ("a/b", "a%2Fb"),
        ("../../config", "..%2F..%2Fconfig"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("a?b#c", "a%3Fb%23c"),
        ("x y%2F", "x%20y%252F"),
        ("é", "%C3%A9"),
    ],
)
def test_a_segment_never_adds_a_segment_a_query_or_a_dot_segment(value: str, encoded: str) -> None:
    assert segment(value) == encoded


def test_a_query_is_parsed_and_encoded_again() -> None:
    assert query("") == ""
    assert query("a=1&b=&c=x y") == "?a=1&b=&c=x+y"
    assert query("a=%26&b=%23") == "?a=%26&b=%23"

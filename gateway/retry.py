"""When a forwarded request may go to the next upstream: everything that decides it lives here.

A run executes a model and its tools and changes a session, so it is not idempotent. A request
is tried again only when the upstream surely never started it. How far a request got is one of
these named states, carried by its failure (``gateway.errors.UpstreamFailure``):

    NOT_SENT  ─► no byte of the request reached the upstream: the connect was refused or failed,
                 or timed out. Always safe to send elsewhere.
    SENT      ─► the request was handed to an open connection, and no answer's head came (a
                 reset, a timeout, a malformed answer). AgentOS may be running it: never retried.
    ANSWERED  ─► the upstream answered a status. Only its 503, and only when ``retry.on_503`` is
                 set: AgentOS answers a run that failed mid-way with the exception's own status,
                 so a model provider's 503 may come after tools ran.

A reset of a reused keep-alive connection is SENT too: the request was written to the socket,
and nothing tells a peer that closed it unread from one that crashed while running it. The pool
closes idle connections before AgentOS's server does (``timeouts.upstream_keepalive_s``), which
makes that race rare.

Pure: no I/O. The sender (``gateway/sender.py``) asks ``may_retry`` after each failure, with
whether the pool's retry budget allows one more retry now.
"""

from __future__ import annotations

import enum


class RequestState(enum.Enum):
    NOT_SENT = "not_sent"
    SENT = "sent"
    ANSWERED = "answered"


def may_retry(state: RequestState, status_code: int, *, on_503: bool, budget_allows: bool) -> bool:
    """Whether a request that failed in ``state`` (answered ``status_code``, if ANSWERED) may be
    sent to the next upstream."""
    if not budget_allows:
        return False
    if state is RequestState.NOT_SENT:
        return True
    return state is RequestState.ANSWERED and status_code == 503 and on_503

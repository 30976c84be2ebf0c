"""Every error the gateway raises on purpose, in one tree. ``gateway/api/errors.py`` is the one
place that turns them into answers (JSON ``{"detail": ...}``, as AgentOS answers).

    GatewayError                  status, detail, headers: what the client is answered
    ├── ClientError               the client's request is refused (4xx); no upstream saw it
    │   ├── BadRequest            400: malformed input (an id too long, a bad path, a bad field)
    │   │   └── IncompleteBody    400: the body ended before its declared end (never forwarded)
    │   ├── Unauthorized          401: no key, or an unknown one
    │   ├── Forbidden             403: a key without the right
    │   ├── NotFound              404: no such id or route (AgentOS's texts)
    │   ├── Unprocessable         422: a field is wrong (``detail`` may be FastAPI's list)
    │   └── NotImplementedHere    501: served for upstream entities only (local ones lack it)
    │   ├── RequestTimeout        408: the client was too slow to send its head or body; the
    │   │                         connection is closed (nginx's client_header/body_timeout)
    │   └── BodyTooLarge          413: more than ``max_body_bytes``
    ├── ClientGone                the client left: nobody to answer (logged as 499)
    ├── Busy                      503 (or 429) with ``retry_after``: a limit of the gateway
    │   ├── RateLimited           429: a key's rate
    │   └── NoUpstream            503: nothing usable serves the request now
    ├── UpstreamFailure           502/503/504: an upstream gave no usable answer; carries the
    │                             request's state (``gateway/retry.py``), which decides a retry
    ├── StreamCut                 an upstream's stream ended early: told in-band, as the error
    │                             event that ends the client's stream (``error_type`` UpstreamError)
    └── ConfigError               the configuration cannot be used (also a ``ValueError``)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

from gateway.balancing import Outcome
from gateway.retry import RequestState

if TYPE_CHECKING:
    from gateway.pool import Upstream

CLIENT_CLOSED_REQUEST = 499  # nginx's code for "client closed request": logged, never sent


class GatewayError(Exception):
    """The base: what the client is answered when this error ends a request."""

    status_code: int = 500
    close_connection: bool = False  # the connection cannot be trusted for another request

    def __init__(self, detail: Any, *, headers: Optional[Mapping[str, str]] = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers: Dict[str, str] = dict(headers or {})


class ClientError(GatewayError):
    status_code = 400


class BadRequest(ClientError):
    status_code = 400


class IncompleteBody(BadRequest):
    """The request body ended (client gone, or a framing error) before it was whole."""

    close_connection = True


class Unauthorized(ClientError):
    status_code = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ClientError):
    status_code = 403


class NotFound(ClientError):
    status_code = 404


class Unprocessable(ClientError):
    status_code = 422


class NotImplementedHere(ClientError):
    status_code = 501


class RequestTimeout(ClientError):
    status_code = 408
    close_connection = True


class BodyTooLarge(ClientError):
    status_code = 413


class HeadersTooLarge(ClientError):
    status_code = 431


class ClientGone(GatewayError):
    """The client disconnected; what it started is cancelled, and nothing is sent."""

    status_code = CLIENT_CLOSED_REQUEST

    def __init__(self, detail: str = "Client closed the request") -> None:
        super().__init__(detail)


class Busy(GatewayError):
    """A bound of the gateway is reached: come back after ``retry_after_s``."""

    status_code = 503

    def __init__(self, detail: str, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(detail, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class RateLimited(Busy):
    status_code = 429


class NoUpstream(Busy):
    status_code = 503


class UpstreamFailure(GatewayError):
    """A request that got no usable answer from ``upstream``.

    ``outcome``: what it says of the upstream's health (recorded for outlier ejection).
    ``state``: how far the request got (``RequestState``): whether a retry is safe.
    ``answer``: the upstream's own answer (status, content type, body) to pass on when no retry
    follows (its 503 when ``retry.on_503`` retried it).
    """

    def __init__(
        self,
        upstream: "Upstream",
        outcome: Outcome,
        state: RequestState,
        status_code: int,
        detail: str,
        *,
        answer: Optional[tuple[int, str, bytes]] = None,
    ) -> None:
        super().__init__(f"Upstream {upstream.name}: {detail}")
        self.upstream = upstream
        self.outcome = outcome
        self.state = state
        self.status_code = status_code
        self.answer = answer


class StreamCut(GatewayError):
    """Carried by the in-band error event that ends a stream cut short (never raised: the
    answer's head was sent already). ``type`` is what the event's ``error_type`` says, as agno's
    own errors name theirs."""

    status_code = 502
    type = "UpstreamError"


class ConfigError(GatewayError, ValueError):
    """The configuration cannot be used; the message names every bad field, one per line."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)

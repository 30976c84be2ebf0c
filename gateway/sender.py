"""Sending one request to upstreams in order, trying the next only when ``gateway/retry.py`` says
it is safe. What the answer then becomes is the caller's (``api/forwarding.py``); a stream is
passed through by ``gateway/relay.py``.

Each failure is an ``UpstreamFailure`` that names how far the request got (``RequestState``)
and what it says of the upstream (``Outcome``, recorded for outlier ejection when it happens).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import aiohttp
from yarl import URL
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from gateway import metrics
from gateway.balancing import Outcome
from gateway.deadline import Deadline
from gateway.errors import UpstreamFailure
from gateway.pool import Flight, Pool, Upstream
from gateway.retry import RequestState, may_retry
from gateway.settings import Settings

logger = logging.getLogger(__name__)

NOT_SENT, SENT, ANSWERED = RequestState.NOT_SENT, RequestState.SENT, RequestState.ANSWERED


@dataclass
class Outgoing:
    """What to send: ``path`` (with its query) is appended to the upstream's base url."""

    method: str
    path: str  # percent-encoded (from a route's template and ``api/forwarding.py``'s ``segment``): sent as it is
    headers: Dict[str, str] = field(default_factory=dict)
    body: Optional[bytes] = None
    expects_stream: bool = False  # the first-byte timeout applies; else the whole-run timeout


@dataclass
class Opened:
    """An upstream's answer whose head has come; its body is still to be read."""

    upstream: Upstream
    response: aiohttp.ClientResponse
    tries: int
    flight: Flight


class Sender:
    def __init__(self, pool: Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    async def open(self, order: Sequence[Upstream], outgoing: Outgoing, flight: Flight) -> Opened:
        """The first answer from ``order``, moving on only while a retry is safe. Raises the last
        ``UpstreamFailure`` when every allowed try failed."""
        flight.on(order[0])
        try:  # the first try without the retry machinery: almost every request ends here
            return Opened(order[0], await self._send(order[0], outgoing), 1, flight)
        except UpstreamFailure as failure:
            first = failure
            if len(order) < 2 or self.settings.retry.max_attempts < 2 or not self._may_retry(failure):
                raise
        retry = self.settings.retry
        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(1, min(retry.max_attempts, len(order)))),
            wait=wait_random_exponential(multiplier=retry.backoff_base_s, max=retry.backoff_max_s),
            retry=retry_if_exception(self._may_retry),
            reraise=True,
        )
        last: UpstreamFailure = first
        async for attempt in retrying:
            with attempt:
                tries = attempt.retry_state.attempt_number
                if tries == 1:
                    raise first  # tenacity's schedule starts from the first try's failure
                upstream = order[tries - 1]
                flight.mark_retry()
                metrics.RETRIES.labels(last.upstream.name, last.outcome.value).inc()
                logger.info("retrying on upstream %s after %s on %s", upstream.name, last.outcome.value, last.upstream.name)
                flight.on(upstream)
                try:
                    return Opened(upstream, await self._send(upstream, outgoing), tries, flight)
                except UpstreamFailure as failure:
                    last = failure
                    raise
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def _may_retry(self, error: BaseException) -> bool:
        return isinstance(error, UpstreamFailure) and may_retry(
            error.state, error.status_code if error.answer is None else error.answer[0],
            on_503=self.settings.retry.on_503, budget_allows=self.pool.may_retry(),
        )  # fmt: skip

    async def _send(self, upstream: Upstream, outgoing: Outgoing) -> aiohttp.ClientResponse:
        timeouts = self.settings.timeouts
        wait_s = timeouts.first_byte_s if outgoing.expects_stream else timeouts.run_s
        # The upstream's own key, unless the client's Authorization is forwarded (forward_authorization);
        # never to the local components' AgentOS, which knows only its own key (as their runs, it
        # is authorized by the gateway alone).
        if upstream.in_process:
            kept = {name: value for name, value in outgoing.headers.items() if name.lower() != "authorization"}
            headers = {**kept, **upstream.auth_headers}
        else:
            headers = {**upstream.auth_headers, **outgoing.headers}
        try:
            with Deadline(wait_s):
                response = await upstream.client().request(
                    outgoing.method,
                    URL(upstream.base_url + outgoing.path, encoded=True),  # never normalized
                    data=outgoing.body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self.pool.connect_timeout,  # the reloaded connect_s, not the session's first
                )
        # aiohttp raises these two only while connecting: no byte of the request left.
        except aiohttp.ConnectionTimeoutError:
            raise self._failed(upstream, Outcome.TIMEOUT, NOT_SENT, 504, "connect timed out") from None
        except aiohttp.ClientConnectorError as error:
            raise self._failed(upstream, Outcome.CONNECT_ERROR, NOT_SENT, 502, f"cannot connect ({error.os_error})") from None
        except TimeoutError:
            raise self._failed(upstream, Outcome.TIMEOUT, SENT, 504, f"no answer within {wait_s:g} s") from None
        except aiohttp.ClientResponseError as error:
            raise self._failed(upstream, Outcome.PROTOCOL_ERROR, SENT, 502, f"malformed answer ({error.message})") from None
        except aiohttp.ClientError as error:
            detail = f"connection lost before an answer ({type(error).__name__})"
            raise self._failed(upstream, Outcome.RESET, SENT, 502, detail) from None
        if response.status == 503 and self.settings.retry.on_503:  # read now: a retry may follow
            answer = await _buffered(response)
            raise self._failed(upstream, Outcome.GATEWAY_ERROR, ANSWERED, 503, "unavailable", answer=answer)
        return response  # its outcome is recorded once the answer has been passed on

    def _failed(
        self, upstream: Upstream, outcome: Outcome, state: RequestState, status_code: int, detail: str,
        answer: Optional[Tuple[int, str, bytes]] = None,
    ) -> UpstreamFailure:  # fmt: skip
        self.pool.record(upstream, outcome)
        logger.warning("upstream %s: %s", upstream.name, detail)
        return UpstreamFailure(upstream, outcome, state, status_code, detail, answer=answer)


async def _buffered(response: aiohttp.ClientResponse) -> Tuple[int, str, bytes]:
    """A small upstream answer, read whole, to pass on as it was."""
    try:
        body = await response.read()
    except aiohttp.ClientError:
        body = b'{"detail":"Service unavailable"}'
    finally:
        response.release()
    return response.status, response.headers.get("Content-Type", "application/json"), body


async def read_answer(opened: Opened, max_bytes: Optional[int] = None) -> Tuple[int, bytes]:
    """A whole (non-stream) answer; ``UpstreamFailure`` 502 when the upstream cuts it short, or
    when it is larger than ``max_bytes`` (never read past it)."""
    try:
        body = await (opened.response.read() if max_bytes is None else _read_at_most(opened, max_bytes))
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as error:
        detail = f"the answer was cut short ({type(error).__name__})"
        opened.flight.pool.record(opened.upstream, Outcome.RESET)
        logger.warning("upstream %s: %s", opened.upstream.name, detail)
        raise UpstreamFailure(opened.upstream, Outcome.RESET, ANSWERED, 502, detail) from None
    finally:
        opened.response.release()
    return opened.response.status, body


async def _read_at_most(opened: Opened, max_bytes: int) -> bytes:
    response = opened.response
    declared = response.content_length
    chunks, size = [], 0
    if declared is None or declared <= max_bytes:
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > max_bytes:
                break
            chunks.append(chunk)
    if (declared is not None and declared > max_bytes) or size > max_bytes:
        response.close()  # the rest is never read: the connection goes
        detail = f"answer larger than {max_bytes} bytes (storage.merge_max_bytes)"
        logger.warning("upstream %s: %s", opened.upstream.name, detail)
        raise UpstreamFailure(opened.upstream, Outcome.SUCCESS, ANSWERED, 502, detail)
    return b"".join(chunks)

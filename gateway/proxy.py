"""Forwarding one request to an upstream: pick, send, retry when safe, pass the answer through.

A request's retry eligibility has three states, in this order (h11-style: named, one way):

    NOT_SENT ──(connect failed, connect timed out, or an immediate 503)──► may go to the next upstream
        │ request written
        ▼
    SENT ──(no answer in time, reset, garbage)──► 504 / 502, never retried: the run may have started
        │ response headers read
        ▼
    ANSWERED ──► bytes pass through; an upstream that dies now ends an SSE stream with an in-band
                 error event of the run's kind

Failures of real traffic (connect errors, timeouts, 5xx, a stream cut short) are recorded for
outlier ejection. An in-band run failure (``status: ERROR``, ``RunError``) is a 200: the model's
failure, never the upstream's.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import aiohttp
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from gateway import metrics
from gateway.disconnect import CancelOnDisconnect, ClientDisconnected
from gateway.balancing import Affinity, Outcome
from gateway.pool import Pool, Upstream
from gateway.settings import Settings
from gateway.wire.sse import EndOfRunDetector

logger = logging.getLogger(__name__)

UPSTREAM_HEADER = "x-agentos-gateway-upstream"
AFFINITY_HEADER = "x-agentos-gateway-affinity"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE_COMMENT = b": keepalive\n\n"
_TIMER_SLACK_S = 0.002

# Never copied from one hop to the next (RFC 9110 §7.6.1), plus what the server sets itself.
_NOT_FORWARDED_RESPONSE_HEADERS = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "content-length", "date", "server",
    }
)  # fmt: skip


class UpstreamFailure(Exception):
    """A request that got no usable answer from an upstream.

    ``retryable``: the upstream surely did not start it (NOT_SENT, or an immediate 503).
    ``answer``: the upstream's own answer to pass on when this was the last try (a 503).
    """

    def __init__(
        self,
        upstream: Upstream,
        outcome: Outcome,
        status: int,
        detail: str,
        *,
        retryable: bool,
        answer: Optional[Response] = None,
    ) -> None:
        super().__init__(f"upstream {upstream.name}: {detail}")
        self.upstream = upstream
        self.outcome = outcome
        self.status = status
        self.detail = detail
        self.retryable = retryable
        self.answer = answer
        self.answered = False  # the head came, then the body broke: recorded when the request ends
        # what a retry metric calls it: the outcome, or the upstream's own 503
        self.reason = "unavailable" if status == 503 and answer is not None else outcome.value

    def response(self) -> Response:
        if self.answer is not None:
            return self.answer
        return JSONResponse({"detail": f"Upstream {self.upstream.name}: {self.detail}"}, status_code=self.status)


def no_upstream_response(retry_after_s: float, detail: str = "No upstream available") -> JSONResponse:
    return JSONResponse(
        {"detail": detail}, status_code=503, headers={"Retry-After": str(max(1, round(retry_after_s)))}
    )


@dataclass
class Outgoing:
    """What to send: ``path`` (with query) is appended to the upstream's base url."""

    method: str
    path: str
    headers: Dict[str, str] = field(default_factory=dict)
    body: Optional[bytes] = None
    expects_stream: bool = False  # the first-byte timeout applies; else the whole-run timeout


@dataclass
class Flight:
    """One request in flight through the pool: counted for P2C, bounded load and the retry budget."""

    pool: Pool
    upstream: Optional[Upstream] = None
    retried: bool = False
    done: bool = False

    def __post_init__(self) -> None:
        self.pool.active_requests += 1

    def on(self, upstream: Upstream) -> None:
        if self.upstream is not None:
            self.upstream.in_flight -= 1
            self.upstream.in_flight_gauge.dec()
        self.upstream = upstream
        upstream.in_flight += 1
        upstream.in_flight_gauge.inc()

    def mark_retry(self) -> None:
        if not self.retried:
            self.retried = True
            self.pool.active_retries += 1

    def finish(self, outcome: Optional[Outcome] = None) -> None:
        """Idempotent: the request is over; ``outcome`` (if any) is recorded for ejection."""
        if self.done:
            return
        self.done = True
        self.pool.active_requests -= 1
        if self.retried:
            self.pool.active_retries -= 1
        if self.upstream is not None:
            self.upstream.in_flight -= 1
            self.upstream.in_flight_gauge.dec()
            if outcome is not None:
                self.pool.record(self.upstream, outcome)


@dataclass
class Opened:
    upstream: Upstream
    response: aiohttp.ClientResponse
    tries: int
    flight: Flight


class RunOwners:
    """run_id -> the upstream that runs it, so a cancel reaches it: bounded, entries expire."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._owners: "collections.OrderedDict[str, Tuple[str, float]]" = collections.OrderedDict()

    def remember(self, run_id: str, upstream: str) -> None:
        self._owners[run_id] = (upstream, self.clock() + self.ttl_s)
        self._owners.move_to_end(run_id)
        while len(self._owners) > self.max_entries:
            self._owners.popitem(last=False)

    def __len__(self) -> int:
        return len(self._owners)

    def owner(self, run_id: str) -> Optional[str]:
        entry = self._owners.get(run_id)
        if entry is None:
            return None
        if entry[1] < self.clock():
            del self._owners[run_id]
            return None
        return entry[0]


class Proxy:
    def __init__(self, pool: Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.run_owners = RunOwners(ttl_s=settings.timeouts.run_s + 60.0)

    # -- sending, with safe retries ----------------------------------------------------------------

    async def open(self, order: Sequence[Upstream], outgoing: Outgoing, flight: Flight) -> Opened:
        """The first answer from ``order``, moving on only while no upstream can have started the
        request. Raises ``UpstreamFailure`` (the last one) when every allowed try failed."""
        flight.on(order[0])
        try:  # the first try without the retry machinery: almost every request ends here
            response = await self._send(order[0], outgoing)
            return Opened(upstream=order[0], response=response, tries=1, flight=flight)
        except UpstreamFailure as failure:
            first = failure
            if len(order) < 2 or self.settings.retry.max_attempts < 2 or not self._should_retry(failure):
                raise
        retry = self.settings.retry
        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(1, min(retry.max_attempts, len(order)))),
            wait=wait_random_exponential(multiplier=retry.backoff_base_s, max=retry.backoff_max_s),
            retry=retry_if_exception(self._should_retry),
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
                metrics.RETRIES.labels(last.upstream.name, last.reason).inc()
                logger.info("retrying on upstream %s after %s on %s", upstream.name, last.reason, last.upstream.name)
                flight.on(upstream)
                try:
                    response = await self._send(upstream, outgoing)
                except UpstreamFailure as failure:
                    last = failure
                    raise
                return Opened(upstream=upstream, response=response, tries=tries, flight=flight)
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def _should_retry(self, error: BaseException) -> bool:
        return isinstance(error, UpstreamFailure) and error.retryable and self.pool.may_retry()

    async def _send(self, upstream: Upstream, outgoing: Outgoing) -> aiohttp.ClientResponse:
        timeouts = self.settings.timeouts
        wait_s = timeouts.first_byte_s if outgoing.expects_stream else timeouts.run_s
        # The upstream's own key, unless the client's Authorization is forwarded (forward_authorization).
        headers = {**upstream.auth_headers, **outgoing.headers}
        try:
            async with asyncio.timeout(wait_s):
                response = await upstream.client().request(
                    outgoing.method,
                    upstream.base_url + outgoing.path,
                    data=outgoing.body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self.pool.connect_timeout,  # the reloaded connect_s, not the session's first
                )
        except aiohttp.ConnectionTimeoutError:
            raise self._failed(upstream, Outcome.TIMEOUT, 504, "connect timed out", retryable=True) from None
        except aiohttp.ClientConnectorError as error:
            raise self._failed(upstream, Outcome.CONNECT_ERROR, 502, f"cannot connect ({error.os_error})", retryable=True) from None
        except TimeoutError:
            raise self._failed(upstream, Outcome.TIMEOUT, 504, f"no answer within {wait_s:g} s", retryable=False) from None
        except aiohttp.ClientResponseError as error:
            raise self._failed(upstream, Outcome.SERVER_ERROR, 502, f"malformed answer ({error.message})", retryable=False) from None
        except aiohttp.ClientError as error:
            detail = f"connection lost before an answer ({type(error).__name__})"
            raise self._failed(upstream, Outcome.CONNECT_ERROR, 502, detail, retryable=False) from None
        if response.status == 503:  # overloaded or draining: it answered at once, so it did not run it
            answer = await _buffered(response)
            raise self._failed(upstream, Outcome.SERVER_ERROR, 503, "unavailable", retryable=True, answer=answer)
        return response  # its outcome is recorded once the answer has been passed on

    def _failed(
        self, upstream: Upstream, outcome: Outcome, status: int, detail: str, *, retryable: bool,
        answer: Optional[Response] = None,
    ) -> UpstreamFailure:  # fmt: skip
        self.pool.record(upstream, outcome)
        logger.warning("upstream %s: %s", upstream.name, detail)
        return UpstreamFailure(upstream, outcome, status, detail, retryable=retryable, answer=answer)

    # -- answering ---------------------------------------------------------------------------------

    def answer_headers(self, opened: Opened, affinity: Optional[Affinity]) -> Dict[str, str]:
        headers = {
            name: value
            for name, value in opened.response.headers.items()
            if name.lower() not in _NOT_FORWARDED_RESPONSE_HEADERS
        }
        if self.settings.affinity.headers:
            headers[UPSTREAM_HEADER] = opened.upstream.name
            if affinity is not None:
                moved = opened.tries > 1 and affinity is not Affinity.NEW
                headers[AFFINITY_HEADER] = (Affinity.MOVED if moved else affinity).value
        return headers


async def _buffered(response: aiohttp.ClientResponse) -> Response:
    """A small upstream answer, read whole and passed on as it was."""
    try:
        body = await response.read()
    except aiohttp.ClientError:
        body = b'{"detail":"Service unavailable"}'
    finally:
        response.release()
    content_type = response.headers.get("Content-Type", "application/json")
    return Response(body, status_code=response.status, headers={"Content-Type": content_type})


def is_event_stream(response: aiohttp.ClientResponse) -> bool:
    return response.content_type == "text/event-stream"


class StreamRelay(Response):
    """An ASGI answer that passes an upstream's SSE bytes to the client as they come.

    * Backpressure: the next chunk is read only after the client took the last one.
    * Client gone: the upstream connection is closed, which AgentOS reads as a cancel.
    * Upstream silent for ``keepalive_s``: an SSE comment, which every reader skips.
    * Upstream cut short, silent past ``stream_idle_s``, or past the whole-run deadline: one
      in-band error event of the run's kind ends the stream, unless the run already ended.
    """

    def __init__(
        self,
        opened: Opened,
        headers: Mapping[str, str],
        *,
        error_frame: Callable[[str], bytes],
        settings: Settings,
        started_at: float,
        run_labels: Optional[Tuple[str, str]] = None,
    ) -> None:
        self.opened = opened
        self.run_labels = run_labels  # (kind, entity) of the run, for its metrics
        self.status_code = opened.response.status
        self.background = None
        self.raw_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in {**headers, **SSE_HEADERS}.items()
        ]
        self.error_frame = error_frame
        self.timeouts = settings.timeouts
        self.deadline = started_at + settings.timeouts.run_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        opened = self.opened
        outcome: Optional[Outcome] = None
        self.scan = EndOfRunDetector()
        self.cut = False
        metrics.ACTIVE_STREAMS.inc()
        try:
            with CancelOnDisconnect(receive):  # the relay runs in this task; one watcher stops it
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                outcome = await self._relay(send)
        except ClientDisconnected:
            pass  # a stream that had ended keeps its outcome
        finally:
            # Closing (not releasing) drops the connection: if the run is still going, AgentOS
            # sees its client leave and cancels it.
            opened.response.close()
            opened.flight.finish(outcome)
            metrics.ACTIVE_STREAMS.dec()
            self._record_run(client_left=outcome is None and not self.cut)

    def _record_run(self, *, client_left: bool) -> None:
        if self.run_labels is None:
            return
        kind, entity = self.run_labels
        metrics.STREAM_EVENTS.labels(kind).inc(self.scan.frames + self.cut)
        if self.scan.terminal is not None:
            outcome = metrics.OUTCOME_BY_EVENT.get(self.scan.terminal)
        else:
            outcome = "ERROR" if self.cut else "CANCELLED" if client_left else None
        metrics.record_run(kind, entity, outcome)

    async def _relay(self, send: Send) -> Optional[Outcome]:
        """Chunks pass as they come. Timers cost nothing per chunk: one deadline per silence
        (keepalive, idle, whole run) is set, and when it fires the silence is measured; data
        that came meanwhile just sets the next one."""
        content = self.opened.response.content
        detector = self.scan
        loop = asyncio.get_running_loop()
        keepalive_s = self.timeouts.keepalive_s
        idle_s = self.timeouts.stream_idle_s
        last_data = last_sent = loop.time()
        failure: Optional[Tuple[Optional[Outcome], str]] = None
        at_frame_end = True
        ended = False
        try:
            while not ended:
                wake = min(self.deadline, last_data + idle_s, last_sent + keepalive_s if keepalive_s else math.inf)
                try:
                    async with asyncio.timeout_at(wake):
                        while True:
                            chunk = await content.readany()
                            if not chunk:
                                ended = True
                                break
                            last_data = last_sent = loop.time()
                            detector.feed(chunk)
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                            at_frame_end = chunk.endswith(b"\n\n")
                except TimeoutError:
                    # The loop may wake a hair early (clock resolution): compare with a margin.
                    now = loop.time() + _TIMER_SLACK_S
                    if now >= self.deadline:
                        failure = (None, f"the run took longer than {self.timeouts.run_s:g} s")
                        break
                    if now - last_data >= idle_s:
                        failure = (Outcome.TIMEOUT, f"no event for {idle_s:g} s")
                        break
                    if keepalive_s and now - last_sent >= keepalive_s and at_frame_end:
                        await send({"type": "http.response.body", "body": KEEPALIVE_COMMENT, "more_body": True})
                        last_sent = loop.time()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as error:
            failure = (Outcome.CONNECT_ERROR, f"the connection was lost mid-stream ({type(error).__name__})")
            salvaged = _salvage(content)
            if salvaged:
                detector.feed(salvaged)
                await send({"type": "http.response.body", "body": salvaged, "more_body": True})
                at_frame_end = salvaged.endswith(b"\n\n")
        outcome: Optional[Outcome] = Outcome.SUCCESS
        body = b""
        if failure is not None:
            outcome, reason = failure
            name = self.opened.upstream.name
            logger.warning("stream from upstream %s ended early: %s", name, reason)
            if not detector.ended:
                # A frame cut in half is ended first, so readers skip it and read the error whole.
                body = (b"" if at_frame_end else b"\n\n") + self.error_frame(f"Upstream {name}: {reason}")
                self.cut = True
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return outcome


def _salvage(content: aiohttp.StreamReader) -> bytes:
    """Bytes the upstream sent just before the connection broke: aiohttp raises the error before
    handing out what it had buffered, so it is taken directly (nothing sent may be lost)."""
    read_buffered = getattr(content, "_read_nowait", None)
    try:
        return read_buffered(-1) if read_buffered is not None else b""
    except Exception:  # noqa: BLE001 - a best effort on a broken stream
        return b""


async def read_answer(opened: Opened) -> Tuple[int, bytes]:
    """A whole (non-stream) answer; ``UpstreamFailure`` 502 when the upstream cuts it short."""
    try:
        body = await opened.response.read()
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as error:
        failure = UpstreamFailure(
            opened.upstream, Outcome.CONNECT_ERROR, 502, f"the answer was cut short ({type(error).__name__})",
            retryable=False,
        )  # fmt: skip
        failure.answered = True
        raise failure from None
    finally:
        opened.response.release()
    return opened.response.status, body


async def _client_gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


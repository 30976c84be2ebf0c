"""Passing an upstream's SSE stream to the client as it comes (``StreamRelay``).

* Backpressure: the next chunk is read only after the client took the last one.
* Client gone: the upstream connection is closed, which AgentOS reads as a cancel, except for a
  background run: AgentOS runs that in a task of its own, which goes on (``/resume`` reads it).
* Upstream silent for ``keepalive_s``: an SSE comment, which every reader skips.
* Upstream cut short, silent past ``stream_idle_s``, or past the whole-run deadline: one in-band
  error event of the run's kind ends the stream, unless the run already ended.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Callable, List, Optional, Tuple

import aiohttp
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import metrics
from gateway.balancing import Outcome
from gateway.deadline import Deadline
from gateway.disconnect import CancelOnDisconnect
from gateway.errors import ClientGone
from gateway.sender import Opened
from gateway.settings import Settings
from gateway.wire.sse import EndOfRunDetector

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_SSE_RAW_HEADERS = [(name.lower().encode(), value.encode()) for name, value in SSE_HEADERS.items()]
_SSE_NAMES = frozenset(name for name, _ in _SSE_RAW_HEADERS)
KEEPALIVE_COMMENT = b": keepalive\n\n"
_TIMER_SLACK_S = 0.002


def is_event_stream(response: aiohttp.ClientResponse) -> bool:
    return response.content_type == "text/event-stream"


class StreamRelay(Response):
    """An ASGI answer that passes an upstream's SSE bytes to the client as they come (the
    rules are the module's)."""

    def __init__(
        self,
        opened: Opened,
        headers: List[Tuple[bytes, bytes]],
        *,
        error_frame: Callable[[str], bytes],
        settings: Settings,
        started_at: float,
        run_labels: Optional[Tuple[str, str]] = None,
        background: bool = False,
    ) -> None:
        self.opened = opened
        self.run_labels = run_labels  # (kind, entity) of the run, for its metrics
        self.run_background = background  # a run its client's leaving does not end
        self.status_code = opened.response.status
        self.background = None
        self.raw_headers = [*(header for header in headers if header[0] not in _SSE_NAMES), *_SSE_RAW_HEADERS]
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
                # A held stream keeps nothing it no longer needs: the headers are sent once.
                headers, self.raw_headers = self.raw_headers, []
                await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
                del headers
                outcome = await self._relay(send)
        except ClientGone:
            pass  # a stream that had ended keeps its outcome
        finally:
            # Closing (not releasing) drops the connection: if the run is still going, AgentOS
            # sees its client leave and cancels it (a background run goes on, on purpose).
            opened.response.close()
            opened.flight.finish(outcome)
            metrics.ACTIVE_STREAMS.dec()
            self._record_run(client_left=outcome is None and not self.cut and not self.run_background)

    def _record_run(self, *, client_left: bool) -> None:
        if self.run_labels is None:
            return
        kind, entity = self.run_labels
        metrics.labelled(metrics.STREAM_EVENTS, kind).inc(self.scan.frames + self.cut)
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
                    with Deadline(wake - loop.time()):
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
            failure = (Outcome.RESET, f"the connection was lost mid-stream ({type(error).__name__})")
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

"""Bounds on what one gateway takes at once: concurrent runs and concurrent streams (header size
is checked by ``api/observe.py``, body size by ``api/body_reader.py``).

Beyond a bound the answer is immediate (503 with ``Retry-After``): never a queue that grows
without end while clients wait.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import Busy
from gateway.settings import LimitSettings

RETRY_AFTER_BUSY_S = 1.0


class Limiter:
    """Counts runs and streams in flight; a run beyond a bound is refused at once."""

    def __init__(self, limits: LimitSettings) -> None:
        self.limits = limits
        self.runs = 0
        self.streams = 0

    def acquire(self, stream: bool, holds_run: bool = True) -> Callable[[], None]:
        """A slot for one run (and stream), or ``Busy`` (503); returns the function that gives it
        back. ``holds_run`` false: a stream slot only (a stream that is no run: MCP's server stream)."""
        if holds_run and self.runs >= self.limits.max_concurrent_runs:
            raise _busy(f"{self.limits.max_concurrent_runs} runs in progress")
        if stream and self.streams >= self.limits.max_streams:
            raise _busy(f"{self.limits.max_streams} streams open")
        self.runs += holds_run
        self.streams += stream
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.runs -= holds_run
                self.streams -= stream

        return release

    async def run(self, stream: bool, answer: Callable[[], Awaitable[Response]], *, holds_run: bool = True) -> Response:
        """``answer()`` within a slot held until the answer has been sent (or has failed)."""
        release = self.acquire(stream, holds_run)
        try:
            response = await answer()
        except BaseException:
            release()
            raise
        return Released(response, release)


class Released(Response):
    """A response that gives its slot back once it has been sent, however sending ends."""

    def __init__(self, inner: Response, release: Callable[[], None]) -> None:
        self.inner = inner
        self.release = release
        self.status_code = inner.status_code
        self.background = None
        self.raw_headers = inner.raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            self.release()


def _busy(detail: str) -> Busy:
    return Busy(f"Busy: {detail}", retry_after_s=RETRY_AFTER_BUSY_S)

"""Cancel work when its client leaves.

uvicorn does not cancel a plain (non-streaming) handler when the client disconnects, so a run
would go on for nobody. ``until_disconnected`` races the work against ``http.disconnect``.

ASGI has no per-connection disconnect callback, so the watch is a task reading ``receive``. Most
forwarded answers come within milliseconds, and a task for each (created, stepped, cancelled)
was a measurable share of a request's CPU; so ``until_disconnected`` starts its watch only once
the work has lasted ``WATCH_AFTER_S``. A client that leaves earlier is noticed then: the work goes
on for nobody for at most that long.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Optional, TypeVar

from starlette.requests import Request
from starlette.types import Receive

from gateway.errors import ClientError, ClientGone

T = TypeVar("T")
WATCH_AFTER_S = 0.05


class CancelOnDisconnect:
    """Within it, the current task is cancelled when the client disconnects, and the block ends
    with ``ClientGone``. One watcher task, started at once or after ``after_s`` of work; the work
    itself runs in the caller's task."""

    __slots__ = ("receive", "after_s", "gone", "watcher", "timer", "task")

    def __init__(self, receive: Receive, after_s: float = 0.0) -> None:
        self.receive = receive
        self.after_s = after_s
        self.gone = False
        self.watcher: Optional[asyncio.Future] = None
        self.timer: Optional[asyncio.TimerHandle] = None

    def __enter__(self) -> "CancelOnDisconnect":
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        if self.after_s > 0:
            self.timer = asyncio.get_running_loop().call_later(self.after_s, self._start_watch)
        else:
            self._start_watch()
        return self

    def _start_watch(self) -> None:
        self.watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        # The body is usually read already, so the next receive() blocks until the client is
        # gone. A route that forwards without reading it may see the body reader fail instead
        # (too slow, incomplete): the work ends as if the client had left, and the body reader
        # answers its failure (408, 400).
        try:
            while (await self.receive())["type"] != "http.disconnect":
                pass
        except ClientError:
            pass
        self.gone = True
        self.task.cancel()

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> bool:
        if self.timer is not None:
            self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()
        if self.gone:
            self.task.uncancel()  # the cancel was ours (even if the work ended just before it)
            if exc_type is None or issubclass(exc_type, asyncio.CancelledError):
                raise ClientGone()
        return False


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of ``work``; if the client disconnects first, ``work`` is cancelled and
    ``ClientGone`` raised (noticed ``WATCH_AFTER_S`` into the work at the earliest)."""
    with CancelOnDisconnect(request.receive, WATCH_AFTER_S):
        return await work

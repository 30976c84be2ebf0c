"""Cancel work when its client leaves.

uvicorn does not cancel a plain (non-streaming) handler when the client disconnects, so a run
would go on for nobody. ``until_disconnected`` races the work against ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, TypeVar

from starlette.requests import Request
from starlette.types import Receive

from gateway.errors import ClientError, ClientGone

T = TypeVar("T")


class CancelOnDisconnect:
    """Within it, the current task is cancelled when the client disconnects, and the block ends
    with ``ClientGone``. One watcher task; the work itself runs in the caller's task."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.gone = False

    def __enter__(self) -> "CancelOnDisconnect":
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.watcher = asyncio.ensure_future(self._watch())
        return self

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
        self.watcher.cancel()
        if self.gone:
            self.task.uncancel()  # the cancel was ours (even if the work ended just before it)
            if exc_type is None or issubclass(exc_type, asyncio.CancelledError):
                raise ClientGone()
        return False


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of ``work``; if the client disconnects first, ``work`` is cancelled and
    ``ClientGone`` raised."""
    with CancelOnDisconnect(request.receive):
        return await work

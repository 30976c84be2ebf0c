"""Cancel work when its client leaves.

uvicorn does not cancel a plain (non-streaming) handler when the client disconnects, so a run
would go on for nobody. ``until_disconnected`` races the work against ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable, TypeVar

from starlette.requests import Request

T = TypeVar("T")

# nginx's code for "client closed request": logged, never seen by the (gone) client.
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    pass


async def _disconnected(request: Request) -> None:
    # The body is already read, so the next receive() blocks until the client is gone.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of ``work``; if the client disconnects first, ``work`` is cancelled and
    ``ClientDisconnected`` raised."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected()
    return task.result()

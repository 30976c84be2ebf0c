"""Cancel work when its client leaves.

uvicorn does not cancel a plain (non-streaming) handler when the client disconnects, so a run
would go on for nobody. ``until_disconnected`` races the work against ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
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
    """The result of ``work``, awaited in this task; if the client disconnects first, ``work`` is
    cancelled and ``ClientDisconnected`` raised. One watcher task, no task for the work itself."""
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(request)
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        result = await work
    except asyncio.CancelledError:
        if gone:
            current.uncancel()
            raise ClientDisconnected() from None
        raise
    finally:
        watcher.cancel()
    if gone:  # the client left just as the work ended: its cancel is still pending here
        current.uncancel()
        raise ClientDisconnected()
    return result

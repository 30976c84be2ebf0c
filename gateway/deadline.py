"""A time limit on the current task, as ``asyncio.timeout`` sets one, in a plain ``with`` block.

``asyncio.timeout`` is an async context manager (two coroutines per use) around a reschedulable
state machine; the run path sets two limits per request (the body's next part, the upstream's
answer head) and needs neither. The semantics are ``asyncio.timeout``'s: when the time is up the
task is cancelled, and the block ends with ``TimeoutError`` unless the task was also cancelled
from elsewhere (then the ``CancelledError`` goes on). The block must wrap awaits of the current
task only, as ``asyncio.timeout``'s must.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional


class Deadline:
    __slots__ = ("seconds", "task", "handle", "expired", "cancelling")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self.handle: Optional[asyncio.TimerHandle] = None

    def __enter__(self) -> "Deadline":
        task = asyncio.current_task()
        assert task is not None, "a Deadline is set inside a task"
        self.task = task
        self.cancelling = task.cancelling()
        self.handle = asyncio.get_running_loop().call_later(self.seconds, self._expire)
        return self

    def _expire(self) -> None:
        self.expired = True
        self.task.cancel()

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        assert self.handle is not None
        self.handle.cancel()
        if self.expired and self.task.uncancel() <= self.cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

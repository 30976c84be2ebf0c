"""``Deadline``: ``asyncio.timeout``'s semantics in a plain ``with`` block."""

from __future__ import annotations

import asyncio

import pytest

from gateway.deadline import Deadline


async def test_a_wait_past_the_deadline_ends_with_timeout_error() -> None:
    never = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        with Deadline(0.01):
            await never
    assert never.cancelled()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # the cancel was its own


async def test_work_done_in_time_is_untouched_and_the_timer_is_gone() -> None:
    with Deadline(5.0) as deadline:
        await asyncio.sleep(0)
    assert deadline.handle is not None and deadline.handle.cancelled() and not deadline.expired


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    """The task was cancelled by someone else too (a client's disconnect): not a timeout."""
    started = asyncio.Event()

    async def work() -> None:
        with Deadline(10.0):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.ensure_future(work())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_an_expiry_and_another_cancel_together_stay_a_cancel() -> None:
    """As ``asyncio.timeout``: when the deadline fired and the task was also cancelled from
    elsewhere, the CancelledError goes on (the other cancel is still owed)."""

    async def work() -> None:
        with Deadline(0.0):
            # Runs in the next loop pass, just before the deadline's own timer: both cancels land
            # before this task resumes.
            asyncio.get_running_loop().call_soon(task.cancel)
            await asyncio.sleep(10)

    task = asyncio.ensure_future(work())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)

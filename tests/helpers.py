"""Small waits for the tests: each polls a condition with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Awaitable, Callable, Optional, TypeVar

T = TypeVar("T")

POLL_INTERVAL_S = 0.05


async def eventually(check: Callable[[], Optional[T]], *, timeout: float = 15.0, what: str = "condition") -> T:
    """The first truthy value of ``check()``; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {value!r})")
        await asyncio.sleep(POLL_INTERVAL_S)


async def eventually_async(
    check: Callable[[], Awaitable[Optional[T]]], *, timeout: float = 15.0, what: str = "condition"
) -> T:
    """``eventually`` for a check that has to await (an HTTP request)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {value!r})")
        await asyncio.sleep(POLL_INTERVAL_S)


def stored_run_status(db_path: Path, session_id: str) -> Optional[str]:
    """The status of the last run stored for an agent session in the gateway's SQLite db."""
    from agno.db.base import SessionType
    from agno.db.sqlite import SqliteDb

    session = SqliteDb(db_file=str(db_path)).get_session(session_id, SessionType.AGENT)
    if session is None or not session.runs:
        return None
    status = session.runs[-1].status
    return getattr(status, "value", status)


def rss_mib(pid: int) -> float:
    """The resident memory of process ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")

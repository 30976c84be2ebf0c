"""Log output of the service: JSON lines on stdout.

The access log writes one JSON object per request, already encoded, through a buffered writer
that flushes within ``FLUSH_AFTER_S`` (the logging module's per-record work and per-line flush
were most of a request's observing cost); every other gateway logger writes
``{"level", "logger", "message"}`` objects, exceptions included.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import sys
from typing import IO, List, Optional

LEVEL_ENV = "GATEWAY_LOG_LEVEL"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def configure_logging() -> None:
    """Idempotent: safe to call in every worker."""
    level = os.environ.get(LEVEL_ENV, "info").upper()
    gateway = logging.getLogger("gateway")
    structured = logging.StreamHandler(sys.stdout)
    structured.setFormatter(JsonFormatter())
    gateway.handlers, gateway.propagate = [structured], False
    gateway.setLevel(level)


class AccessLogWriter:
    """Lines gathered and written together: at most ``FLUSH_AFTER_S`` late, or at once when
    ``FLUSH_AT_BYTES`` wait, or when no event loop runs (tools, tests calling in)."""

    FLUSH_AFTER_S = 0.1
    FLUSH_AT_BYTES = 64 * 1024
    _shared: Optional["AccessLogWriter"] = None

    def __init__(self, stream: Optional[IO[str]] = None) -> None:
        self.stream = stream
        self.pending: List[str] = []
        self.pending_bytes = 0
        self.scheduled = False

    @classmethod
    def shared(cls) -> "AccessLogWriter":
        if cls._shared is None:
            cls._shared = cls()
            atexit.register(cls._shared.flush)  # the last lines too
        return cls._shared

    def write(self, line: str) -> None:
        self.pending.append(line)
        self.pending_bytes += len(line)
        if self.pending_bytes >= self.FLUSH_AT_BYTES:
            self.flush()
        elif not self.scheduled:
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_AFTER_S, self.flush)
                self.scheduled = True
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self.scheduled = False
        if not self.pending:
            return
        stream = self.stream or sys.stdout
        stream.write("".join(self.pending))
        stream.flush()
        self.pending, self.pending_bytes = [], 0

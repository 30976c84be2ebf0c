"""Log output of the service: JSON lines on stdout.

The access log (``agentos_gateway.access``) writes one JSON object per request, already encoded;
every other gateway logger writes ``{"level", "logger", "message"}`` objects, exceptions included.
"""

from __future__ import annotations

import json
import logging
import os
import sys

ACCESS_LOGGER = "agentos_gateway.access"
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
    access = logging.getLogger(ACCESS_LOGGER)
    plain = logging.StreamHandler(sys.stdout)
    plain.setFormatter(logging.Formatter("%(message)s"))  # already a JSON object
    access.handlers, access.propagate = [plain], False
    access.setLevel(logging.INFO)
    gateway = logging.getLogger("gateway")
    structured = logging.StreamHandler(sys.stdout)
    structured.setFormatter(JsonFormatter())
    gateway.handlers, gateway.propagate = [structured], False
    gateway.setLevel(level)

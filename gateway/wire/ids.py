"""The session and run ids the gateway reads (form fields, v1 JSON, path parameters) are capped.

An id is hashed for affinity, remembered for cancels and kept by every upstream's database: an
unbounded one costs all three. The ids agno makes are 36-byte UUIDs: far below the cap.
"""

from __future__ import annotations

from typing import Optional

from gateway.errors import BadRequest

MAX_ID_BYTES = 256  # the UTF-8 length of the text


def check_id(field: str, value: Optional[str]) -> None:
    """``BadRequest`` naming ``field`` when ``value`` is longer than ``MAX_ID_BYTES``."""
    # A UTF-8 character is at most 4 bytes: a short id needs no encoding to be measured.
    if value and len(value) * 4 > MAX_ID_BYTES and len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise BadRequest(f"{field}: longer than {MAX_ID_BYTES} bytes")

"""Urlencoded run forms, read exactly as AgentOS reads them, for the fast path and the routes alike.

The gateway hashes the session id it reads (affinity) and remembers the run id (cancel): both must
be the ids the upstream records. AgentOS reads a form with Starlette's ``FormParser`` over
python-multipart's ``QuerystringParser``, whose rules are these:

* fields are separated by ``&`` only (``;`` is data); an empty chunk (``&&``, a leading or trailing
  ``&``) is no field;
* a field splits at its first ``=``; a field without one is a name with an empty value;
* the raw bytes are latin-1 (one character each: a raw UTF-8 ``é`` is ``Ã©``), then ``+`` and
  ``%XX`` are decoded (``unquote_plus``: escapes as UTF-8, a broken sequence as U+FFFD);
* a repeated field keeps every value in order; its readers (FastAPI, agno) take the last;
* more than 1000 fields, or one over 1 MiB (name and value), is a 400 with Starlette's own text.

Pure: bytes in, text out.
"""

from __future__ import annotations

from typing import AbstractSet, Dict, List, Optional, Tuple
from urllib.parse import unquote_plus

from python_multipart.multipart import parse_options_header

from gateway.errors import BadRequest

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
MAX_FIELDS = 1000  # Starlette's defaults for request.form()
MAX_FIELD_BYTES = 1024 * 1024

# pydantic's spellings of a boolean (case-insensitive), as FastAPI reads a ``bool`` form field.
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def media_type(content_type: str) -> str:
    """The media type of a Content-Type header as Starlette tells forms apart (lower case, no
    parameters): ``Application/X-WWW-Form-Urlencoded; charset=x`` is a form, ``...-urlencodedx`` not."""
    return parse_options_header(content_type)[0].decode("latin-1")


def parse_form(body: bytes, names: Optional[AbstractSet[str]] = None) -> List[Tuple[str, str]]:
    """Every (name, value) of an urlencoded body in order, or only those named in ``names`` (the
    limits still count every field). ``BadRequest`` where Starlette answers 400."""
    fields: List[Tuple[str, str]] = []
    count = 0
    for chunk in body.split(b"&"):
        if not chunk:
            continue
        raw_name, equals, raw_value = chunk.partition(b"=")
        if len(chunk) - len(equals) > MAX_FIELD_BYTES:
            raise BadRequest(f"Field exceeded maximum size of {MAX_FIELD_BYTES // 1024}KB.")
        count += 1
        if count > MAX_FIELDS:
            raise BadRequest(f"Too many fields. Maximum number of fields is {MAX_FIELDS}.")
        name = unquote_plus(raw_name.decode("latin-1"))
        if names is None or name in names:
            fields.append((name, unquote_plus(raw_value.decode("latin-1"))))
    return fields


def last_values(body: bytes, names: AbstractSet[str]) -> Dict[str, str]:
    """The value each of ``names`` has for AgentOS: its last occurrence."""
    return dict(parse_form(body, names))


def read_bool(value: Optional[str], default: bool) -> Optional[bool]:
    """A boolean form field as AgentOS's run routes read it: missing or empty is the default, then
    pydantic's spellings; None for anything else (AgentOS's 422)."""
    if not value:
        return default
    lowered = value.lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else None

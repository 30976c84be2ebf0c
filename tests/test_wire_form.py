"""The gateway's form reader against Starlette's own (AgentOS's): the same fields, values and
refusals for any body, however it arrives in chunks; booleans as pydantic reads them."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, List, Sequence, Tuple, Union

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import FormData, Headers
from starlette.formparsers import FormParser, MultiPartException

from gateway.errors import BadRequest
from gateway.wire import form
from gateway.wire.ids import MAX_ID_BYTES, check_id

HEADERS = Headers({"content-type": form.URLENCODED})

# Bodies built from what matters to a form reader: separators, escapes (good and broken), raw
# bytes >= 0x80 (UTF-8 and not), NUL, and plain letters.
_PIECES = st.one_of(
    st.sampled_from([b"&", b"=", b";", b"+", b"%", b"%20", b"%2B", b"%26", b"%3D", b"%C3%A9", b"%ff", b"%e2%82", b"%zz"]),
    st.sampled_from([b"session_id", b"run_id", b"message", b"stream", b"a", b" ", b"\x00", b"\xc3\xa9", b"\xe2\x82\xac", b"\xff"]),
    st.binary(max_size=4),
    st.binary(max_size=3).map(lambda raw: "".join(f"%{byte:02X}" for byte in raw).encode()),
)
BODIES = st.lists(_PIECES, max_size=24).map(b"".join)


def _starlette(body: bytes, cuts: Sequence[int]) -> Union[List[Tuple[str, str]], str]:
    """What Starlette's FormParser makes of ``body`` sent in chunks cut at ``cuts``: the fields,
    or the text of its refusal."""

    async def chunks() -> AsyncIterator[bytes]:
        start = 0
        for cut in sorted(set(cuts)):
            yield body[start:cut]
            start = cut
        yield body[start:]

    async def parse() -> FormData:
        return await FormParser(HEADERS, chunks()).parse()

    try:
        parsed = asyncio.run(parse())
    except MultiPartException as refused:
        return refused.message
    return [(name, value) for name, value in parsed.multi_items() if isinstance(value, str)]


def _ours(body: bytes) -> Union[List[Tuple[str, str]], str]:
    try:
        return form.parse_form(body)
    except BadRequest as refused:
        return refused.detail


@settings(max_examples=400, deadline=None)
@given(body=BODIES, cuts=st.lists(st.integers(min_value=0, max_value=96), max_size=4))
@example(body=b"session_id=\xc3\xa9&session_id=a+b%20c;d&&stream&=x&message=1=2", cuts=[])
@example(body=b"&&&", cuts=[1, 2])
def test_fields_are_starlettes(body: bytes, cuts: List[int]) -> None:
    assert _ours(body) == _starlette(body, [cut for cut in cuts if cut <= len(body)])


@settings(max_examples=200, deadline=None)
@given(body=BODIES)
def test_last_values_are_what_agentos_reads(body: bytes) -> None:
    names = {"session_id", "run_id", "stream", "a"}
    expected = FormData(_starlette(body, []))  # FastAPI and agno read a field with .get: the last
    assert form.last_values(body, names) == {name: expected[name] for name in names if name in expected}


@pytest.mark.parametrize(
    "body",
    [
        b"a=1&" * form.MAX_FIELDS,  # just within both limits
        b"a=1&" * (form.MAX_FIELDS + 1),
        b"&".join([b"a"] * form.MAX_FIELDS) + b"&" + b"b" * (form.MAX_FIELD_BYTES + 1),  # both: the size first
        b"a=" + b"x" * (form.MAX_FIELD_BYTES - 1),
        b"a=" + b"x" * form.MAX_FIELD_BYTES,
        b"x" * (form.MAX_FIELD_BYTES + 1),
    ],
    ids=["1000-fields", "1001-fields", "both", "1MiB", "1MiB+1", "1MiB+1-name"],
)
def test_limits_are_starlettes(body: bytes) -> None:
    assert _ours(body) == _starlette(body, [len(body) // 2])


@pytest.mark.parametrize(
    "content_type, media_type",
    [
        ("application/x-www-form-urlencoded", form.URLENCODED),
        ("Application/X-WWW-Form-Urlencoded; charset=utf-8", form.URLENCODED),
        ("  application/x-www-form-urlencoded", form.URLENCODED),
        ("application/x-www-form-urlencodedx", "application/x-www-form-urlencodedx"),
        ("multipart/form-data; boundary=x", form.MULTIPART),
        ("", ""),
    ],
)
def test_media_type(content_type: str, media_type: str) -> None:
    assert form.media_type(content_type) == media_type


_BOOL = TypeAdapter(bool)
_SPELLINGS = st.sampled_from(["true", "false", "yes", "no", "on", "off", "t", "f", "y", "n", "1", "0", "2"])


def _pydantic_bool(value: str) -> Union[bool, None]:
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        return None


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        _SPELLINGS,
        _SPELLINGS.map(str.upper),
        _SPELLINGS.flatmap(lambda s: st.sampled_from([s.title(), f" {s}", f"{s} ", f"{s}\x00", s[:-1] or "-"])),
        st.text(alphabet="truefalsyonTRUEFALSYON01İıſK \t", min_size=1, max_size=6),
    )
)
def test_booleans_are_pydantics(value: str) -> None:  # empty is the default: below
    assert form.read_bool(value, default=True) == _pydantic_bool(value)


def test_an_empty_or_missing_boolean_is_the_default() -> None:
    assert form.read_bool(None, True) is True and form.read_bool("", True) is True
    assert form.read_bool(None, False) is False and form.read_bool("", False) is False


def test_ids_are_capped_in_utf8_bytes() -> None:
    check_id("session_id", "a" * MAX_ID_BYTES)
    check_id("session_id", "é" * (MAX_ID_BYTES // 2))
    check_id("run_id", None)
    for too_long in ("a" * (MAX_ID_BYTES + 1), "é" * (MAX_ID_BYTES // 2) + "a", "€" * 86):
        with pytest.raises(BadRequest, match=f"^run_id: longer than {MAX_ID_BYTES} bytes$"):
            check_id("run_id", too_long)

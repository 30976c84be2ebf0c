"""Forwarding a request the gateway does not answer itself: choose upstreams, send, answer.

Used by every route that reaches an upstream: the v1 run route (translated to the AgentOS form),
the AgentOS-native routes (passed through), listings and session routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union
from urllib.parse import parse_qsl, quote, urlencode

import aiohttp
from starlette.requests import Request
from starlette.responses import Response
from yarl import URL

from gateway import metrics
from gateway.api.errors import error_response
from gateway.balancing import Affinity, AffinityMode, Choice, Outcome, choose
from gateway.disconnect import WATCH_AFTER_S, CancelOnDisconnect
from gateway.errors import ClientGone, NoUpstream, StreamCut, UpstreamFailure
from gateway.pool import Flight, Pool, Upstream
from gateway.relay import StreamRelay, is_event_stream
from gateway.run_owners import RunOwners
from gateway.retry import RequestState
from gateway.sender import Opened, Outgoing, Sender, read_answer
from gateway.settings import Settings
from gateway.wire.kinds import EntityKind
from gateway.wire.sse import format_frame

logger = logging.getLogger(__name__)

UPSTREAM_HEADER = "x-agentos-gateway-upstream"
AFFINITY_HEADER = "x-agentos-gateway-affinity"
# Client headers an upstream may see. Never Authorization: each upstream gets its own key (unless
# forward_authorization). x-request-id and traceparent are the gateway's (see api/observe.py).
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "accept-language", "tracestate")
_FORWARDED_NAMES = {name.encode(): name for name in (*FORWARDED_REQUEST_HEADERS, "accept-encoding", "authorization")}
# The gateway passes bodies through as they come: an upstream may compress only what the client
# itself said it can read, else nothing (aiohttp would otherwise offer gzip and deflate).
IDENTITY = "identity"
CANCEL_TIMEOUT_S = 5.0
ANSWERED = RequestState.ANSWERED
SWEEP_INTERVAL_S = 30.0

# Never copied from one hop to the next (RFC 9110 §7.6.1), plus what the server sets itself.
_NOT_FORWARDED_RESPONSE_HEADERS = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"content-length", b"date", b"server",
    }
)  # fmt: skip
_UPSTREAM_HEADER, _AFFINITY_HEADER = UPSTREAM_HEADER.encode(), AFFINITY_HEADER.encode()
_AFFINITY_VALUES = {affinity: affinity.value.encode() for affinity in Affinity}
RawHeaders = List[Tuple[bytes, bytes]]


class PassedAnswer(Response):
    """An upstream's whole answer as the client gets it: its headers built once, raw (Starlette's
    ``Response`` would build them again from a mapping)."""

    def __init__(self, body: bytes, status_code: int, raw_headers: RawHeaders) -> None:
        self.body = body
        self.status_code = status_code
        self.background = None
        raw_headers.append((b"content-length", str(len(body)).encode()))
        self.raw_headers = raw_headers


def segment(value: Union[str, bytes]) -> str:
    """One path segment of an upstream URL: percent-encoded whole, so a client's text can never
    add a segment, a query or a dot segment (dots alone are encoded too: the URL is sent as it is
    built, never normalized)."""
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


def query(raw: str) -> str:
    """A client's query string, parsed and encoded again: ``?`` and what follows, or nothing."""
    pairs = parse_qsl(raw, keep_blank_values=True)
    return "?" + urlencode(pairs) if pairs else ""


@dataclass(frozen=True)
class Fetched:
    """An upstream's whole answer, read for the gateway to use (a merged list, a lookup)."""

    upstream: str
    status: int
    headers: Dict[str, str]
    body: bytes


@dataclass(frozen=True)
class RunInfo:
    """What the gateway knows of a run before its first frame: enough to cancel it and to end
    its stream with an error event of the right kind. A background run (AgentOS's ``background``
    form field) is never cancelled because its client left: it is meant to outlive it."""

    kind: EntityKind
    entity_id: str
    run_id: str
    session_id: Optional[str]
    background: bool = False

    @property
    def labels(self) -> Tuple[str, str]:
        return self.kind.name.lower(), self.entity_id

    def error_frame(self, message: str) -> bytes:
        event = self.kind.error_event(
            StreamCut(message), entity_id=self.entity_id, run_id=self.run_id, session_id=self.session_id
        )
        return format_frame(event).encode()


def run_owner_ttl_s(settings: Settings) -> float:
    """How long a run's upstream is remembered: no run outlives the whole-run timeout by much."""
    return settings.timeouts.run_s + 60.0


class Forwarder:
    def __init__(self, pool: Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.sender = Sender(pool, settings)
        self.affinity_mode = AffinityMode(settings.affinity.mode)
        self.run_owners = RunOwners(ttl_s=run_owner_ttl_s(settings))
        self._background: Set[asyncio.Task] = set()
        self._in_panic: Set[Tuple[str, ...]] = set()  # upstream sets now served in panic (logged once)
        self._sweeper: Optional[asyncio.Task] = None

    def reconfigure(self, settings: Settings) -> None:
        self.settings = self.sender.settings = settings
        self.affinity_mode = AffinityMode(settings.affinity.mode)
        self.run_owners.ttl_s = run_owner_ttl_s(settings)  # for runs remembered from now on

    def start(self) -> None:
        self._sweeper = asyncio.ensure_future(self.run_owners.sweeping(SWEEP_INTERVAL_S))

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    def forwarded_headers(self, request: Request) -> Dict[str, str]:
        """The client's headers an upstream may see (a door's own requests use them too): one pass
        over the raw headers; a repeated header's first value, as Starlette's ``Headers`` reads it."""
        forwarded: Dict[str, str] = {}
        for name, value in request.scope["headers"]:
            if name in _FORWARDED_NAMES and _FORWARDED_NAMES[name] not in forwarded:
                forwarded[_FORWARDED_NAMES[name]] = value.decode("latin-1")
        forwarded.setdefault("accept-encoding", IDENTITY)
        if not self.settings.forward_authorization:
            forwarded.pop("authorization", None)
        state = request.scope.get("state", {})
        if "request_id" in state:
            forwarded["x-request-id"] = state["request_id"]
        if "traceparent" in state:
            forwarded["traceparent"] = state["traceparent"]
        return forwarded

    # -- choosing ----------------------------------------------------------------------------------

    def choose(self, upstreams: Sequence[Upstream], session_id: Optional[str], *, session_is_new: bool = False) -> Choice:
        affinity = self.settings.affinity
        choice = choose(
            self.pool.candidates(upstreams),
            session_id,
            mode=self.affinity_mode,
            session_is_new=session_is_new,
            load_factor=affinity.load_factor,
            panic_threshold_percent=self.settings.panic_threshold_percent,
        )
        self._note_panic(upstreams, choice.panic)
        return choice

    def _note_panic(self, upstreams: Sequence[Upstream], panic: bool) -> None:
        """A metric per request in panic; a log line when a set of upstreams enters or leaves it."""
        if not panic and not self._in_panic:
            return
        names = tuple(sorted(upstream.name for upstream in upstreams))
        if panic:
            metrics.PANIC.inc()
            if names not in self._in_panic:
                self._in_panic.add(names)
                usable = sum(1 for upstream in upstreams if self.pool.is_usable(upstream))
                logger.warning(
                    "panic: %d of %d upstreams (%s) usable, under %g %%: spreading over all of them",
                    usable, len(names), ", ".join(names), self.settings.panic_threshold_percent,
                )  # fmt: skip
        elif names in self._in_panic:
            self._in_panic.discard(names)
            logger.info("panic over: upstreams %s", ", ".join(names))

    def order(self, choice: Choice) -> List[Upstream]:
        return [self.pool.upstreams[name] for name in choice.order]

    def unavailable(self, detail: str = "No upstream available") -> NoUpstream:
        return NoUpstream(detail, retry_after_s=self.settings.health.interval_s)

    # -- sending -----------------------------------------------------------------------------------

    async def forward(
        self,
        request: Request,
        choice: Choice,
        outgoing: Outgoing,
        *,
        run: Optional[RunInfo] = None,
        with_affinity: bool = True,
        stream_error: Optional[Callable[[str], bytes]] = None,
        failure_answer: Optional[Callable[[UpstreamFailure], Response]] = None,
    ) -> Response:
        """Send ``outgoing`` to the first upstream of ``choice`` that takes it; pass the answer on.

        A client that leaves before the answer closes the upstream request, and a run it started
        is cancelled on that upstream explicitly too (AgentOS does not notice a non-stream
        client leaving), unless it is a background run. A stream cut short ends with the run's error
        event, else with ``stream_error``'s frame (a door's protocol), else a generic one; a door
        answers an upstream's failure in its protocol with ``failure_answer``."""
        if not choice.order:
            return error_response(self.unavailable())
        started_at = asyncio.get_running_loop().time()
        outgoing.headers = {**self.forwarded_headers(request), **outgoing.headers}
        flight = self.pool.flight()
        try:  # one watch on the client for both the answer's head and (non-stream) its body
            with CancelOnDisconnect(request.receive, WATCH_AFTER_S):
                opened, answer = await self._exchange(outgoing, choice, flight)
        except ClientGone:
            self._client_left(flight, run)
            return error_response(ClientGone())
        except UpstreamFailure as failure:
            flight.finish()  # its outcome was recorded when it happened
            return failure_answer(failure) if failure_answer is not None else error_response(failure)
        except BaseException:
            flight.finish()
            raise
        state = request.scope.setdefault("state", {})  # for the access line (api/observe.py)
        state["upstream"] = opened.upstream.name
        state["retries"] = opened.tries - 1
        status = opened.response.status
        if run is not None and 200 <= status < 300:
            key = state.get("api_key")  # set by api/auth.py
            self.run_owners.remember(run.run_id, opened.upstream.name, run.kind, run.entity_id, key)
        headers = self.answer_headers(opened, choice.affinity if with_affinity else None)
        if answer is None:
            error_frame = run.error_frame if run is not None else stream_error or generic_error_frame
            return StreamRelay(
                opened, headers, error_frame=error_frame, settings=self.settings, started_at=started_at,
                run_labels=run.labels if run is not None else None,
                background=run is not None and run.background,
            )  # fmt: skip
        body = answer
        flight.finish(Outcome.of_status(status, _is_json(opened)))
        if run is not None and status == 200:
            metrics.record_run(*run.labels, _run_status(body))
        return PassedAnswer(body, status, headers)

    async def first_that_knows(self, request: Request, order: Sequence[str], outgoing: Outgoing) -> Response:
        """``outgoing`` to the upstreams of ``order`` one by one: the first answer that is not a
        404 (an id may be stored on one upstream only), else the last 404."""
        if not order:
            raise self.unavailable()
        answer: Optional[Response] = None
        for name in order:
            attempt = Outgoing(outgoing.method, outgoing.path, dict(outgoing.headers), outgoing.body, outgoing.expects_stream)
            answer = await self.forward(request, Choice([name], Affinity.HIT), attempt, with_affinity=False)
            if answer.status_code != 404:
                break
        assert answer is not None
        return answer

    async def fetch(self, request: Request, choice: Choice, outgoing: Outgoing, *, max_bytes: int) -> Fetched:
        """``outgoing`` to the first upstream of ``choice`` that takes it, its whole answer read
        (at most ``max_bytes``: more is a 502) for the gateway to use, not passed on as it came.
        The caller watches the client (several fetches may run at once for one request)."""
        if not choice.order:
            raise self.unavailable()
        outgoing.headers = {**self.forwarded_headers(request), **outgoing.headers}
        flight = self.pool.flight()
        try:
            opened, body = await self._exchange(outgoing, choice, flight, max_bytes)
        except BaseException:
            flight.finish()
            raise
        status = opened.response.status
        flight.finish(Outcome.of_status(status, _is_json(opened)))
        if body is None:  # a stream where a JSON answer was expected
            opened.response.close()
            raise UpstreamFailure(opened.upstream, Outcome.SUCCESS, ANSWERED, 502, "a stream, not a JSON answer")
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in self.answer_headers(opened, None)}
        return Fetched(opened.upstream.name, status, headers, body)

    async def _exchange(
        self, outgoing: Outgoing, choice: Choice, flight: Flight, max_bytes: Optional[int] = None
    ) -> Tuple[Opened, Optional[bytes]]:
        """The upstream's answer: its head, and its whole body unless it is a stream."""
        opened = await self.sender.open(self.order(choice), outgoing, flight)
        if is_event_stream(opened.response):
            return opened, None
        try:
            return opened, (await read_answer(opened, max_bytes))[1]
        except BaseException:
            opened.response.close()  # the client left, or the body broke: the connection goes
            raise

    def answer_headers(self, opened: Opened, affinity: Optional[Affinity]) -> RawHeaders:
        """The upstream's answer headers the client gets (raw, as an ASGI answer carries them),
        with the gateway's own."""
        headers = [
            (name.lower(), value)
            for name, value in opened.response.raw_headers
            if name.lower() not in _NOT_FORWARDED_RESPONSE_HEADERS
        ]
        if self.settings.affinity.headers:
            headers.append((_UPSTREAM_HEADER, opened.upstream.name.encode()))
            if affinity is not None:
                moved = opened.tries > 1 and affinity is not Affinity.NEW
                headers.append((_AFFINITY_HEADER, _AFFINITY_VALUES[Affinity.MOVED if moved else affinity]))
        return headers

    def _client_left(self, flight: Flight, run: Optional[RunInfo]) -> None:
        upstream = flight.upstream
        flight.finish()
        if run is not None and upstream is not None and not run.background:
            self.in_background(self.cancel_on(upstream, run.kind, run.entity_id, run.run_id, raw_query=""))

    # -- cancel ------------------------------------------------------------------------------------

    async def cancel_on(self, upstream: Upstream, kind: EntityKind, entity_id: str, run_id: str, raw_query: str) -> int:
        """AgentOS's cancel on one upstream; its status code, or 0 when it could not be reached."""
        path = f"/{kind.path}/{segment(entity_id)}/runs/{segment(run_id)}/cancel" + query(raw_query)
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_S):
                url = URL(upstream.base_url + path, encoded=True)
                async with upstream.client().post(url, headers=upstream.auth_headers) as answer:
                    await answer.read()
                    return answer.status
        # Reported, never raised (RuntimeError: the upstream was removed meanwhile).
        except (TimeoutError, aiohttp.ClientError, RuntimeError) as error:
            logger.warning("cancel of run %s on upstream %s failed: %s", run_id, upstream.name, error)
            return 0

    async def cancel(
        self, upstreams: Sequence[Upstream], kind: EntityKind, entity_id: str, run_id: str, raw_query: str
    ) -> int:
        """Cancel on the upstream that runs ``run_id``, or on every upstream serving the id when
        that is not known (the run started elsewhere or long ago). 200 when any upstream took it."""
        owner = self.run_owners.owner(run_id)
        targets = [u for u in upstreams if u.name == owner] or list(upstreams)
        statuses = await asyncio.gather(*(self.cancel_on(u, kind, entity_id, run_id, raw_query) for u in targets))
        if any(200 <= status < 300 for status in statuses):
            return 200
        return max(statuses) or 502

    def in_background(self, work) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(work)
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)


_STATUS_KEY = b'"status":"'
RUN_STATUSES = frozenset({"COMPLETED", "ERROR", "CANCELLED", "PAUSED", "RUNNING", "PENDING"})


def _is_json(opened: Opened) -> bool:
    return opened.response.headers.get("Content-Type", "").startswith("application/json")


def _run_status(body: bytes) -> Optional[str]:
    """The status of a non-stream run's RunOutput JSON, found by scanning, not parsing: agno
    writes the top-level status before any nested output's, and a key inside a string is escaped
    (``\\"status\\"``), so cannot match. Only a known status counts (a label stays bounded)."""
    start = body.find(_STATUS_KEY)
    if start < 0:
        return None
    start += len(_STATUS_KEY)
    status = body[start : body.find(b'"', start)].decode("ascii", "replace")
    return status if status in RUN_STATUSES else None


def generic_error_frame(message: str) -> bytes:
    """The end of a cut stream that is no run (no run kind to speak in): JSON, like every frame."""
    return f"event: error\ndata: {json.dumps({'detail': message}, separators=(',', ':'))}\n\n".encode()


def new_session(session_id: Optional[str]) -> tuple[str, bool]:
    """The session id a run goes with, and whether the gateway just made it: an empty or missing
    id is a new session (AgentOS reads it so), made here so it can be hashed before choosing."""
    return (session_id, False) if session_id else (new_uuid(), True)


def new_uuid() -> str:
    """A random (version 4) UUID as text: ``str(uuid4())`` without building a UUID object."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def form_body(fields: Dict[str, str]) -> bytes:
    return urlencode(fields).encode()


def with_form_fields(body: bytes, content_type: str, fields: Dict[str, str]) -> bytes:
    """``body`` (urlencoded or multipart) with ``fields`` appended. The form readers AgentOS uses
    take the last value of a repeated field, so an appended field wins over an empty one."""
    if not fields:
        return body
    if content_type.startswith("multipart/form-data"):
        boundary = _boundary(content_type)
        closing = b"--" + boundary + b"--"
        end = body.rfind(closing)
        if end < 0:
            return body  # not a complete multipart body: the upstream answers it as AgentOS does
        parts = b"".join(
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n'
            + value.encode() + b"\r\n"
            for name, value in fields.items()
        )  # fmt: skip
        return body[:end] + parts + body[end:]
    extra = form_body(fields)
    return body + b"&" + extra if body else extra


def _boundary(content_type: str) -> bytes:
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key.lower() == "boundary":
            return value.strip('"').encode()
    return b""

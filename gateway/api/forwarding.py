"""Forwarding a request the gateway does not answer itself: choose upstreams, send, answer.

Used by every route that reaches an upstream: the v1 run route (translated to the AgentOS form),
the AgentOS-native routes (passed through), listings and session routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from gateway.disconnect import CLIENT_CLOSED_REQUEST, ClientDisconnected, until_disconnected
from gateway import metrics
from gateway.balancing import AffinityMode, Choice, Outcome, choose
from gateway.pool import Pool, Upstream
from gateway.proxy import (
    Flight,
    Opened,
    Outgoing,
    Proxy,
    StreamRelay,
    UpstreamFailure,
    is_event_stream,
    no_upstream_response,
    read_answer,
)
from gateway.settings import Settings
from gateway.wire.kinds import EntityKind
from gateway.wire.sse import format_frame

logger = logging.getLogger(__name__)

# Client headers an upstream may see. Never Authorization: each upstream gets its own key (unless
# forward_authorization). x-request-id and traceparent are the gateway's (see api/observe.py).
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "accept-language", "tracestate")
CANCEL_TIMEOUT_S = 5.0


class UpstreamLost(Exception):
    """A run's upstream stream ended early (cut, silent too long, past its deadline)."""

    type = "UpstreamError"  # what an error event's error_type says, as agno's own errors do


@dataclass(frozen=True)
class RunInfo:
    """What the gateway knows of a run before its first frame: enough to cancel it and to end
    its stream with an error event of the right kind."""

    kind: EntityKind
    entity_id: str
    run_id: str
    session_id: Optional[str]

    @property
    def labels(self) -> Tuple[str, str]:
        return self.kind.name.lower(), self.entity_id

    def error_frame(self, message: str) -> bytes:
        event = self.kind.error_event(
            UpstreamLost(message), entity_id=self.entity_id, run_id=self.run_id, session_id=self.session_id
        )
        return format_frame(event).encode()


class Forwarder:
    def __init__(self, pool: Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.proxy = Proxy(pool, settings)
        self._background: Set[asyncio.Task] = set()

    def _forwarded_headers(self, request: Request) -> Dict[str, str]:
        headers = request.headers
        forwarded = {name: headers[name] for name in FORWARDED_REQUEST_HEADERS if name in headers}
        state = request.scope.get("state", {})
        for name in ("request_id", "traceparent"):
            if name in state:
                forwarded[name.replace("_", "-").replace("request-id", "x-request-id")] = state[name]
        if self.settings.forward_authorization and "authorization" in headers:
            forwarded["authorization"] = headers["authorization"]
        return forwarded

    # -- choosing ----------------------------------------------------------------------------------

    def choose(self, upstreams: Sequence[Upstream], session_id: Optional[str], *, session_is_new: bool = False) -> Choice:
        affinity = self.settings.affinity
        return choose(
            self.pool.candidates(upstreams),
            session_id,
            mode=AffinityMode(affinity.mode),
            session_is_new=session_is_new,
            load_factor=affinity.load_factor,
            panic=self.settings.panic,
        )

    def order(self, choice: Choice) -> List[Upstream]:
        return [self.pool.upstreams[name] for name in choice.order]

    def unavailable(self, detail: str = "No upstream available") -> Response:
        return no_upstream_response(self.settings.health.interval_s, detail)

    # -- sending -----------------------------------------------------------------------------------

    async def forward(
        self,
        request: Request,
        choice: Choice,
        outgoing: Outgoing,
        *,
        run: Optional[RunInfo] = None,
        with_affinity: bool = True,
    ) -> Response:
        """Send ``outgoing`` to the first upstream of ``choice`` that takes it; pass the answer on.

        A client that leaves before the answer closes the upstream request, and a run it started
        is cancelled on that upstream explicitly too (AgentOS does not notice a non-stream
        client leaving)."""
        if not choice.order:
            return self.unavailable()
        started_at = asyncio.get_running_loop().time()
        outgoing.headers = {**self._forwarded_headers(request), **outgoing.headers}
        flight = Flight(self.pool)
        try:  # one watch on the client for both the answer's head and (non-stream) its body
            opened, answer = await until_disconnected(request, self._exchange(outgoing, choice, flight))
        except ClientDisconnected:
            self._client_left(flight, run)
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except UpstreamFailure as failure:
            flight.finish(failure.outcome if failure.answered else None)
            return failure.response()
        except BaseException:
            flight.finish()
            raise
        request.state.upstream = opened.upstream.name
        request.state.retries = opened.tries - 1
        if run is not None:
            self.proxy.run_owners.remember(run.run_id, opened.upstream.name)
        headers = self.proxy.answer_headers(opened, choice.affinity if with_affinity else None)
        if answer is None:
            error_frame = run.error_frame if run is not None else generic_error_frame
            return StreamRelay(
                opened, headers, error_frame=error_frame, settings=self.settings, started_at=started_at,
                run_labels=run.labels if run is not None else None,
            )  # fmt: skip
        status, body = answer
        flight.finish(Outcome.SERVER_ERROR if status >= 500 else Outcome.SUCCESS)
        if run is not None and status == 200:
            metrics.record_run(*run.labels, _run_status(body))
        return Response(body, status_code=status, headers=headers)

    async def _exchange(
        self, outgoing: Outgoing, choice: Choice, flight: Flight
    ) -> Tuple[Opened, Optional[Tuple[int, bytes]]]:
        """The upstream's answer: its head, and its whole body unless it is a stream."""
        opened = await self.proxy.open(self.order(choice), outgoing, flight)
        if is_event_stream(opened.response):
            return opened, None
        try:
            return opened, await read_answer(opened)
        except BaseException:
            opened.response.close()  # the client left, or the body broke: the connection goes
            raise

    def _client_left(self, flight: Flight, run: Optional[RunInfo]) -> None:
        upstream = flight.upstream
        flight.finish()
        if run is not None and upstream is not None:
            self.in_background(self.cancel_on(upstream, run.kind, run.entity_id, run.run_id, query=""))

    # -- cancel ------------------------------------------------------------------------------------

    async def cancel_on(self, upstream: Upstream, kind: EntityKind, entity_id: str, run_id: str, query: str) -> int:
        """AgentOS's cancel on one upstream; its status code, or 0 when it could not be reached."""
        path = f"/{kind.path}/{entity_id}/runs/{run_id}/cancel" + (f"?{query}" if query else "")
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_S):
                async with upstream.client().post(upstream.base_url + path, headers=upstream.auth_headers) as answer:
                    await answer.read()
                    return answer.status
        except (asyncio.TimeoutError, OSError, Exception) as error:  # noqa: BLE001 - reported, never raised
            logger.warning("cancel of run %s on upstream %s failed: %s", run_id, upstream.name, error)
            return 0

    async def cancel(self, upstreams: Sequence[Upstream], kind: EntityKind, entity_id: str, run_id: str, query: str) -> int:
        """Cancel on the upstream that runs ``run_id``, or on every upstream serving the id when
        that is not known (the run started elsewhere or long ago). 200 when any upstream took it."""
        owner = self.proxy.run_owners.owner(run_id)
        targets = [u for u in upstreams if u.name == owner] or list(upstreams)
        statuses = await asyncio.gather(*(self.cancel_on(u, kind, entity_id, run_id, query) for u in targets))
        if any(200 <= status < 300 for status in statuses):
            return 200
        return max(statuses) or 502

    def in_background(self, work) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(work)
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)


_STATUS_KEY = b'"status":"'
RUN_STATUSES = frozenset({"COMPLETED", "ERROR", "CANCELLED", "PAUSED", "RUNNING", "PENDING"})


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

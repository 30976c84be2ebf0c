"""One preparation of a run request for an upstream, for the fast path and the routes alike.

A run gets its session id and run id here, before an upstream is chosen: the session id decides
the upstream (affinity), the run id lets a cancel find the run. A ``/v1`` JSON run becomes
AgentOS's urlencoded form; an AgentOS form (urlencoded or multipart) goes as it came, with the
ids it lacked appended (AgentOS's form readers take a field's last value, so an appended id wins
over an empty one). Ids over the cap are refused here (400 naming the field), so no upstream
ever sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Dict, Optional, Sequence

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.forwarding import Forwarder, RunInfo, form_body, new_session, new_uuid, segment, with_form_fields
from gateway.api.schemas import RunRequest
from gateway.pool import Upstream
from gateway.sender import Outgoing
from gateway.wire import form
from gateway.wire.encoding import v1_json_to_form
from gateway.wire.ids import check_id
from gateway.wire.kinds import EntityKind


@dataclass(frozen=True)
class PreparedRun:
    kind: EntityKind
    entity_id: str
    body: bytes
    content_type: str
    session_id: str
    session_is_new: bool  # the gateway made the session id: no affinity to keep
    run_id: str
    stream: bool
    background: bool

    def outgoing(self) -> Outgoing:
        return Outgoing(
            "POST",
            f"/{self.kind.path}/{segment(self.entity_id)}/runs",
            headers={"Content-Type": self.content_type},
            body=self.body,
            expects_stream=self.stream,
        )

    def info(self) -> RunInfo:
        return RunInfo(self.kind, self.entity_id, self.run_id, self.session_id, background=self.background)


def from_v1(kind: EntityKind, entity_id: str, request: RunRequest) -> PreparedRun:
    """A ``/v1`` JSON run as AgentOS's form."""
    check_id("session_id", request.session_id)
    check_id("run_id", request.run_id)
    data = request.model_dump(exclude_none=True)
    session_id, session_is_new = new_session(data.get("session_id"))
    run_id = data.get("run_id") or new_uuid()
    data.update(session_id=session_id, run_id=run_id)
    body = form_body(v1_json_to_form(data))
    return PreparedRun(
        kind, entity_id, body, form.URLENCODED, session_id, session_is_new, run_id, request.stream, bool(request.background)
    )


def from_form(
    kind: EntityKind,
    entity_id: str,
    body: bytes,
    content_type: str,
    *,
    session_id: Optional[str],
    run_id: Optional[str],
    stream: bool,
    background: bool,
) -> PreparedRun:
    """An AgentOS form run, given the fields it was read for (empty values as None)."""
    check_id("session_id", session_id)
    check_id("run_id", run_id)
    added: Dict[str, str] = {}
    session_id, session_is_new = new_session(session_id)
    if session_is_new:
        added["session_id"] = session_id
    run_id = run_id or added.setdefault("run_id", new_uuid())
    body = with_form_fields(body, content_type, added)
    return PreparedRun(kind, entity_id, body, content_type, session_id, session_is_new, run_id, stream, background)


def is_background(value: object) -> bool:
    """Whether AgentOS runs a run request in the background: its ``background`` form field reads
    true (anything else is no background run; AgentOS answers a malformed one itself)."""
    return isinstance(value, str) and form.read_bool(value, False) is True


def forward(forwarder: Forwarder, request: Request, upstreams: Sequence[Upstream], run: PreparedRun) -> Awaitable[Response]:
    """Send a prepared run to the upstream its session goes to, and answer with what comes back
    (the forwarder's own coroutine, awaited by the caller: one level fewer on the run path)."""
    choice = forwarder.choose(upstreams, run.session_id, session_is_new=run.session_is_new)
    return forwarder.forward(request, choice, run.outgoing(), run=run.info())

"""A2A (``<prefix>/{agents|teams|workflows}/{id}/...``): a context stays on its upstream.

AgentOS's A2A door runs the entity with the message's ``contextId`` as the agno session id, so
the context is the conversation, hashed as a run's session is. Both forms of a message carry it
at ``params.message.contextId``: the REST paths (``v1/message:send``, ``v1/message:stream``) take
a JSON-RPC body (``method: message/send`` or ``message/stream``). A task's routes
(``v1/tasks:get``, ``v1/tasks:cancel``) name it at ``params.contextId``.

* A message without a ``contextId`` starts a conversation: the gateway names it (a uuid4, as the
  upstream would) before choosing, so the next turn, which carries it, hashes to the same place.
* The agent card (``.well-known/agent-card.json``) has its ``url`` rewritten to the gateway's
  public URL (``doors.public_url``, else the request's own), so clients come back through it.
* A body that is no JSON object is answered here with JSON-RPC's parse error (AgentOS would
  answer 500); it never reaches an upstream.
* An upstream that fails the message gives A2A's own failure: a ``failed`` task (what AgentOS's
  A2A door answers for an exception), as the JSON answer or as the stream's last event.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.forwarding import Forwarder, new_uuid
from gateway.api.route_table import Match
from gateway.doors.http import json_object, outgoing_for, text_at
from gateway.doors.membership import DEFAULT_PREFIX, Door, DoorPath
from gateway.errors import UpstreamFailure
from gateway.pool import Upstream
from gateway.wire.ids import check_id

CARD_MAX_BYTES = 1024 * 1024
PARSE_ERROR = -32700


async def answer(request: Request, fwd: Forwarder, matched: Match, door: DoorPath, upstreams: List[Upstream]) -> Response:
    assert matched.route is not None
    template = matched.route.template
    if template.endswith("agent-card.json"):
        return await _card(request, fwd, matched, door, upstreams)
    body = await request.body()
    message = json_object(body)
    if message is None:
        error = {"code": PARSE_ERROR, "message": "Parse error: the body is not a JSON object"}
        return JSONResponse({"jsonrpc": "2.0", "id": None, "error": error}, status_code=400)
    made = False
    if template.endswith(("v1/tasks:get", "v1/tasks:cancel")):
        context_id = text_at(message, "params", "contextId")
    else:
        context_id = text_at(message, "params", "message", "contextId")
        if context_id is None and isinstance(text_at(message, "params", "message", "messageId"), str):
            context_id, made = new_uuid(), True  # a new conversation, named here so its next turn comes back
            message["params"]["message"]["contextId"] = context_id
            body = json.dumps(message, separators=(",", ":")).encode()
    check_id("contextId", context_id)
    stream = template.endswith("v1/message:stream")
    outgoing = outgoing_for(request, matched, door, body, stream=stream)
    failed = _Failed(message.get("id"), context_id)
    return await fwd.forward(
        request, fwd.choose(upstreams, context_id, session_is_new=made), outgoing,
        with_affinity=context_id is not None, stream_error=failed.frame, failure_answer=failed.answer,
    )  # fmt: skip


class _Failed:
    """A2A's ``failed`` task for one request (its JSON-RPC id, its context)."""

    def __init__(self, request_id: Any, context_id: Optional[str]) -> None:
        self.request_id = request_id if isinstance(request_id, (str, int)) else None
        self.context_id = context_id or new_uuid()

    def _status(self, message: str) -> Dict[str, Any]:
        text = {"kind": "text", "text": f"Error: {message}"}
        note = {"kind": "message", "messageId": new_uuid(), "role": "agent", "parts": [text], "contextId": self.context_id}
        return {"state": "failed", "message": note}

    def answer(self, failure: UpstreamFailure) -> Response:
        task = {"id": new_uuid(), "contextId": self.context_id, "kind": "task", "status": self._status(str(failure))}
        task["history"] = [task["status"]["message"]]
        return JSONResponse({"jsonrpc": "2.0", "id": self.request_id, "result": task}, status_code=failure.status_code)

    def frame(self, message: str) -> bytes:
        update = {
            "contextId": self.context_id, "final": True, "kind": "status-update",
            "status": self._status(message), "taskId": new_uuid(),
        }  # fmt: skip
        data = json.dumps({"id": self.request_id, "jsonrpc": "2.0", "result": update}, separators=(",", ":"))
        return f"event: TaskStatusUpdateEvent\ndata: {data}\n\n".encode()


async def _card(request: Request, fwd: Forwarder, matched: Match, door: DoorPath, upstreams: List[Upstream]) -> Response:
    """The upstream's agent card, its ``url`` on the gateway's public URL."""
    outgoing = outgoing_for(request, matched, door, None, stream=False)
    fetched = await fwd.fetch(request, fwd.choose(upstreams, None), outgoing, max_bytes=CARD_MAX_BYTES)
    card = json_object(fetched.body) if fetched.status == 200 else None
    if card is None or not isinstance(card.get("url"), str):
        return Response(fetched.body, status_code=fetched.status, headers=fetched.headers)
    public = fwd.settings.doors.public_url or str(request.base_url)
    parts = urlsplit(card["url"])
    path, default = parts.path, DEFAULT_PREFIX[Door.A2A]
    if door.prefix != default and path.startswith(default + "/"):  # agno writes its default prefix, whatever the mount
        path = door.prefix + path[len(default):]
    card["url"] = public.rstrip("/") + path + (f"?{parts.query}" if parts.query else "")
    headers = {k: v for k, v in fetched.headers.items() if k.lower() not in ("content-length", "content-type")}
    return JSONResponse(card, headers=headers)

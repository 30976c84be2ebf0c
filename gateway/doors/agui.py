"""AG-UI (``POST <prefix>/agui``, ``GET <prefix>/status``): a thread stays on its upstream.

AgentOS's AG-UI door runs its agent with the body's ``threadId`` as the agno session id, so the
thread is the conversation: it is hashed as a run's session is (``affinity.mode``). The answer
is an SSE stream of AG-UI events, relayed as it comes (backpressure, keepalives, the client's
disconnect closes the upstream request, which ends the run there). A stream cut short ends with
AG-UI's own ``RUN_ERROR`` event, which AG-UI clients show as the run's failure.

A body that is no JSON object, or has no ``threadId``, goes to any upstream serving the door
(by power of two choices), which answers it as AgentOS does (422 naming the field).
"""

from __future__ import annotations

import json
from typing import List

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.forwarding import Forwarder
from gateway.api.route_table import Match
from gateway.doors.http import json_object, outgoing_for, text_at
from gateway.doors.membership import DoorPath
from gateway.pool import Upstream
from gateway.wire.ids import check_id


def run_error_frame(message: str) -> bytes:
    """AG-UI's ``RUN_ERROR`` event, as AgentOS's AG-UI door writes its events (``data:`` only)."""
    event = {"type": "RUN_ERROR", "message": message, "code": "upstream_failed"}
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


async def answer(request: Request, fwd: Forwarder, matched: Match, door: DoorPath, upstreams: List[Upstream]) -> Response:
    if request.method == "GET":  # /status: any upstream of the door
        outgoing = outgoing_for(request, matched, door, None, stream=False)
        return await fwd.forward(request, fwd.choose(upstreams, None), outgoing, with_affinity=False)
    body = await request.body()
    thread_id = text_at(json_object(body), "threadId")
    check_id("threadId", thread_id)
    outgoing = outgoing_for(request, matched, door, body, stream=True)
    choice = fwd.choose(upstreams, thread_id)
    return await fwd.forward(request, choice, outgoing, with_affinity=thread_id is not None, stream_error=run_error_frame)

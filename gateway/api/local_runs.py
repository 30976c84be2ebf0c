"""Runs of in-process components, for the v1 and the AgentOS-native run routes.

Each request runs on a fresh copy of the component through ``AgentOSRunner``, so the library and
the service cannot drift. Streams are AgentOS's exact frames; a run that fails in the model stays
a 200 with ``status: ERROR`` or an in-band error event, as AgentOS answers. A run whose ``arun``
itself raises answers as AgentOS does too: one in-band error event ending a stream; without a
stream, 400 for agno's ``InputCheckError``, else the app's error handler (500, the type only).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, AsyncIterator, Dict, Optional
from uuid import uuid4

from agno.exceptions import InputCheckError
from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gateway import metrics
from gateway.api.errors import error_response
from gateway.errors import BadRequest, ClientGone, Unprocessable
from gateway.disconnect import until_disconnected
from gateway.api.schemas import RunRequest
from gateway.local import LocalEntity
from gateway.runner import AgentOSRunner
from gateway.wire.encoding import MEDIA_FORM_FIELDS, media_from_dicts
from gateway.wire.kinds import EntityKind
from gateway.wire.sse import TERMINAL_EVENTS, format_frame

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def run_params(body: RunRequest) -> Dict[str, Any]:
    """The ``arun`` keyword arguments of a v1 request: media rebuilt, a session id and a run id
    always set (known before the run starts, for logs, routing and cancel)."""
    params = body.model_dump(exclude_none=True, exclude={"input", "stream"})
    for field in MEDIA_FORM_FIELDS:
        if field in params:
            try:
                params[field] = media_from_dicts(field, params[field])
            except ValueError as error:
                raise Unprocessable(str(error)) from None
    # An empty session id means "new session", as AgentOS reads it: never one shared "" session.
    if not params.get("session_id"):
        params["session_id"] = str(uuid4())
    if not params.get("run_id"):
        params["run_id"] = str(uuid4())
    return params


async def assert_session_owned(entity: LocalEntity, params: Dict[str, Any]) -> None:
    """404 ``Session not found`` when the session belongs to another user (or the request names
    no user for an owned session): AgentOS's own check, so no caller reads another's history."""
    from agno.os.middleware.user_scope import assert_session_writable

    effective_user_id = params.get("user_id") or getattr(entity.component, "user_id", None)
    await assert_session_writable(
        getattr(entity.component, "db", None),
        params["session_id"],
        effective_user_id,
        session_type=entity.kind.spec.session_type,
    )


async def stream_frames(
    kind: EntityKind, entity_id: str, runner: AgentOSRunner, input: Any, params: Dict[str, Any]
) -> AsyncIterator[str]:
    """The run's events as SSE frames. Closing this generator (the client left) closes agno's
    run stream, which agno records as a cancelled run."""
    noun = kind.name.lower()
    terminal: Optional[str] = None
    frames = 0
    finished = False  # the run's events all came (a stream without every event has no terminal one)
    metrics.ACTIVE_STREAMS.inc()
    try:
        async with contextlib.aclosing(runner.arun(input, stream=True, **params)) as events:
            async for event in events:
                yield format_frame(event)
                frames += 1
                if terminal is None and event.event in TERMINAL_EVENTS:
                    terminal = event.event
        finished = True
    except Exception as error:  # a failure outside the model: still reported in-band, as AgentOS does
        if terminal is not None:  # the run already ended; a second ending would contradict it
            logger.exception("local %s run %s failed after it ended", noun, entity_id)
            return
        logger.exception("local %s run %s failed", noun, entity_id)
        event = kind.error_event(
            error, entity_id=entity_id, run_id=params.get("run_id"), session_id=params.get("session_id")
        )
        terminal = event.event
        frames += 1
        yield format_frame(event)
    finally:  # also when the client left (the generator is closed): a cancelled run
        metrics.ACTIVE_STREAMS.dec()
        metrics.labelled(metrics.STREAM_EVENTS, noun).inc(frames)
        outcome = metrics.OUTCOME_BY_EVENT.get(terminal) if terminal else None if finished else "CANCELLED"
        metrics.record_run(noun, entity_id, outcome)


async def run_locally(
    request: Request, kind: EntityKind, entity: LocalEntity, input: Any, params: Dict[str, Any], *, stream: bool
) -> Response:
    """One run of a local component, answered as AgentOS answers it."""
    await assert_session_owned(entity, params)
    runner = AgentOSRunner(**{kind.name.lower(): entity.fresh()})
    if stream:
        params.setdefault("stream_events", True)  # AgentOS's run routes default to every event
        return StreamingResponse(
            stream_frames(kind, entity.id, runner, input, params), media_type="text/event-stream", headers=SSE_HEADERS
        )
    try:
        output = await until_disconnected(request, runner.arun(input, stream=False, **params))
    except ClientGone:
        metrics.record_run(kind.name.lower(), entity.id, "CANCELLED")
        return error_response(ClientGone())
    except InputCheckError as error:  # a refused input is the caller's error, as AgentOS answers
        raise BadRequest(str(error)) from None
    status = getattr(output.status, "value", output.status)
    metrics.record_run(kind.name.lower(), entity.id, str(status) if status else None)
    return JSONResponse(jsonable_encoder(output.to_dict()))


async def cancel_locally(entity: LocalEntity, run_id: str) -> Dict[str, Any]:
    await AgentOSRunner(**{entity.kind.name.lower(): entity.component}).acancel(run_id)
    return {}  # AgentOS answers {} whether or not the run existed

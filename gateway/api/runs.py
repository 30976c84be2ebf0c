"""The run routes, local or remote alike:

* ``POST /v1/{kind}/{id}/run``: JSON in; for an upstream it becomes the AgentOS form.
* AgentOS's own ``POST /{kind}/{id}/runs`` (form or multipart), ``.../runs/{run_id}/cancel``,
  ``.../runs/{run_id}/continue``, and the run read-back routes, passed through to upstreams.
  A run and a continue hold a ``Limiter`` slot until their answer has been sent.

A run for an upstream is prepared by ``api/run_prep.py``, as the fast path prepares it.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple
from uuid import uuid4

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import FormData, UploadFile

from gateway.api import run_prep
from gateway.api.forwarding import Forwarder, RunInfo, query, segment
from gateway.api.limits import Limiter
from gateway.api.local_runs import cancel_locally, run_locally, run_params
from gateway.api.ownership import RunAccess, check_run
from gateway.api.schemas import EXECUTION_KEYWORDS, RunRequest
from gateway.errors import BadRequest, NoUpstream, NotFound, NotImplementedHere, Unprocessable
from gateway.local import LocalEntity
from gateway.sender import Outgoing
from gateway.routing import Directory, Remote, Target
from gateway.wire import form as wire_form
from gateway.wire.ids import check_id
from gateway.wire.kinds import ENTITY_ID_PATTERN, EntityKind, is_valid_entity_id

RETRY_AFTER_UNKNOWN_S = 5
# AgentOS's answer to a run request that is not a form (it reads the form field ``message``).
MESSAGE_MISSING = {"detail": [{"type": "missing", "loc": ["body", "message"], "msg": "Field required", "input": None}]}
SESSION_ID_MISSING = {"detail": [{"type": "missing", "loc": ["body", "session_id"], "msg": "Field required", "input": None}]}


LOCAL_BACKGROUND = (
    "background: accepted for upstream entities only; a local run is served within its request, and a "
    "background run would need a task that outlives the request (and a buffer to resume it from)"
)


def resolve(directory: Directory, kind: EntityKind, entity_id: str, request: Optional[Request] = None) -> Target:
    """Who serves the id; 400 for a malformed id, 404 (AgentOS's text) for an unknown one.
    A served id is noted on the request, for its metrics and log line."""
    if not is_valid_entity_id(entity_id):
        raise BadRequest(f"Invalid id: must match {ENTITY_ID_PATTERN.pattern}")
    target = directory.resolve(kind, entity_id)
    if target is None:
        silent = directory.unknown_membership()
        if silent:
            raise NoUpstream(f"No upstream available: {', '.join(silent)} not reachable yet", RETRY_AFTER_UNKNOWN_S)
        raise NotFound(kind.spec.not_found)
    if request is not None:
        request.state.entity = entity_id
    return target


def _forwarder(forwarder: Optional[Forwarder]) -> Forwarder:
    if forwarder is None:  # a Remote target exists only with a pool
        raise RuntimeError("no upstream pool configured")
    return forwarder


# -- the AgentOS form, read as AgentOS reads it ----------------------------------------------------


def _agentos_run_fields(
    message: str, stream: bool, session_id: Optional[str], user_id: Optional[str], files: Any,
    files_metadata: Any, version: Any, background: Any, factory_input: Any, monitor: Any,
) -> None:  # fmt: skip
    """The fields AgentOS's run routes declare; every other form field is a run keyword."""


async def _form(request: Request) -> Tuple[FormData, str]:
    """The form of a run request: urlencoded by ``gateway.wire.form`` (as the fast path reads it),
    multipart by Starlette (as AgentOS reads it)."""
    content_type = request.headers.get("content-type", "")
    media_type = wire_form.media_type(content_type)
    if media_type not in (wire_form.URLENCODED, wire_form.MULTIPART):
        raise Unprocessable(MESSAGE_MISSING["detail"])
    body = await request.body()  # kept: the form is parsed from it, and it is forwarded as it came
    if media_type == wire_form.URLENCODED:
        return FormData(wire_form.parse_form(body)), content_type
    return await request.form(), content_type


def _check_ids(session_id: Optional[str], run_id: Optional[str]) -> None:
    check_id("session_id", session_id)
    check_id("run_id", run_id)


# Form fields AgentOS decodes as a JSON object, but passes to ``arun`` as they are when empty, and
# decoded when they are JSON of another type: agno then fails with a 500 (AttributeError), which
# would also count against the upstream. Refused here, as AgentOS refuses such a ``metadata``.
JSON_OBJECT_FIELDS = ("session_state", "dependencies")


def _check_json_object_fields(form: FormData) -> None:
    for name in JSON_OBJECT_FIELDS:
        for value in form.getlist(name):
            if isinstance(value, str) and value:
                try:
                    decoded = json.loads(value)
                except ValueError:
                    continue  # not JSON at all: AgentOS drops the field (with a warning)
                if decoded is None or isinstance(decoded, dict):
                    continue
            raise BadRequest(f"Invalid {name} parameter: expected a JSON object")


def _form_bool(form: FormData, name: str, default: bool) -> bool:
    value = form.get(name)
    read = wire_form.read_bool(value, default) if value is None or isinstance(value, str) else None
    if read is None:
        raise Unprocessable(f"{name}: not a boolean")
    return read


async def _local_form_run(request: Request, entity: LocalEntity, form: FormData) -> Response:
    from agno.os.utils import get_request_kwargs

    message = form.get("message")
    if not isinstance(message, str):
        raise Unprocessable(MESSAGE_MISSING["detail"])
    if any(isinstance(value, UploadFile) for _, value in form.multi_items()):
        raise Unprocessable("file uploads are accepted for upstream entities only")
    kwargs = await get_request_kwargs(request, _agentos_run_fields)  # AgentOS's own decoding
    if _form_bool(form, "background", False):
        raise Unprocessable(LOCAL_BACKGROUND)
    refused = sorted(EXECUTION_KEYWORDS & set(kwargs))
    if refused:
        raise Unprocessable(f"not accepted by this API: {', '.join(refused)}")
    params: Dict[str, Any] = {key: value for key, value in kwargs.items() if value is not None}
    params["session_id"] = form.get("session_id") or str(uuid4())
    params["run_id"] = params.get("run_id") or str(uuid4())
    if form.get("user_id"):
        params["user_id"] = form.get("user_id")
    return await run_locally(request, entity.kind, entity, message, params, stream=_form_bool(form, "stream", True))


# -- routes ----------------------------------------------------------------------------------------


def runs_router(directory: Directory, forwarder: Optional[Forwarder], limiter: Limiter) -> APIRouter:
    router = APIRouter()
    for kind in EntityKind:
        _add_kind_routes(router, kind, directory, forwarder, limiter)
    return router


def _add_kind_routes(
    router: APIRouter, kind: EntityKind, directory: Directory, forwarder: Optional[Forwarder], limiter: Limiter
) -> None:
    noun = kind.name.lower()

    async def v1_run(entity_id: str, body: RunRequest, request: Request) -> Response:
        target = resolve(directory, kind, entity_id, request)
        _check_ids(body.session_id, body.run_id)
        return await limiter.run(body.stream, lambda: _v1_run(entity_id, body, request, target))

    async def _v1_run(entity_id: str, body: RunRequest, request: Request, target: Target) -> Response:
        if isinstance(target, LocalEntity):
            if body.background:
                raise Unprocessable(LOCAL_BACKGROUND)
            return await run_locally(request, kind, target, body.input, run_params(body), stream=body.stream)
        return await run_prep.forward(_forwarder(forwarder), request, target.upstreams, run_prep.from_v1(kind, entity_id, body))

    async def native_run(entity_id: str, request: Request) -> Response:
        target = resolve(directory, kind, entity_id, request)
        form, content_type = await _form(request)
        _check_json_object_fields(form)
        _check_ids(_text(form.get("session_id")), _text(form.get("run_id")))
        stream = _form_bool(form, "stream", True)
        return await limiter.run(stream, lambda: _native_run(entity_id, request, target, form, content_type, stream))

    async def _native_run(
        entity_id: str, request: Request, target: Target, form: FormData, content_type: str, stream: bool
    ) -> Response:
        if isinstance(target, LocalEntity):
            return await _local_form_run(request, target, form)
        prepared = run_prep.from_form(
            kind, entity_id, await request.body(), content_type, session_id=_text(form.get("session_id")),
            run_id=_text(form.get("run_id")), stream=stream, background=run_prep.is_background(form.get("background")),
        )  # fmt: skip
        return await run_prep.forward(_forwarder(forwarder), request, target.upstreams, prepared)

    async def cancel_run(entity_id: str, run_id: str, request: Request) -> Response:
        target = resolve(directory, kind, entity_id, request)
        check_id("run_id", run_id)
        if isinstance(target, LocalEntity):
            return JSONResponse(await cancel_locally(target, run_id))
        fwd, session_id = _forwarder(forwarder), request.query_params.get("session_id")
        check_id("session_id", session_id)
        if not await check_run(fwd, request, RunAccess.CANCEL, kind, entity_id, run_id, target.upstreams, session_id):
            return JSONResponse({})  # AgentOS's answer to a run it does not have; nothing is sent
        status = await fwd.cancel(target.upstreams, kind, entity_id, run_id, request.url.query)
        if status == 200:
            return JSONResponse({})
        return JSONResponse({"detail": "No upstream took the cancel"}, status_code=502 if status == 502 else status)

    async def continue_run(entity_id: str, run_id: str, request: Request) -> Response:
        target = resolve(directory, kind, entity_id, request)
        if isinstance(target, LocalEntity):
            raise NotImplementedHere("continue is served for upstream entities only")
        check_id("run_id", run_id)
        form, content_type = await _form(request)
        _check_json_object_fields(form)  # an empty ``dependencies`` fails AgentOS's continue too
        fwd = _forwarder(forwarder)
        session_id = _text(form.get("session_id"))
        check_id("session_id", session_id)
        if session_id is None and kind is EntityKind.WORKFLOW:
            # AgentOS answers a workflow continue without one with a 500 ("No session_id
            # provided"), which would count against the upstream: the caller's error, said here.
            raise Unprocessable(SESSION_ID_MISSING["detail"])
        stream = _form_bool(form, "stream", True)
        outgoing = Outgoing(
            "POST",
            f"/{kind.path}/{segment(entity_id)}/runs/{segment(run_id)}/continue",
            body=await request.body(),
            expects_stream=stream,
        )
        run = RunInfo(kind, entity_id, run_id, session_id, background=run_prep.is_background(form.get("background")))
        # A continue runs the model again: a run slot (and a stream slot), as a run takes.
        return await limiter.run(stream, lambda: _continue_of_its_entity(fwd, request, target, outgoing, run))

    async def read_runs(entity_id: str, request: Request, run_id: Optional[str] = None) -> Response:
        target = resolve(directory, kind, entity_id, request)
        fwd = _forwarder(forwarder)
        session_id = request.query_params.get("session_id")
        _check_ids(session_id, run_id)
        if isinstance(target, LocalEntity):  # stored where the gateway's own runs store
            target = Remote(directory.local_data())
        if run_id is not None:
            await check_run(fwd, request, RunAccess.READ, kind, entity_id, run_id, target.upstreams, session_id)
        choice = _choice_for_run(fwd, target, run_id, session_id)
        path = f"/{kind.path}/{segment(entity_id)}/runs" + (f"/{segment(run_id)}" if run_id is not None else "")
        return await fwd.forward(request, choice, Outgoing("GET", path + query(request.url.query)), with_affinity=False)

    prefix = f"/{kind.path}/{{entity_id}}/runs"
    for path, endpoint, methods, summary, tags in (
        (f"/v1/{kind.path}/{{entity_id}}/run", v1_run, ["POST"], f"Run a {noun} (JSON)", ["v1"]),
        (prefix, native_run, ["POST"], f"Run a {noun} (AgentOS form)", ["AgentOS"]),
        (f"{prefix}/{{run_id}}/cancel", cancel_run, ["POST"], f"Cancel a {noun} run", ["AgentOS"]),
        (f"{prefix}/{{run_id}}/continue", continue_run, ["POST"], f"Continue a {noun} run", ["AgentOS"]),
        (prefix, read_runs, ["GET"], f"List a {noun}'s runs", ["AgentOS"]),
        (f"{prefix}/{{run_id}}", read_runs, ["GET"], f"Read a {noun} run", ["AgentOS"]),
    ):
        router.add_api_route(path, endpoint, methods=methods, summary=summary, tags=tags, name=f"{endpoint.__name__}_{noun}")


def _choice_for_run(fwd: Forwarder, target: Remote, run_id: Optional[str], session_id: Optional[str]):  # type: ignore[no-untyped-def]
    """Where an existing run lives: its recorded upstream, else its session's, else any."""
    owner = fwd.run_owners.owner(run_id) if run_id else None
    owned = [u for u in target.upstreams if u.name == owner]
    if owned and fwd.pool.is_usable(owned[0]):
        return fwd.choose(owned, None)
    return fwd.choose(target.upstreams, session_id)


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value else None


async def _continue_of_its_entity(fwd: Forwarder, request: Request, target: Remote, outgoing: Outgoing, run: RunInfo) -> Response:
    """A continue, forwarded when its run belongs to the path's entity (checked within the run
    slot, so its read-back is bounded by the run limit too)."""
    await check_run(fwd, request, RunAccess.ACT, run.kind, run.entity_id, run.run_id, target.upstreams, run.session_id)
    return await fwd.forward(request, _choice_for_run(fwd, target, run.run_id, run.session_id), outgoing, run=run)

"""The one place a ``GatewayError`` becomes an answer (``gateway/errors.py`` has the tree).

Routes raise; ``install`` makes FastAPI answer with ``error_response``. The raw ASGI parts ahead
of FastAPI (the fast run path, the body reader) call ``error_response`` themselves and send it;
the HTTP protocol (``gateway/http_protocol.py``) writes its bytes for answers made before any app.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from gateway.errors import ClientGone, GatewayError, UpstreamFailure


def error_response(error: GatewayError) -> Response:
    """``{"detail": ...}`` with the error's status and headers; an upstream's own answer when it
    is passed on; an empty 499 (logged only) when the client is gone."""
    if isinstance(error, ClientGone):
        return Response(status_code=error.status_code)
    if isinstance(error, UpstreamFailure) and error.answer is not None:
        status, content_type, body = error.answer
        return Response(body, status_code=status, headers={"Content-Type": content_type})
    headers = dict(error.headers)
    if error.close_connection:
        headers["Connection"] = "close"  # the server closes it once this answer is sent
    return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=headers)


async def _handle(request: Request, error: Exception) -> Response:
    assert isinstance(error, GatewayError)
    return error_response(error)


async def _client_disconnect(request: Request, error: Exception) -> Response:
    # Starlette's own "client gone" while a route reads a body. The body reader ahead raises
    # IncompleteBody first; this is the backstop: never a 500, and the route went no further.
    return error_response(ClientGone())


def install(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _handle)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)

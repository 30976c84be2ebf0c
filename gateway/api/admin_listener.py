"""The admin listener (Envoy's admin port): the Prometheus scrape and the ``/admin`` API on a port
of their own, so nothing of the gateway's own operations is on the port that faces clients, and
``GET /metrics`` there is AgentOS's.

``serve`` hands uvicorn two listening sockets, the public one and the admin one (``admin.port``,
``--admin-port``, or an inherited ``--admin-fd``), and one uvicorn server serves both. So
``--workers`` (each worker serves both sockets), the SIGTERM drain (both close together after
``drain_delay_s``), the lifespan (once per process, the public app's) and SIGHUP reload stay as
they were. ``AdminListener``, the outermost layer of the public app, sends each request that came
in on the admin port (``scope["server"]``: the address of the socket the connection was accepted
on) to the admin app; everything else, lifespan included, goes on to the public stack.

On the admin port: ``GET /metrics`` (Prometheus text, open as a scrape is: merged across workers,
``gateway/metrics.py``), ``/admin/...`` (behind ``admin_key``, ``api/admin.py``), and the admin
app's own ``/openapi.json`` and ``/docs``. Its requests get a request id, a metric and an access
log line like any other, with ``kind`` ``admin``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import __version__
from gateway.api.admin import admin_router
from gateway.api.errors import install as install_error_handlers
from gateway.api.observe import ObserveMiddleware
from gateway.metrics import scrape
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.api.services import Services


def admin_app(settings: Settings, services: "Services") -> FastAPI:
    """What the admin port serves: the scrape and the admin API."""
    app = FastAPI(
        title="agentos-gateway admin",
        version=__version__,
        description="The gateway's own operations: Prometheus metrics, upstream state, drain, reload, runtime.",
    )
    install_error_handlers(app)

    @app.get("/metrics", tags=["Metrics"], summary="Prometheus metrics of the gateway (every worker's)")
    async def metrics_endpoint() -> Response:
        body, content_type = scrape()
        return Response(body, media_type=content_type)

    app.include_router(admin_router(settings, services))
    app.add_middleware(
        ObserveMiddleware, access_log=settings.access_log, max_header_bytes=settings.limits.max_header_bytes,
        kind="admin",  # its requests apart from the public port's (whose GET /metrics is AgentOS's)
    )  # fmt: skip
    return app


class AdminListener:
    """Requests that came in on ``admin_port`` go to ``admin``; the rest to ``app``. With
    ``admin_port`` 0 (not known: an app not started by ``serve``) nothing goes to ``admin``."""

    def __init__(self, app: ASGIApp, admin: ASGIApp, admin_port: int) -> None:
        self.app = app
        self.admin = admin
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and came_to_admin_port(scope, self.admin_port):
            await self.admin(scope, receive, send)
            return
        await self.app(scope, receive, send)


def came_to_admin_port(scope: Scope, admin_port: int) -> bool:
    """Whether a connection was accepted on the admin port (never, with ``admin_port`` 0)."""
    server = scope.get("server")
    return bool(admin_port) and server is not None and server[1] == admin_port

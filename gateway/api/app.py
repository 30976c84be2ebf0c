"""The FastAPI application: ``create_app(settings)``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Dict, Optional

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import __version__
from gateway.api.body_reader import BodyLimits, BodyReaderMiddleware
from gateway.api.admin_listener import AdminListener, admin_app
from gateway.api.auth import AuthMiddleware
from gateway.api.errors import install as install_error_handlers
from gateway.api.fast_path import FastRunPath
from gateway.doors.websocket import WebSocketDoor
from gateway.api.services import Services
from gateway.api.observe import ObserveMiddleware, Observer
from gateway.api import passthrough
from gateway.api.catalog import catalog_router
from gateway.api.runs import runs_router
from gateway.doors.membership import door_path
from gateway.local import LocalRegistry
from gateway.api.forwarding import AFFINITY_HEADER, UPSTREAM_HEADER
from gateway.settings import ConfigError, Settings, load_settings

logger = logging.getLogger(__name__)
YOUNG_GC_THRESHOLD = 10_000


class GatewayApp(FastAPI):
    """The gateway's FastAPI app, with its run path (``api/fast_path.py``) ahead of the framework's
    stack: a run request for an upstream entity is answered there, everything else goes on to
    the stack (``stack``)."""

    run_path: Optional[FastRunPath] = None
    _below_auth: Optional[ASGIApp] = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.run_path is None:
            await super().__call__(scope, receive, send)
        else:
            scope["app"] = self  # as the framework sets it
            await self.run_path(scope, receive, send)

    async def stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)

    def below_auth(self) -> ASGIApp:
        """What the auth layer passes requests on to: the routes, with the layers below it. The
        run path sends there a run it took whose body the routes are to answer."""
        if self._below_auth is None:
            if self.middleware_stack is None:  # built on the first request, if no lifespan came first
                self.middleware_stack = self.build_middleware_stack()
            layer = self.middleware_stack
            while not isinstance(layer, AuthMiddleware):
                layer = layer.app  # type: ignore[attr-defined]
            self._below_auth = layer.app
        return self._below_auth


def create_worker_app() -> FastAPI:
    """The app of one ``serve --workers N`` worker: configuration from the environment."""
    from gateway.logs import configure_logging

    configure_logging()
    return create_app()


def create_app(
    settings: Optional[Settings] = None, *, registry: Optional[LocalRegistry] = None, config_path: Optional[str] = None
) -> FastAPI:
    """The gateway app for ``settings`` (default: the file/env configuration, see ``load_settings``).

    Raises ``ConfigError`` when a configured component cannot be loaded. Upstreams are probed
    once at startup, before the first request; with ``on_conflict: error`` an id served both
    locally and by an upstream then stops the startup.
    """
    settings = settings if settings is not None else load_settings(config_path)
    registry = registry if registry is not None else LocalRegistry.from_config(settings.local)
    services = Services.build(settings, registry, config_path)
    forwarder = services.forwarder
    instantiated_at = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        _reload_on_sighup(services)
        # Everything loaded so far (agno and its imports: a large heap) lives as long as the
        # process: kept out of the collector's full passes, which otherwise pause requests.
        gc.collect()
        gc.freeze()
        # The young generation's threshold (700 by default) sits just above what the requests in
        # flight hold at 16 connections, so their objects set off a collection every ~20 requests
        # (3,050 in 12 s, 0.3 s of CPU); above it, only what outlives requests does (12 in 12 s).
        gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
        try:
            conflicts = services.directory.conflicts() if settings.on_conflict == "error" else []
            if conflicts:
                raise ConfigError("\n".join(conflicts))
            yield
        finally:
            await services.close()

    app = GatewayApp(
        title="agentos-gateway",
        version=__version__,
        description="Runs agno agents, teams and workflows in-process or on AgentOS upstreams.",
        lifespan=lifespan,
        # The gateway keeps its own metrics, trace context and access log; FastAPI's OpenTelemetry
        # hooks would ask the (unconfigured) providers on every request: measured at ~6 % of a run's CPU.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # Outermost last: every answer, refusals included, gets a request id, a metric and a log line.
    # AgentOS's workflow WebSocket (/workflows/ws); every layer outside it passes WebSockets on.
    app.add_middleware(
        WebSocketDoor, directory=services.directory, forwarder=forwarder, limiter=services.limiter, keyring=services.keyring
    )
    app.add_middleware(AuthMiddleware, keyring=services.keyring, door_path=_door_path(services))
    origins = settings.allowed_origins()
    if origins:
        # As AgentOS sets it up (agno/os/utils.py, update_cors_middleware): any method and header,
        # credentials allowed, so agno's UIs work against the gateway as against an AgentOS. Inside
        # the body reader, outside auth: a preflight is answered without a key, and a 401 carries
        # the CORS headers the browser needs to show it. "*" exposes every header to requests
        # without credentials (as AgentOS); browsers read it literally for requests with them,
        # hence the gateway's own headers by name too (and MCP's session, which a browser client keeps).
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_credentials=True, allow_methods=["*"], allow_headers=["*"],
            expose_headers=["*", "x-request-id", UPSTREAM_HEADER, AFFINITY_HEADER, "mcp-session-id"],
        )  # fmt: skip
    body_limits = BodyLimits(max_bytes=settings.max_body_bytes, timeout_s=settings.limits.client_body_timeout_s)
    app.add_middleware(BodyReaderMiddleware, limits=body_limits)
    observer = Observer(access_log=settings.access_log)
    max_header_bytes = settings.limits.max_header_bytes
    app.add_middleware(ObserveMiddleware, observer=observer, max_header_bytes=max_header_bytes)
    # The very outermost: what came in on the admin port never reaches the public stack.
    app.add_middleware(AdminListener, admin=admin_app(settings, services), admin_port=settings.admin.port)
    # Run requests for upstream entities: taken whole ahead of the whole stack, calling its layers' work.
    app.run_path = FastRunPath(
        app.stack, routes=app.below_auth, directory=services.directory, forwarder=forwarder,
        limiter=services.limiter, observer=observer, keyring=services.keyring, body_limits=body_limits,
        max_header_bytes=max_header_bytes, cors=bool(origins), admin_port=settings.admin.port,
    )  # fmt: skip
    app.state.services = services
    install_error_handlers(app)


    @app.get("/health", tags=["Health"], summary="Liveness: the process answers")
    async def health() -> Dict[str, Any]:
        return {"status": "ok", "instantiated_at": instantiated_at}

    @app.get("/ready", tags=["Health"], summary="Readiness: 503 while nothing can serve or while shutting down")
    async def ready() -> JSONResponse:
        is_ready, status = services.ready()
        return JSONResponse({"status": status}, status_code=200 if is_ready else 503)

    app.include_router(runs_router(services.directory, forwarder, services.limiter))
    app.include_router(catalog_router(settings, registry, services.directory, forwarder, services.storage))
    # What none of the routes above matches: the rest of AgentOS, through the route table.
    passthrough.install(app, services.directory, forwarder, services.limiter, services.storage)
    return app


def _door_path(services: Services) -> Optional[Callable[[str], Optional[str]]]:
    """A path under a door the upstreams serve at another prefix: its path at agno's default."""
    forwarder = services.forwarder
    if forwarder is None:
        return None
    pool = forwarder.pool

    def canonical(path: str) -> Optional[str]:
        found = door_path(path, pool.served_doors())
        return found.canonical if found is not None else None

    return canonical


def _reload_on_sighup(services: Services) -> None:
    """SIGHUP re-reads the configuration (in the main thread's loop only: a test client's or a
    worker's loop has no signals to take)."""
    loop = asyncio.get_running_loop()

    def reload() -> None:
        async def run() -> None:
            try:
                await services.reload()
            except ConfigError as error:
                logger.error("reload refused, the running configuration stays:\n%s", error)

        asyncio.ensure_future(run())

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError, ValueError):
        logger.debug("no SIGHUP reload in this process")

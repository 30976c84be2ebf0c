"""The FastAPI application: ``create_app(settings)``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Tuple

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import __version__
from gateway.api.body_reader import BodyReaderMiddleware
from gateway.api.admin_listener import AdminListener, admin_app
from gateway.api.auth import AuthMiddleware
from gateway.api.errors import install as install_error_handlers
from gateway.api.fast_path import FastRunPath
from gateway.doors.websocket import WebSocketDoor
from gateway.api.services import Services
from gateway.api.observe import ObserveMiddleware
from gateway.api import passthrough
from gateway.api.catalog import catalog_router
from gateway.api.runs import runs_router
from gateway.doors.membership import door_path
from gateway.local import LocalRegistry
from gateway.api.forwarding import AFFINITY_HEADER, UPSTREAM_HEADER
from gateway.settings import ConfigError, Settings, load_settings

logger = logging.getLogger(__name__)


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
    # The gateway's own layers, outermost first: every answer, refusals included, gets a request
    # id, a metric and a log line. They sit outside FastAPI's own stack (app.front), so a forwarded
    # run (the fast path) never enters the framework.
    layers: List[Tuple[Any, Dict[str, Any]]] = [
        # What came in on the admin port never reaches the public stack.
        (AdminListener, {"admin": admin_app(settings, services), "admin_port": settings.admin.port}),
        (ObserveMiddleware, {"access_log": settings.access_log, "max_header_bytes": settings.limits.max_header_bytes}),
        (BodyReaderMiddleware, {"max_bytes": settings.max_body_bytes, "timeout_s": settings.limits.client_body_timeout_s}),
    ]
    origins = settings.allowed_origins()
    if origins:
        # As AgentOS sets it up (agno/os/utils.py, update_cors_middleware): any method and header,
        # credentials allowed, so agno's UIs work against the gateway as against an AgentOS. Inside
        # the body reader, outside auth: a preflight is answered without a key, and a 401 carries
        # the CORS headers the browser needs to show it. "*" exposes every header to requests
        # without credentials (as AgentOS); browsers read it literally for requests with them,
        # hence the gateway's own headers by name too (and MCP's session, which a browser client keeps).
        cors = {
            "allow_origins": origins, "allow_credentials": True, "allow_methods": ["*"], "allow_headers": ["*"],
            "expose_headers": ["*", "x-request-id", UPSTREAM_HEADER, AFFINITY_HEADER, "mcp-session-id"],
        }  # fmt: skip
        layers.append((CORSMiddleware, cors))
    layers += [
        (AuthMiddleware, {"keyring": services.keyring, "door_path": _door_path(services)}),
        (FastRunPath, {"directory": services.directory, "forwarder": forwarder, "limiter": services.limiter}),
        # AgentOS's workflow WebSocket (/workflows/ws); every layer outside it passes WebSockets on.
        (WebSocketDoor, {"directory": services.directory, "forwarder": forwarder, "limiter": services.limiter, "keyring": services.keyring}),
    ]
    app.wrap(layers)
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


class GatewayApp(FastAPI):
    """FastAPI with the gateway's own ASGI layers around it (``wrap``): uvicorn calls the layers,
    and the innermost calls FastAPI's stack (its error handling, exception handlers, router) for
    what the layers do not answer themselves. A forwarded run is answered by the fast path without
    entering the framework's five layers, each an await and a closure per request."""

    front: Optional[ASGIApp] = None

    def wrap(self, layers: List[Tuple[Any, Dict[str, Any]]]) -> None:
        app: ASGIApp = self._framework
        for layer, options in reversed(layers):
            app = layer(app, **options)
        self.front = app

    async def _framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        await FastAPI.__call__(self, scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.front
        if front is None:
            await FastAPI.__call__(self, scope, receive, send)
            return
        scope["app"] = self
        await front(scope, receive, send)


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

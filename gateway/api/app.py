"""The FastAPI application: ``create_app(settings)``."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Dict, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway import __version__
from gateway.api.body_limit import BodyLimitMiddleware
from gateway.api.local_runs import local_runs_router
from gateway.local import LocalRegistry
from gateway.settings import Settings, load_settings
from gateway.wire.kinds import EntityKind

logger = logging.getLogger(__name__)


def create_app(settings: Optional[Settings] = None, *, registry: Optional[LocalRegistry] = None) -> FastAPI:
    """The gateway app for ``settings`` (default: the file/env configuration, see ``load_settings``).

    Raises ``ConfigError`` when a configured component cannot be loaded.
    """
    settings = settings if settings is not None else load_settings()
    registry = registry if registry is not None else LocalRegistry.from_config(settings.local)
    instantiated_at = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")

    app = FastAPI(
        title="agentos-gateway",
        version=__version__,
        description="Runs agno agents, teams and workflows in-process or on AgentOS upstreams.",
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.state.settings = settings
    app.state.registry = registry

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        """AgentOS's answer to an unhandled error: an agno error carrying a 4xx status is the
        caller's and says so; anything else (or a status that is no error's) is a 500 naming only
        the type, since the message may carry internals (SQL, hosts); agno's ``error_id`` and
        ``error_type`` when the error has them."""
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        status_code = getattr(error, "status_code", 500)
        if not isinstance(status_code, int) or not 400 <= status_code < 600:
            status_code = 500
        detail = str(error) if status_code < 500 else f"Internal server error ({type(error).__name__})"
        body: Dict[str, Any] = {"detail": detail}
        error_id = getattr(error, "error_id", None)
        if error_id:
            body["error_id"] = error_id
            body["error_type"] = getattr(error, "error_type", None) or getattr(error, "type", None)
        return JSONResponse(body, status_code=status_code)

    @app.get("/health", tags=["Health"], summary="Liveness: the process answers")
    async def health() -> Dict[str, Any]:
        return {"status": "ok", "instantiated_at": instantiated_at}

    @app.get("/config", tags=["AgentOS"], summary="What this gateway serves, in AgentOS's shape")
    async def config() -> Dict[str, Any]:
        from agno.os.schema import ConfigResponse

        listing = {kind.path: registry.summaries(kind) for kind in EntityKind}
        entries = [entry for entries in listing.values() for entry in entries]
        models = {
            (entry["model"]["id"], entry["model"].get("provider"))
            for entry in entries
            if isinstance(entry.get("model"), dict) and entry["model"].get("id")
        }
        # Validated by agno's own schema: what AgentOSClient.get_config() parses.
        response = ConfigResponse(
            os_id=settings.gateway_id,
            available_models=[{"id": model, "provider": provider} for model, provider in sorted(models)],
            databases=sorted({entry["db_id"] for entry in entries if entry.get("db_id")}),
            interfaces=[],
            **listing,
        )
        return response.model_dump(exclude_none=True)

    app.include_router(local_runs_router(registry))
    return app

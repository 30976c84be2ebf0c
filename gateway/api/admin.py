"""The admin API: what each upstream is doing, and drain. Behind its own key (``admin_key``),
never the gateway's API keys; with no key configured it is off."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any, Dict, List

from fastapi import APIRouter, Depends, HTTPException, Request

from gateway.pool import Pool, Upstream
from gateway.settings import ConfigError, Settings
from gateway.wire.kinds import EntityKind

if TYPE_CHECKING:
    from gateway.api.services import Services


def _admin_guard(settings: Settings):  # type: ignore[no-untyped-def]
    expected = settings.admin_key.encode() if settings.admin_key else None

    async def guard(request: Request) -> None:
        if expected is None:
            raise HTTPException(status_code=403, detail="The admin API is off: set admin_key to use it")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected):
            raise HTTPException(status_code=401, detail="Invalid admin key", headers={"WWW-Authenticate": "Bearer"})

    return guard


def describe(pool: Pool, upstream: Upstream) -> Dict[str, Any]:
    health = upstream.health
    now = pool.clock()
    return {
        "name": upstream.name,
        "url": upstream.base_url,
        "weight": upstream.config.weight,
        "state": health.active.value,
        "usable": health.is_usable(now),
        "ejected_for_s": round(health.ejected_until - now, 3) if health.is_ejected(now) else None,
        "ejections": health.ejections,
        "draining": health.draining,
        "in_flight": upstream.in_flight,
        "instantiated_at": upstream.instantiated_at,
        "entities": {kind.path: sorted(upstream.members.get(kind, ())) for kind in EntityKind},
    }


def admin_router(settings: Settings, services: "Services") -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["Admin"], dependencies=[Depends(_admin_guard(settings))])
    pool = services.pool

    def named(name: str) -> Upstream:
        upstream = pool.upstreams.get(name) if pool is not None else None
        if upstream is None:
            raise HTTPException(status_code=404, detail=f"No upstream named {name!r}")
        return upstream

    @router.get("/upstreams", summary="Every upstream: health, ejection, load, what it serves")
    async def upstreams() -> List[Dict[str, Any]]:
        return [describe(pool, upstream) for upstream in pool.upstreams.values()] if pool is not None else []

    @router.post("/upstreams/{name}/drain", summary="Take no new work; what runs there finishes")
    async def drain(name: str) -> Dict[str, Any]:
        upstream = named(name)
        upstream.health.draining = True
        return describe(pool, upstream)  # type: ignore[arg-type]

    @router.post("/upstreams/{name}/undrain", summary="Take new work again")
    async def undrain(name: str) -> Dict[str, Any]:
        upstream = named(name)
        upstream.health.draining = False
        return describe(pool, upstream)  # type: ignore[arg-type]

    @router.post("/reload", summary="Read the configuration file again and apply it (as SIGHUP)")
    async def reload() -> Dict[str, Any]:
        try:
            names = await services.reload()
        except ConfigError as error:
            raise HTTPException(
                status_code=400, detail=f"Reload refused, the running configuration stays: {error}"
            ) from None
        return {"reloaded": True, "upstreams": names}

    return router

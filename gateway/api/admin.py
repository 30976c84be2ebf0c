"""The admin API: what each upstream is doing, drain, reload, and the process's own runtime
figures. Behind its own key (``admin_key``), never the gateway's API keys; with no key configured
it is off."""

from __future__ import annotations

import asyncio
import hmac
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import aiohttp

from fastapi import APIRouter, Depends, Request

from gateway.doors.membership import Door
from gateway.errors import BadRequest, ConfigError, Forbidden, NotFound, Unauthorized
from gateway.pool import Pool, Upstream
from gateway.settings import Settings
from gateway.wire.kinds import EntityKind

if TYPE_CHECKING:
    from gateway.api.services import Services


def _admin_guard(settings: Settings):  # type: ignore[no-untyped-def]
    expected = settings.admin_key.encode() if settings.admin_key else None

    async def guard(request: Request) -> None:
        if expected is None:
            raise Forbidden("The admin API is off: set admin_key to use it")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected):
            raise Unauthorized("Invalid admin key")

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
        "consecutive_failures": health.consecutive_failures,
        "probes": upstream.probes,
        "draining": health.draining,
        "in_flight": upstream.in_flight,
        "instantiated_at": upstream.instantiated_at,
        "entities": {kind.path: sorted(upstream.members.get(kind, ())) for kind in EntityKind},
        "doors": [{"door": door.value, "prefix": prefix} for door, prefix in sorted(upstream.doors, key=_door_order)],
    }


def _door_order(served: Tuple[Door, str]) -> Tuple[str, str]:
    return served[0].value, served[1]


def _open_fds() -> Optional[int]:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no procfs (not Linux)
        return None


def _rss_bytes() -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def connector_counts(session: Optional[aiohttp.ClientSession]) -> Dict[str, int]:
    """Connections of one upstream's pool: ``in_use`` (handed out, or being opened) and ``idle``
    (kept alive, still connected). aiohttp's TCPConnector has no public count: its ``_acquired``
    set and ``_conns`` deques (aiohttp 3.9 to 3.14) are read, and absent ones count as none."""
    if session is None or session.closed:
        return {"in_use": 0, "idle": 0}
    connector = session.connector
    in_use = len(getattr(connector, "_acquired", ()))
    pools = getattr(connector, "_conns", {})
    idle = sum(1 for entries in list(pools.values()) for proto, _ in list(entries) if proto.is_connected())
    return {"in_use": in_use, "idle": idle}


def admin_router(settings: Settings, services: "Services") -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["Admin"], dependencies=[Depends(_admin_guard(settings))])
    pool = services.pool

    def named(name: str) -> Upstream:
        upstream = pool.upstreams.get(name) if pool is not None else None
        if upstream is None:
            raise NotFound(f"No upstream named {name!r}")
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

    @router.get("/runtime", summary="This process: asyncio tasks, open files, memory, upstream connections")
    async def runtime() -> Dict[str, Any]:
        """For soak tests and leak hunts. ``upstream_connections`` counts each upstream pool's
        connections in use plus idle ones; ``tasks`` includes the task answering this request."""
        counts = {name: connector_counts(u.session) for name, u in (pool.upstreams.items() if pool is not None else ())}
        return {
            "pid": os.getpid(),
            "tasks": len(asyncio.all_tasks()),
            "open_fds": _open_fds(),
            "rss_bytes": _rss_bytes(),
            "upstream_connections": {name: c["in_use"] + c["idle"] for name, c in counts.items()},
            "upstream_connections_in_use": {name: c["in_use"] for name, c in counts.items()},
            # run id -> upstream, kept for cancels (bounded; entries expire after run_s + 60 s)
            "remembered_runs": len(services.forwarder.run_owners) if services.forwarder is not None else 0,
        }

    @router.post("/reload", summary="Read the configuration file again and apply it (as SIGHUP)")
    async def reload() -> Dict[str, Any]:
        try:
            names = await services.reload()
        except ConfigError as error:
            raise BadRequest(f"Reload refused, the running configuration stays: {error}") from None
        return {"reloaded": True, "upstreams": names}

    return router

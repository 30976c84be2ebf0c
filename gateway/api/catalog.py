"""What the gateway serves, in AgentOS's shapes: ``GET /config`` (local entities plus every
upstream's, merged), ``GET /{agents|teams|workflows}`` and ``GET /{kind}/{id}``.

Upstream catalogs come from the pool's probes (``GET /config`` after each good probe), so
``/config`` costs no upstream request. Listings ask every usable upstream at once.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any, Callable, Dict, List, Optional

import aiohttp
from fastapi import APIRouter, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response

from gateway.api.database_ids import DatabaseIds
from gateway.api.forwarding import Forwarder, query, segment
from gateway.api.permissions import visible_only
from gateway.api.storage import StorageRouter
from gateway.api.runs import resolve
from gateway.local import LocalEntity, LocalRegistry
from gateway.pool import Upstream
from gateway.sender import Outgoing
from gateway.routing import Directory
from gateway.settings import Settings
from gateway.wire.kinds import EntityKind

logger = logging.getLogger(__name__)

LISTING_TIMEOUT_S = 10.0
# GET /config keys that hold {"dbs": [...]} per domain.
_DOMAIN_KEYS = ("session", "metrics", "memory", "learning", "evals", "traces", "knowledge")
# GET /config keys the gateway answers for itself: its own id, the entities by the directory,
# and the interfaces (the doors its upstreams serve, each once).
_OWN_KEYS = frozenset({"os_id", "interfaces", *(kind.path for kind in EntityKind)})


def local_config(settings: Settings, registry: LocalRegistry) -> Dict[str, Any]:
    """The local part of ``GET /config``, built and validated by agno's own ``ConfigResponse``."""
    from agno.os.schema import ConfigResponse

    listing = {kind.path: registry.summaries(kind) for kind in EntityKind}
    entries = [entry for entries in listing.values() for entry in entries]
    models = {
        (entry["model"]["id"], entry["model"].get("provider"))
        for entry in entries
        if isinstance(entry.get("model"), dict) and entry["model"].get("id")
    }
    response = ConfigResponse(
        os_id=settings.gateway_id,
        available_models=[{"id": model, "provider": provider} for model, provider in sorted(models)],
        databases=sorted({entry["db_id"] for entry in entries if entry.get("db_id")}),
        interfaces=[],
        **listing,
    )
    return response.model_dump(exclude_none=True)


def merged_config(
    settings: Settings, registry: LocalRegistry, directory: Directory, upstreams: List[Upstream]
) -> Dict[str, Any]:
    """Local entities first, then each upstream's; each id once, from the side the directory
    routes it to. Models, databases and each domain's lists (its ``dbs``, by id) are unions; a
    section the gateway has no part of (``queue``, ``filesystem``, ...) is the first upstream's."""
    config = local_config(settings, registry)
    for kind in EntityKind:
        config[kind.path] = [
            entry for entry in config.get(kind.path, []) if isinstance(directory.resolve(kind, entry["id"]), LocalEntity)
        ]
    for upstream in upstreams:
        catalog = upstream.catalog or {}
        # The local components' AgentOS lists the local entities, already above: its databases only.
        for kind in EntityKind if not upstream.in_process else ():
            present = {entry["id"] for entry in config[kind.path]}
            for entry in catalog.get(kind.path) or []:
                entity_id = entry.get("id") if isinstance(entry, dict) else None
                if not isinstance(entity_id, str) or entity_id in present:
                    continue
                if not isinstance(directory.resolve(kind, entity_id), LocalEntity):
                    config[kind.path].append(entry)
                    present.add(entity_id)
        _union(config, "available_models", catalog.get("available_models"), key=lambda m: (m.get("id"), m.get("provider")))
        _union(config, "databases", catalog.get("databases"), key=lambda db: db)
        # The doors the gateway serves (gateway/doors/): each upstream's interfaces, once each.
        _union(config, "interfaces", catalog.get("interfaces"), key=_interface_key)
        for key, value in catalog.items():
            if key in _OWN_KEYS or key in ("available_models", "databases"):
                continue
            if key not in config:  # a section the gateway has no part of: the first upstream's
                config[key] = copy.deepcopy(value)
            elif isinstance(value, dict) and isinstance(config[key], dict):
                for field, items in value.items():  # a domain: its lists are unions (dbs by id)
                    if isinstance(items, list):
                        _union(config[key], field, items, key=_db_key)
    return config


def _interface_key(interface: Any) -> Any:
    if isinstance(interface, dict):
        return interface.get("type"), interface.get("route")
    return json.dumps(interface, sort_keys=True, default=str)


def _db_key(db: Any) -> Any:
    if isinstance(db, dict):
        return db["db_id"] if "db_id" in db else json.dumps(db, sort_keys=True, default=str)
    return db


def _union(target: Dict[str, Any], field: str, items: Any, *, key: Callable[[Any], Any]) -> None:
    if not isinstance(items, list):
        return
    existing = target.setdefault(field, [])
    seen = {key(item) for item in existing}
    for item in items:
        if key(item) not in seen:
            existing.append(item)
            seen.add(key(item))


async def local_detail(entity: LocalEntity) -> Dict[str, Any]:
    """``GET /{kind}/{id}`` of a local component, by agno's own response models."""
    from agno.os.routers.agents.schema import AgentResponse
    from agno.os.routers.teams.schema import TeamResponse
    from agno.os.routers.workflows.schema import WorkflowResponse

    build = {
        EntityKind.AGENT: AgentResponse.from_agent,
        EntityKind.TEAM: TeamResponse.from_team,
        EntityKind.WORKFLOW: WorkflowResponse.from_workflow,
    }[entity.kind]
    response = await build(entity.component)  # type: ignore[operator]
    return jsonable_encoder(response.model_dump(exclude_none=True))


async def _listing(upstream: Upstream, kind: EntityKind) -> List[Dict[str, Any]]:
    try:
        async with asyncio.timeout(LISTING_TIMEOUT_S):
            async with upstream.client().get(f"{upstream.base_url}/{kind.path}", headers=upstream.auth_headers) as answer:
                answer.raise_for_status()
                items = await answer.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        logger.warning("upstream %s: GET /%s failed: %s", upstream.name, kind.path, error)
        return []
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def catalog_router(
    settings: Settings, registry: LocalRegistry, directory: Directory, forwarder: Optional[Forwarder],
    storage: Optional[StorageRouter] = None,
) -> APIRouter:  # fmt: skip
    router = APIRouter(tags=["AgentOS"])
    if storage is None and forwarder is not None:
        storage = StorageRouter(forwarder)

    def ids() -> DatabaseIds:
        """Database ids as the client sees them: one per entity (``api/database_ids.py``)."""
        return storage.database_ids() if storage is not None else DatabaseIds()

    def usable_upstreams() -> List[Upstream]:
        if forwarder is None:
            return []
        pool = forwarder.pool
        return [u for u in pool.upstreams.values() if pool.is_usable(u) and not u.in_process]  # local: above

    @router.get("/config", summary="What this gateway serves, in AgentOS's shape (local and upstreams)")
    async def config(request: Request) -> Dict[str, Any]:
        upstreams = list(forwarder.pool.upstreams.values()) if forwarder is not None else []
        config = ids().show_config(merged_config(settings, directory.registry, directory, upstreams), _DOMAIN_KEYS)
        for kind in EntityKind:  # the roster a key may read, as AgentOS filters it
            config[kind.path] = visible_only(request.state, kind.path, config[kind.path])
        return config

    for kind in EntityKind:
        _add_listing_routes(router, kind, directory, forwarder, usable_upstreams, ids)
    return router


def _add_listing_routes(router, kind, directory, forwarder, usable_upstreams, ids) -> None:  # type: ignore[no-untyped-def]
    async def listing(request: Request) -> List[Dict[str, Any]]:
        registry = directory.registry
        items = [await local_detail(entity) for entity in (registry.get(kind, i) for i in registry.ids(kind)) if entity]
        remote_lists = await asyncio.gather(*(_listing(upstream, kind) for upstream in usable_upstreams()))
        seen = {item["id"] for item in items}
        for remote in remote_lists:
            for item in remote:
                target = directory.resolve(kind, str(item.get("id")))
                if item.get("id") not in seen and not isinstance(target, LocalEntity):
                    items.append(ids().show_entity(item))
                    seen.add(item.get("id"))
        return visible_only(request.state, kind.path, items)

    async def detail(entity_id: str, request: Request) -> Response:
        target = resolve(directory, kind, entity_id)
        if isinstance(target, LocalEntity):
            return JSONResponse(await local_detail(target))
        assert forwarder is not None
        choice = forwarder.choose(target.upstreams, None)
        path = f"/{kind.path}/{segment(entity_id)}" + query(request.url.query)
        answer = await forwarder.forward(request, choice, Outgoing("GET", path), with_affinity=False)
        shown = ids()
        if answer.status_code != 200 or not shown.shown:
            return answer
        try:
            detail = json.loads(answer.body)
        except ValueError:
            return answer
        headers = {name: value for name, value in answer.headers.items() if name != "content-length"}
        return Response(json.dumps(shown.show_entity(detail)).encode(), status_code=200, headers=headers)

    noun = kind.name.lower()
    router.add_api_route(f"/{kind.path}", listing, methods=["GET"], summary=f"Every {noun}", name=f"list_{kind.path}")
    router.add_api_route(
        f"/{kind.path}/{{entity_id}}", detail, methods=["GET"], summary=f"One {noun}", name=f"get_{noun}"
    )

"""``agentos-gateway check-config``: validate a configuration and show what it would serve.

The settings are loaded as ``serve`` loads them (file, environment, local components). Every
upstream is then probed once, as the gateway does before its first request (``GET /health``, then
``GET /config``), so the routing table shows who would serve each id. A down upstream is shown as
down, not as an error: its entities are unknown until it answers. Ids served both locally and by
an upstream are errors with ``on_conflict: error``, as they would stop the gateway's start.

API keys are never printed: only whether one is set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from gateway.balancing import ActiveState
from gateway.doors.membership import door_route
from gateway.local import LocalRegistry
from gateway.pool import Pool, Upstream
from gateway.routing import Directory
from gateway.scopes import key_scopes
from gateway.settings import ConfigError, Settings, load_settings
from gateway.wire.kinds import EntityKind

LOCAL = "local"
# The nested settings shown as one line each, in the README's order.
SECTIONS = ("health", "outlier", "retry", "timeouts", "affinity")


@dataclass
class Report:
    """The outcome of a check: what to print, and the errors that make it fail."""

    lines: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


async def check_config(path: Optional[os.PathLike[str] | str]) -> Report:
    """Load, probe and describe the configuration at ``path`` (``$GATEWAY_CONFIG`` or the
    embedded default without one). A bad field is an error line naming it, as ``serve`` says."""
    try:
        settings = load_settings(path)
        registry = LocalRegistry.from_config(settings.local)
    except ConfigError as error:
        return Report(errors=str(error).splitlines())
    pool = await probed_pool(settings)
    directory = Directory(registry, pool, settings.on_conflict)
    report = Report(lines=describe_settings(settings) + describe_upstreams(pool) + routing_table(directory))
    conflicts = directory.conflicts()
    if conflicts and settings.on_conflict == "error":
        report.errors.extend(conflicts)
    return report


async def probed_pool(settings: Settings) -> Optional[Pool]:
    """The pool after its start-up probe of every upstream (none without upstreams)."""
    if not settings.upstreams:
        return None
    pool = Pool(settings)
    try:
        await pool.start()
    finally:
        await pool.close()  # the probe state stays; only connections and probe loops go
    return pool


def describe_settings(settings: Settings) -> List[str]:
    lines = [
        f"gateway: host={settings.host} port={settings.port} gateway_id={settings.gateway_id} "
        f"max_body_bytes={settings.max_body_bytes}",
        f"on_conflict={settings.on_conflict} panic_threshold_percent={_value(settings.panic_threshold_percent)} "
        f"max_connections_per_upstream={settings.max_connections_per_upstream}",
        f"admin: port={settings.admin.port} (GET /metrics for Prometheus, /admin) admin_key="
        f"{'set' if settings.admin_key else 'none: /admin answers 403'}",
    ]
    lines += [f"{name}: {_fields(getattr(settings, name))}" for name in SECTIONS]
    # The origins as the gateway will allow them: AgentOS's defaults are not in the file.
    origins = " ".join(settings.allowed_origins()) or "(none: no CORS headers)"
    lines.append(f"cors: cors_defaults={_value(settings.cors_defaults)} allowed origins: {origins}")
    for kind in EntityKind:
        paths = getattr(settings.local, kind.path)
        lines.append(f"local.{kind.path}: {', '.join(paths) if paths else '(none)'}")
    for key in settings.auth.keys:  # what each key may do (its name only, never its secret)
        lines.append(f"key {key.name}: {' '.join(key_scopes(key.scopes, key.entities)) or '(no scope)'}")
    return lines


def describe_upstreams(pool: Optional[Pool]) -> List[str]:
    upstreams = list(pool.upstreams.values()) if pool is not None else []
    lines = ["", f"upstreams ({len(upstreams)}):"]
    for upstream in upstreams:
        config = upstream.config
        key = "set" if config.api_key else "none"
        lines.append(
            f"  {config.name}  url={_safe_url(upstream)} weight={config.weight:g} api_key={key}  {_state(upstream)}"
        )
    return lines


def routing_table(directory: Directory) -> List[str]:
    """Each id of each kind, with who serves it: ``local``, the upstream names, or both."""
    lines = ["", "routing:"]
    for kind in EntityKind:
        served = _served_by(directory, kind)
        lines.append(f"  {kind.path}:" + ("" if served else " (none)"))
        width = max((len(entity_id) for entity_id in served), default=0)
        lines += [f"    {entity_id:<{width}}  {who}" for entity_id, who in sorted(served.items())]
    return lines + _doors(directory)


def _doors(directory: Directory) -> List[str]:
    """AgentOS's other doors (AG-UI, A2A, MCP, the WebSocket), where, and which upstreams serve them."""
    if directory.pool is None:
        return []
    served: Dict[str, List[str]] = {}
    for upstream in directory.pool.upstreams.values():
        for door, prefix in sorted(upstream.doors, key=lambda pair: (pair[0].value, pair[1])):
            served.setdefault(f"{door.value} at {door_route(door, prefix)}", []).append(upstream.name)
    lines = ["  doors:" + ("" if served else " (none)")]
    width = max((len(name) for name in served), default=0)
    return lines + [f"    {name:<{width}}  {', '.join(names)}" for name, names in sorted(served.items())]


def _served_by(directory: Directory, kind: EntityKind) -> Dict[str, str]:
    upstreams: Dict[str, List[str]] = {}
    if directory.pool is not None:
        for upstream in directory.pool.upstreams.values():
            for entity_id in upstream.members.get(kind, ()):
                upstreams.setdefault(entity_id, []).append(upstream.name)
    local = set(directory.registry.ids(kind))
    served = {entity_id: ", ".join(names) for entity_id, names in upstreams.items() if entity_id not in local}
    for entity_id in local:
        names = upstreams.get(entity_id)
        served[entity_id] = _conflict(directory.on_conflict, names) if names else LOCAL
    return served


def _conflict(on_conflict: str, names: List[str]) -> str:
    remote = ", ".join(names)
    if on_conflict == "local":
        return f"{LOCAL} (wins over {remote}: on_conflict=local)"
    if on_conflict == "upstream":
        return f"{remote} (wins over {LOCAL}: on_conflict=upstream)"
    return f"CONFLICT: {LOCAL} and {remote} (on_conflict=error)"


def _state(upstream: Upstream) -> str:
    if upstream.health.active is not ActiveState.HEALTHY:
        return "down (GET /health failed): its entities are unknown"
    if upstream.catalog is None:
        return "up, but GET /config failed (is its api_key right?): its entities are unknown"
    return "up"


def _safe_url(upstream: Upstream) -> str:
    """The url without a password it may carry (``http://user:secret@host``)."""
    parts = urlsplit(upstream.config.base_url)
    if parts.password is None:
        return upstream.config.base_url
    userinfo, _, host = parts.netloc.rpartition("@")
    username = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{username}:***@{host}"))


def _fields(model: BaseModel) -> str:
    return " ".join(f"{name}={_value(value)}" for name, value in model.model_dump().items())


def _value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)

"""What the routes share, built once per app, and how a reload replaces parts of it.

A reload (SIGHUP or ``POST /admin/reload``) reads the configuration file again. A file that does
not load (a bad field, a component that does not import) is refused whole: the running
configuration stays. A good one is applied in place: upstreams join and leave (their streams in
flight finish), weights, policies, timeouts, retries, affinity, keys, run limits, ``on_conflict``,
``panic`` and local components change (``tests/test_reload_settings.py`` sees each take effect).
What binds the process (host, port, admin port, workers), body and header limits, the client
timeouts, CORS, the access log switch, the admin key, ``gateway_id`` and the shutdown timings need
a restart;
``max_connections_per_upstream`` applies to upstreams that join after it; a gateway started
without upstreams cannot gain some by reload.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from gateway.api.auth import Keyring
from gateway.api.forwarding import Forwarder
from gateway.api.limits import Limiter
from gateway.api.storage import StorageRouter
from gateway.local import LocalRegistry
from gateway.local_os import LocalOS
from gateway.pool import Pool
from gateway.routing import Directory
from gateway.settings import IN_PROCESS_UPSTREAM, ConfigError, Settings, load_settings

logger = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    registry: LocalRegistry
    pool: Optional[Pool]
    forwarder: Optional[Forwarder]
    directory: Directory
    limiter: Limiter
    keyring: Keyring
    local_os: LocalOS
    storage: Optional[StorageRouter] = None  # routing by database group (None without upstreams)
    config_path: Optional[str] = None  # what a reload reads (None: $GATEWAY_CONFIG or the embedded default)
    draining: bool = False  # set on SIGTERM: /ready answers 503 so load balancers stop sending
    reloads: int = field(default=0)

    @classmethod
    def build(cls, settings: Settings, registry: LocalRegistry, config_path: Optional[str] = None) -> "Services":
        # Local components make a pool too: their in-process AgentOS is its member ``local``.
        pool = Pool(settings) if settings.upstreams or registry.ids_any() else None
        forwarder = Forwarder(pool, settings) if pool is not None else None
        return cls(
            settings=settings,
            registry=registry,
            pool=pool,
            forwarder=forwarder,
            directory=Directory(registry, pool, settings.on_conflict),
            limiter=Limiter(settings.limits),
            keyring=Keyring(settings.auth.keys),
            local_os=LocalOS(settings.local_db, settings.gateway_id),
            storage=StorageRouter(forwarder) if forwarder is not None else None,
            config_path=config_path,
        )

    async def start(self) -> None:
        """Probe the upstreams, then serve the local components' AgentOS and add it to the pool."""
        if self.pool is not None:
            await self.pool.start()
            await self._apply_local(self.registry)
        if self.forwarder is not None:
            self.forwarder.start()

    async def close(self) -> None:
        if self.forwarder is not None:
            await self.forwarder.close()
        if self.pool is not None:
            await self.pool.close()
        await self.local_os.stop()

    async def _apply_local(self, registry: LocalRegistry) -> None:
        """The local components' AgentOS serves ``registry``; the pool has it as a member while
        there are any (a new AgentOS behind the same socket: the probes see it restarted)."""
        assert self.pool is not None
        member = await self.local_os.apply(registry)
        present = member is not None and member.name in self.pool.upstreams
        if member is not None and not present:
            await self.pool.add(member)
        elif member is None and IN_PROCESS_UPSTREAM in self.pool.upstreams:
            await self.pool.remove(IN_PROCESS_UPSTREAM)
        elif member is not None:
            await self.pool.probe(self.pool.upstreams[member.name])

    def ready(self) -> Tuple[bool, str]:
        if self.draining:
            return False, "shutting down"
        if self.pool is not None and not self.pool.any_usable() and not self.registry.ids_any():
            return False, "no usable upstream"
        return True, "ok"

    async def reload(self) -> List[str]:
        """Read the configuration again and apply it; ``ConfigError`` (nothing changed) when it
        cannot be used. Returns the upstream names in force afterwards."""
        settings = load_settings(self.config_path)
        registry = LocalRegistry.from_config(settings.local)
        if self.pool is None and (settings.upstreams or registry.ids_any()):
            raise ConfigError(
                "upstreams, local: this gateway started with neither; adding upstreams or local components needs a restart"
            )
        if self.pool is not None:
            await self.pool.reconfigure(settings)
            await self._apply_local(registry)
        if self.forwarder is not None:
            self.forwarder.reconfigure(settings)
        self.directory.registry, self.directory.on_conflict = registry, settings.on_conflict
        self.limiter.limits = settings.limits
        self.keyring.load(settings.auth.keys)
        self.settings, self.registry = settings, registry
        self.reloads += 1
        names = sorted(name for name in self.pool.upstreams if name != IN_PROCESS_UPSTREAM) if self.pool is not None else []
        logger.info("configuration reloaded: upstreams %s", ", ".join(names) or "none")
        return names

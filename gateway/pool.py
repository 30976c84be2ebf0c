"""The upstream pool: the I/O around the balancing core.

One ``aiohttp.ClientSession`` (a keep-alive connection pool) per upstream carries both the
forwarded runs and the probes. Each upstream has a probe loop: ``GET /health`` every interval
(jittered, so many gateways do not probe in step), and after every good probe ``GET /config``,
which says what the upstream serves (its membership). What an upstream last listed is kept while
it is down, so its ids stay known: a request for them gets 503 (come back later), not 404.

The pool publishes state; it does not choose. ``candidates`` gives the balancing core a snapshot,
``record`` feeds it the outcome of real traffic (passive ejection). It also keeps the load
counters: a ``Flight`` (one request through the pool) is counted for power-of-two-choices,
bounded load and the retry budget only through the pool's own methods.

A probe that finds a new process behind an upstream (``instantiated_at`` changed) gives it a
clean start: no ejection, no failure counts, usable from that good probe on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

import aiohttp

from gateway import metrics
from gateway.balancing import (
    ActiveState,
    Candidate,
    HealthPolicy,
    Outcome,
    OutlierPolicy,
    Probe,
    RetryBudget,
    UpstreamHealth,
    may_eject,
)
from gateway.balancing.storage import StorageGroup, StorageMode, storage_groups
from gateway.doors.membership import Door, ServedDoor, doors_of
from gateway.settings import Settings, UpstreamConfig
from gateway.wire.kinds import EntityKind

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class InProcessUpstream(UpstreamConfig):
    """The gateway's own AgentOS over its local components (``gateway/local_os.py``), reached on
    a Unix socket. It serves their data routes; it lists no entity to the directory (the local ids
    are the gateway's own), so its ``GET /config`` is kept for its databases only."""

    socket_path: str


@dataclass
class Upstream:
    """One AgentOS server: its config, health, membership, load and connection pool."""

    config: UpstreamConfig
    health: UpstreamHealth
    members: Dict[EntityKind, FrozenSet[str]] = field(default_factory=dict)
    catalog: Optional[Dict[str, Any]] = None  # its last GET /config answer
    doors: FrozenSet[ServedDoor] = frozenset()  # AG-UI, A2A, MCP, WebSocket: from /config and /info
    instantiated_at: Optional[str] = None  # from GET /health: a change means it restarted
    in_flight: int = 0
    probes: int = 0  # probes done, for /admin/upstreams
    session: Optional[aiohttp.ClientSession] = None

    def outcome_counter(self, outcome: Outcome) -> Any:
        counter = self._outcome_counters.get(outcome)
        if counter is None:
            counter = self._outcome_counters[outcome] = metrics.UPSTREAM_REQUESTS.labels(self.name, outcome.value)
        return counter

    def __post_init__(self) -> None:
        self._outcome_counters: Dict[Outcome, Any] = {}
        self.in_flight_gauge = metrics.UPSTREAM_IN_FLIGHT.labels(self.name)
        self.healthy_gauge = metrics.UPSTREAM_HEALTHY.labels(self.name)
        self.healthy_gauge.set(0)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def base_url(self) -> str:
        return self.config.base_url

    @property
    def auth_headers(self) -> Dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}

    @property
    def in_process(self) -> bool:
        return isinstance(self.config, InProcessUpstream)

    def serves(self, kind: EntityKind, entity_id: str) -> bool:
        return entity_id in self.members.get(kind, ())

    def client(self) -> aiohttp.ClientSession:
        if self.session is None:
            raise RuntimeError(f"upstream {self.name} is not started")
        return self.session


class _NoReuseAfter5xx(aiohttp.ClientResponse):
    """AgentOS's server (uvicorn) closes a connection after an unhandled exception, right after
    its 500: the next request written to it would meet a reset, and look like a broken upstream.
    So a connection that answered a 5xx never goes back to the pool."""

    async def start(self, connection: aiohttp.connector.Connection) -> "aiohttp.ClientResponse":
        protocol = connection.protocol
        response = await super().start(connection)
        if self.status >= 500 and protocol is not None:
            if self.connection is None:  # the whole answer came with its head: pooled already
                protocol.close()
            else:
                protocol.force_close()  # closed instead of pooled once the body is read
        return response


class Flight:
    """One request in flight through the pool, on at most one upstream at a time. Its counting
    is the pool's (``Pool.take``, ``Pool.retrying``, ``Pool.land``); ``finish`` is idempotent."""

    __slots__ = ("pool", "upstream", "retried", "done")

    def __init__(self, pool: "Pool") -> None:
        self.pool = pool
        self.upstream: Optional[Upstream] = None
        self.retried = False
        self.done = False
        pool.active_requests += 1

    def on(self, upstream: Upstream) -> None:
        """The request goes to ``upstream`` now (its first try, or a retry)."""
        self.pool.take(self, upstream)

    def mark_retry(self) -> None:
        self.pool.retrying(self)

    def finish(self, outcome: Optional[Outcome] = None) -> None:
        """The request is over; ``outcome`` (if any) is recorded for outlier ejection."""
        self.pool.land(self, outcome)


Resolver = Callable[[str, int], Awaitable[List[Tuple[str, int]]]]


async def resolve_addresses(host: str, port: int) -> List[Tuple[str, int]]:
    """Every (address, port) ``host`` resolves to, for TCP, sorted: the DNS answer's upstreams."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({(info[4][0], info[4][1]) for info in infos})


class Pool:
    def __init__(self, settings: Settings, *, clock: Clock = time.monotonic, resolver: Resolver = resolve_addresses) -> None:
        self.settings = settings
        self.clock = clock
        self.resolver = resolver
        self.upstreams: Dict[str, Upstream] = {
            config.name: self._new_upstream(config) for config in settings.upstreams if config.dns is None
        }
        self.retry_budget = RetryBudget(
            budget_percent=settings.retry.budget_percent,
            min_retry_concurrency=settings.retry.min_retry_concurrency,
        )
        self.connect_timeout = _connect_timeout(settings)
        self.active_requests = 0
        self.active_retries = 0
        self._tasks: Dict[str, asyncio.Task] = {}  # probe loops by upstream name, DNS loops by "dns:" + entry
        self._discovered: Dict[str, Set[str]] = {}  # DNS entry -> the upstreams its last answer gave
        self._rng = random.Random()
        self._groups: Tuple[StorageGroup, ...] = ()
        self._groups_key: Any = None  # what _groups was computed from

    # -- load counters (a Flight's bookkeeping) ----------------------------------------------------

    def flight(self) -> Flight:
        return Flight(self)

    def take(self, flight: Flight, upstream: Upstream) -> None:
        if flight.upstream is not None:
            flight.upstream.in_flight -= 1
            flight.upstream.in_flight_gauge.dec()
        flight.upstream = upstream
        upstream.in_flight += 1
        upstream.in_flight_gauge.inc()

    def retrying(self, flight: Flight) -> None:
        if not flight.retried:
            flight.retried = True
            self.active_retries += 1

    def land(self, flight: Flight, outcome: Optional[Outcome]) -> None:
        if flight.done:
            return
        flight.done = True
        self.active_requests -= 1
        if flight.retried:
            self.active_retries -= 1
        upstream = flight.upstream
        if upstream is not None:
            upstream.in_flight -= 1
            upstream.in_flight_gauge.dec()
            if outcome is not None:
                self.record(upstream, outcome)

    def _new_upstream(self, config: UpstreamConfig) -> Upstream:
        health_policy = HealthPolicy(
            healthy_threshold=self.settings.health.healthy_threshold,
            unhealthy_threshold=self.settings.health.unhealthy_threshold,
        )
        outlier_policy = OutlierPolicy(**self.settings.outlier.model_dump())
        return Upstream(config=config, health=UpstreamHealth(health_policy, outlier_policy))

    def _open(self, upstream: Upstream) -> None:
        limit = self.settings.max_connections_per_upstream
        # Idle connections close before AgentOS's server would close them (uvicorn: 5 s), so
        # a run is rarely written to a connection the upstream is just closing.
        keepalive_s = self.settings.timeouts.upstream_keepalive_s
        connector: aiohttp.BaseConnector
        if isinstance(upstream.config, InProcessUpstream):
            connector = aiohttp.UnixConnector(upstream.config.socket_path, limit=limit, keepalive_timeout=keepalive_s)
        else:
            connector = aiohttp.TCPConnector(
                limit=limit, limit_per_host=limit, ttl_dns_cache=10, keepalive_timeout=keepalive_s
            )
        upstream.session = aiohttp.ClientSession(
            connector=connector,
            # Per-request timeouts are set by the sender; none here that could cut a stream.
            timeout=self.connect_timeout,
            auto_decompress=False,  # bytes pass through as the upstream sent them
            # Shared by every client: a cookie an answer sets is its client's alone, never kept.
            cookie_jar=aiohttp.DummyCookieJar(),
            response_class=_NoReuseAfter5xx,
            skip_auto_headers=("User-Agent",),
        )

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve DNS entries, open the connection pools and probe every upstream once before
        serving, so the first request already knows who is up and what each serves; then probe
        (and resolve) on timers."""
        for entry in self._dns_entries():
            await self._apply_dns(entry, await self._lookup(entry) or [])
        for upstream in self.upstreams.values():
            self._open(upstream)
        await asyncio.gather(*(self.probe(upstream) for upstream in self.upstreams.values()))
        for upstream in self.upstreams.values():
            self._start_probing(upstream)
        for entry in self._dns_entries():
            self._tasks[f"dns:{entry.name}"] = asyncio.create_task(self._dns_loop(entry), name=f"dns-{entry.name}")

    async def close(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for upstream in self.upstreams.values():
            if upstream.session is not None:
                await upstream.session.close()
                upstream.session = None

    def _start_probing(self, upstream: Upstream) -> None:
        self._tasks[upstream.name] = asyncio.create_task(self._probe_loop(upstream), name=f"probe-{upstream.name}")

    async def add(self, config: UpstreamConfig) -> Upstream:
        """A new member: connection pool, a first probe, then its probe loop."""
        upstream = self._new_upstream(config)
        self._open(upstream)
        await self.probe(upstream)
        self.upstreams[upstream.name] = upstream
        self._start_probing(upstream)
        logger.info("upstream %s (%s) added", upstream.name, upstream.base_url)
        return upstream

    async def remove(self, name: str) -> None:
        """A member leaves: no new work from now on; its connections close once what it is
        running has finished (or after the whole-run timeout)."""
        upstream = self.upstreams.pop(name, None)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        if upstream is None:
            return
        upstream.health.draining = True
        upstream.healthy_gauge.set(0)
        logger.info("upstream %s removed", name)
        deadline = self.clock() + self.settings.timeouts.run_s
        while upstream.in_flight and self.clock() < deadline:
            await asyncio.sleep(1.0)  # housekeeping of a departed member, not on any request's path
        if upstream.session is not None:
            await upstream.session.close()
            upstream.session = None

    async def reconfigure(self, settings: Settings) -> None:
        """Apply a reloaded configuration without dropping work: new upstreams join (probed
        first), removed ones leave once idle, changed ones are replaced, weights and policies
        change in place; DNS entries start or stop being followed."""
        old_static = {c.name: c for c in self.settings.upstreams if c.dns is None}
        new_static = {c.name: c for c in settings.upstreams if c.dns is None}
        old_dns = {c.name: c for c in self.settings.upstreams if c.dns is not None}
        new_dns = {c.name: c for c in settings.upstreams if c.dns is not None}
        health_changed = settings.health != self.settings.health
        self.settings = settings
        self.retry_budget = RetryBudget(settings.retry.budget_percent, settings.retry.min_retry_concurrency)
        self.connect_timeout = _connect_timeout(settings)  # sessions keep theirs: the proxy passes this one
        if health_changed:  # a probe loop asleep for the old interval would keep it until it wakes
            for name, upstream in self.upstreams.items():
                task = self._tasks.pop(name, None)
                if task is not None:
                    task.cancel()
                    self._start_probing(upstream)
        health_policy = HealthPolicy(settings.health.healthy_threshold, settings.health.unhealthy_threshold)
        outlier_policy = OutlierPolicy(**settings.outlier.model_dump())
        for upstream in self.upstreams.values():
            upstream.health.health_policy, upstream.health.outlier_policy = health_policy, outlier_policy
        for name in sorted(set(old_static) - set(new_static)):
            asyncio.ensure_future(self.remove(name))
        for name, config in sorted(new_static.items()):
            current = self.upstreams.get(name)
            if current is None or name not in old_static:
                if current is not None:
                    asyncio.ensure_future(self.remove(name))
                await self.add(config)
            elif (config.base_url, config.api_key) != (current.config.base_url, current.config.api_key):
                asyncio.ensure_future(self.remove(name))  # in-flight work ends on the old connections
                await self.add(config)
            else:
                current.config = config  # a new weight takes effect with the next choice
        for name in sorted(set(old_dns) - set(new_dns)):
            task = self._tasks.pop(f"dns:{name}", None)
            if task is not None:
                task.cancel()
            for member in sorted(self._discovered.pop(name, set())):
                asyncio.ensure_future(self.remove(member))
        for name, entry in sorted(new_dns.items()):
            if old_dns.get(name) != entry:
                task = self._tasks.pop(f"dns:{name}", None)
                if task is not None:
                    task.cancel()
                self._tasks[f"dns:{name}"] = asyncio.create_task(self._dns_loop(entry, first_now=True), name=f"dns-{name}")

    # -- DNS discovery ---------------------------------------------------------------------------

    def _dns_entries(self) -> List[UpstreamConfig]:
        return [config for config in self.settings.upstreams if config.dns is not None]

    async def _lookup(self, entry: UpstreamConfig) -> Optional[List[Tuple[str, int]]]:
        host, _, port = (entry.dns or "").rpartition(":")
        try:
            return await self.resolver(host, int(port))
        except (OSError, ValueError) as error:  # keep the last answer: DNS trouble is not a dead pool
            logger.warning("upstream %s: cannot resolve %s: %s", entry.name, entry.dns, error)
            return None

    async def _apply_dns(self, entry: UpstreamConfig, addresses: List[Tuple[str, int]]) -> None:
        """Members for every address of the answer; members of addresses gone leave."""
        wanted = {config.name: config for config in (entry.for_address(host, port) for host, port in addresses)}
        current = self._discovered.get(entry.name, set())
        started = self._tasks.get(f"dns:{entry.name}") is not None
        for name in sorted(set(wanted) - current):
            if started:
                await self.add(wanted[name])
            else:  # before start(): opened and probed with the others
                self.upstreams[name] = self._new_upstream(wanted[name])
        for name in sorted(current - set(wanted)):
            asyncio.ensure_future(self.remove(name))
        self._discovered[entry.name] = set(wanted)

    async def _dns_loop(self, entry: UpstreamConfig, first_now: bool = False) -> None:
        while True:
            if not first_now:
                await asyncio.sleep(entry.dns_refresh_s)
            first_now = False
            addresses = await self._lookup(entry)
            if addresses is not None:
                try:
                    await self._apply_dns(entry, addresses)
                except Exception:  # a discovery loop must outlive any surprise
                    logger.exception("upstream %s: applying the DNS answer failed", entry.name)

    # -- active health and membership ------------------------------------------------------------

    async def _probe_loop(self, upstream: Upstream) -> None:
        while True:
            health = self.settings.health
            jitter = health.interval_s * health.jitter_percent / 100.0
            await asyncio.sleep(health.interval_s + self._rng.uniform(-jitter, jitter))
            try:
                await self.probe(upstream)
            except Exception:  # a probe loop must outlive any surprise
                logger.exception("probe of upstream %s failed unexpectedly", upstream.name)

    async def probe(self, upstream: Upstream) -> ActiveState:
        """One health check; after a good one, the membership is read again."""
        before = upstream.health.active
        started = time.perf_counter()
        ok, restarted = await self._check_health(upstream)
        metrics.PROBE_DURATION.labels(upstream.name).observe(time.perf_counter() - started)
        if restarted:
            upstream.health.on_restart()
        state = upstream.health.on_probe(Probe.OK if ok else Probe.FAILED)
        upstream.probes += 1
        upstream.healthy_gauge.set(1 if state is ActiveState.HEALTHY else 0)
        if ok:
            await self._refresh_membership(upstream)
        if state is not before:
            log = logger.warning if state is ActiveState.UNHEALTHY else logger.info
            log("upstream %s is %s", upstream.name, state.value)
        return state

    async def _check_health(self, upstream: Upstream) -> Tuple[bool, bool]:
        """(answered well, is a new process since the last good probe)."""
        timeout = aiohttp.ClientTimeout(total=self.settings.health.timeout_s)
        try:
            async with upstream.client().get(f"{upstream.base_url}/health", timeout=timeout) as response:
                if response.status != 200:
                    return False, False
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return False, False
        instantiated_at = body.get("instantiated_at") if isinstance(body, dict) else None
        restarted = upstream.instantiated_at is not None and instantiated_at != upstream.instantiated_at
        if restarted:
            logger.info("upstream %s restarted (instantiated_at %s): it starts clean", upstream.name, instantiated_at)
        upstream.instantiated_at = instantiated_at
        return True, restarted

    async def _refresh_membership(self, upstream: Upstream) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.health.timeout_s)
        try:
            async with upstream.client().get(
                f"{upstream.base_url}/config", headers=upstream.auth_headers, timeout=timeout
            ) as response:
                response.raise_for_status()
                catalog = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
            logger.warning("upstream %s: GET /config failed, keeping its last membership: %s", upstream.name, error)
            return
        if not isinstance(catalog, dict):
            logger.warning("upstream %s: GET /config is not an object, keeping its last membership", upstream.name)
            return
        info = await self._info(upstream, timeout)
        doors = doors_of(catalog, info)
        if info is None:  # no answer this time (a slow probe): its MCP door stays as it was
            doors |= {served for served in upstream.doors if served[0] is Door.MCP}
        if doors != upstream.doors:
            logger.info("upstream %s serves the doors %s", upstream.name, sorted(f"{d.value} {p or '/'}" for d, p in doors))
            upstream.doors = doors
        if upstream.in_process:
            upstream.catalog = catalog
            return
        members = {kind: frozenset(_ids(catalog.get(kind.path))) for kind in EntityKind}
        if members != upstream.members:
            logger.info(
                "upstream %s serves %s",
                upstream.name,
                {kind.path: sorted(ids) for kind, ids in members.items()},
            )
        upstream.members = members
        upstream.catalog = catalog

    async def _info(self, upstream: Upstream, timeout: aiohttp.ClientTimeout) -> Optional[Dict[str, Any]]:
        """Its ``GET /info`` (where its MCP server is), None when it does not answer one."""
        try:
            async with upstream.client().get(
                f"{upstream.base_url}/info", headers=upstream.auth_headers, timeout=timeout
            ) as response:
                if response.status != 200:
                    return None
                info = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    # -- what the balancing core is given ----------------------------------------------------------

    def serving(self, kind: EntityKind, entity_id: str) -> List[Upstream]:
        """Every upstream that lists the id, usable or not."""
        return [upstream for upstream in self.upstreams.values() if upstream.serves(kind, entity_id)]

    def serving_door(self, door: Door, prefix: str) -> List[Upstream]:
        """Every upstream that serves ``door`` at ``prefix``, usable or not."""
        return [upstream for upstream in self.upstreams.values() if (door, prefix) in upstream.doors]

    def served_doors(self) -> FrozenSet[ServedDoor]:
        """Every door some upstream serves."""
        return frozenset().union(*(upstream.doors for upstream in self.upstreams.values()))

    def candidates(self, upstreams: Iterable[Upstream]) -> List[Candidate]:
        now = self.clock()
        return [
            Candidate(
                name=upstream.name,
                weight=upstream.config.weight,
                usable=upstream.health.is_usable(now),
                in_flight=upstream.in_flight,
                draining=upstream.health.draining,
            )
            for upstream in upstreams
        ]

    def storage_groups(self) -> Tuple[StorageGroup, ...]:
        """The upstreams grouped by the storage they share (``storage.mode``), from what their
        last ``/config`` reported: the groups change as the probes learn them."""
        key = (self.settings.storage.mode, tuple((name, id(u.catalog)) for name, u in self.upstreams.items()))
        if key != self._groups_key:
            reported = {name: _database_ids(u.catalog) for name, u in self.upstreams.items()}
            self._groups = storage_groups(reported, StorageMode(self.settings.storage.mode))
            self._groups_key = key
        return self._groups

    def is_usable(self, upstream: Upstream) -> bool:
        return upstream.health.is_usable(self.clock())

    def any_usable(self) -> bool:
        now = self.clock()
        return any(upstream.health.is_usable(now) for upstream in self.upstreams.values())

    # -- passive health --------------------------------------------------------------------------

    def record(self, upstream: Upstream, outcome: Outcome) -> None:
        """The outcome of one request to ``upstream``; ejects it when its failures say so and the
        pool can spare it (max ejection percent)."""
        now = self.clock()
        upstream.outcome_counter(outcome).inc()
        if not upstream.health.record(outcome, now):
            return
        ejected = sum(1 for other in self.upstreams.values() if other.health.is_ejected(now))
        if not may_eject(len(self.upstreams), ejected, self.settings.outlier.max_ejection_percent):
            logger.warning("upstream %s keeps failing, but max_ejection_percent is reached", upstream.name)
            return
        until = upstream.health.eject(now)
        metrics.UPSTREAM_EJECTIONS.labels(upstream.name).inc()
        logger.warning("upstream %s ejected for %.1f s after %s", upstream.name, until - now, outcome.value)

    # -- retry budget ------------------------------------------------------------------------------

    def may_retry(self) -> bool:
        return self.retry_budget.allows(self.active_requests, self.active_retries)


def _connect_timeout(settings: Settings) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=settings.timeouts.connect_s)


def _database_ids(catalog: Optional[Dict[str, Any]]) -> Optional[List[str]]:
    """The database ids a ``/config`` answer reports (``databases``, ``os_database``); None when
    there is no answer yet."""
    if catalog is None:
        return None
    found = catalog.get("databases")
    ids = [db_id for db_id in found if isinstance(db_id, str)] if isinstance(found, list) else []
    if isinstance(catalog.get("os_database"), str):
        ids.append(catalog["os_database"])
    return ids


def _ids(entries: Any) -> Iterable[str]:
    if not isinstance(entries, list):
        return ()
    return (entry["id"] for entry in entries if isinstance(entry, dict) and isinstance(entry.get("id"), str))

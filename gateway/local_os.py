"""agno's own AgentOS over the local components: their data routes, as the pool member ``local``.

The gateway runs its local components itself (``api/local_runs.py``, through ``AgentOSRunner``).
Everything else AgentOS serves for them (sessions, memories, traces, evals, metrics, ...) is
AgentOS's own routers: an ``AgentOS`` built in-process over the same component objects, its app
(``AgentOS.get_app()``) served by uvicorn on a Unix socket in a private directory (mode 0700:
nothing else on the host reaches it around the gateway's auth; it also wants a random bearer key).
The pool takes it as one more upstream (``pool.InProcessUpstream``): probed, chosen, forwarded to,
merged like any other. It lists no entity to the directory, so the local ids stay the gateway's
own (runs, ``on_conflict``) and are not "also remote".

**Database.** AgentOS gives each component without a database its own ``db`` (top-level
components, as AgentOS does). Here that is ``local_db`` when set, else a SQLite file in the
private directory, created at start and removed at stop. The runs store in the same object (a
run's fresh copy shares it), so a local run's session is listed, reopened and deleted here.
SQLite rather than agno's ``InMemoryDb``: the workers of ``serve --workers N`` share one file
(the CLI makes its directory once and passes ``GATEWAY_LOCAL_DB`` to them), so a session one
worker made is found by a request any other worker takes. Like the demo's in-memory upstreams it
lives as long as the gateway; ``local_db`` keeps it longer. When every component has a database
of its own, AgentOS's ``db`` (where components, schedules and approvals live) is the first of
them and no file is made.

A reload that changes the local components builds a new AgentOS and switches to it behind the
same socket (its probe then sees a new ``instantiated_at``, as after a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, List, Optional, Tuple

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.local import LocalEntity, LocalRegistry, open_db
from gateway.pool import InProcessUpstream
from gateway.settings import IN_PROCESS_UPSTREAM
from gateway.wire.kinds import EntityKind

logger = logging.getLogger(__name__)

SOCKET_NAME = "agentos.sock"
DB_FILE_NAME = "local.db"
STOP_TIMEOUT_S = 10.0


class _Current:
    """The ASGI app behind the socket: whichever AgentOS app is current (a reload switches it)."""

    def __init__(self) -> None:
        self.app: Optional[ASGIApp] = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "served before an AgentOS was built"
        await self.app(scope, receive, send)


class LocalOS:
    """The in-process AgentOS of a registry's components; ``apply`` it, ``stop`` it at the end."""

    def __init__(self, local_db: Optional[str], os_id: str) -> None:
        self.local_db_url = local_db
        self.os_id = os_id
        self._key = secrets.token_urlsafe(32)
        self._directory: Optional[Path] = None
        self._db: Any = None  # made once, kept across reloads: the sessions stay
        self._current = _Current()
        self._serving: Optional[Tuple[Tuple[str, str, int], ...]] = None  # what the current app serves
        self._lifespan: Optional[contextlib.AsyncExitStack] = None
        self._server: Any = None
        self._main_loop: Optional[asyncio.Task] = None

    @property
    def socket_path(self) -> Optional[str]:
        return str(self._directory / SOCKET_NAME) if self._directory is not None else None

    def member(self) -> InProcessUpstream:
        """The pool's entry for it."""
        assert self.socket_path is not None
        return InProcessUpstream(
            name=IN_PROCESS_UPSTREAM, url="http://local", api_key=self._key, socket_path=self.socket_path
        )

    async def apply(self, registry: LocalRegistry) -> Optional[InProcessUpstream]:
        """Serve ``registry``'s components: started at the first call, a new AgentOS when they
        changed, stopped when there are none. The pool member, or None when nothing is served."""
        entities = registry.entities()
        if not entities:
            await self._close()  # the directory stays: components keep the database they were given
            return None
        serving = tuple(sorted((entity.kind.path, entity.id, id(entity.component)) for entity in entities))
        if serving != self._serving:
            await self._switch(entities)
            self._serving = serving
        if self._server is None:
            await self._listen()
        return self.member()

    async def _switch(self, entities: List[LocalEntity]) -> None:
        app = self._build(entities)
        lifespan = contextlib.AsyncExitStack()
        await lifespan.enter_async_context(app.router.lifespan_context(app))  # creates the tables
        previous, self._lifespan = self._lifespan, lifespan
        self._current.app = app
        if previous is not None:
            await previous.aclose()

    def _build(self, entities: List[LocalEntity]) -> Any:
        from agno.os import AgentOS
        from agno.os.settings import AgnoAPISettings

        components = [entity.component for entity in entities]
        own = [db for db in (getattr(component, "db", None) for component in components) if db is not None]
        db = self._local_db() if len(own) < len(components) else own[0]

        def of(kind: EntityKind) -> List[Any]:
            return [entity.component for entity in entities if entity.kind is kind]

        agent_os = AgentOS(
            id=self.os_id,
            name=self.os_id,
            db=db,
            agents=of(EntityKind.AGENT) or None,
            teams=of(EntityKind.TEAM) or None,
            workflows=of(EntityKind.WORKFLOW) or None,
            settings=AgnoAPISettings(os_security_key=self._key),
            telemetry=False,
        )
        return agent_os.get_app()

    def _local_db(self) -> Any:
        if self._db is None:
            url = self.local_db_url or f"sqlite:///{self._private_directory() / DB_FILE_NAME}"
            self._db = open_db(url)
            logger.info("local components without a database store in %s", "local_db" if self.local_db_url else url)
        return self._db

    def _private_directory(self) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="agentos-gateway-"))  # mode 0700
        return self._directory

    async def _listen(self) -> None:
        import uvicorn

        path = str(self._private_directory() / SOCKET_NAME)
        # No log config, no log level: the gateway's logging stays as it is. No lifespan: this
        # module enters each AgentOS app's own (a reload switches apps, not servers). WebSockets:
        # the local workflows' /workflows/ws (gateway/doors/websocket.py).
        config = uvicorn.Config(
            self._current, uds=path, lifespan="off", log_config=None, access_log=False,
            timeout_graceful_shutdown=STOP_TIMEOUT_S,
        )  # fmt: skip
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        # Not ``server.serve()``: it would take the process's signals from the gateway's own server.
        await server.startup()
        self._server = server
        self._main_loop = asyncio.create_task(server.main_loop(), name="local-agentos")

    async def stop(self) -> None:
        """Stop serving and remove the private directory (the socket, and the database file)."""
        await self._close()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.should_exit = True
            if self._main_loop is not None:
                await self._main_loop
            await server.shutdown()
        self._main_loop = None
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is not None:
            await lifespan.aclose()
        self._current.app, self._serving = None, None

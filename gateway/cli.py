"""``agentos-gateway``: serve the gateway, check a config, run a demo AgentOS upstream, or the demo.

    agentos-gateway serve [--config FILE] [--host H] [--port 7777] [--admin-port 9901]
    agentos-gateway check-config [FILE]
    agentos-gateway upstream --name NAME [--port 7777] [--db sqlite:///FILE]
    agentos-gateway demo [--upstreams 2] [--port 7777] [--upstream-base-port 7778] [--admin-port 9901]

``--fd N`` (serve, upstream) listens on an inherited, already-bound socket instead of binding:
socket activation, and race-free ports for tests; ``--admin-fd N`` (serve) does the same for the
admin listener (``GET /metrics`` for Prometheus and ``/admin``: ``gateway/api/admin_listener.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional

# Before agno is imported anywhere: runs would otherwise post telemetry to the network.
os.environ.setdefault("AGNO_TELEMETRY", "false")

EXIT_CONFIG_ERROR = 2
EXIT_START_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
MAX_PORT = 65535


def _bounded_int(text: str, low: int, high: int, what: str) -> int:
    """An argparse type's check: a bad value exits 2 naming the option."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} is not {what} ({low}-{high})")
    return value


def port_number(text: str) -> int:
    """``--port``'s type: checked by argparse, because a port given on the command line is
    applied after the settings were validated and would not be checked again."""
    return _bounded_int(text, 0, MAX_PORT, "a port number")


def _run(app: Any, *, host: str, port: int, fd: Optional[int], grace_s: float, server_class: Any = None,
         workers: int = 1, header_timeout_s: Optional[float] = None, admin: Any = None,
         ws_max_size: Optional[int] = None) -> None:  # fmt: skip
    """uvicorn on ``host:port``, or on an inherited socket ``fd``; and on the admin listener's
    socket ``admin`` when there is one: the same server (and each worker) serves both, the app
    telling them apart (``api/admin_listener.py``), so one lifespan, one drain and one reload
    cover both.

    An inherited socket is handed to uvicorn as a socket object of its real family: given the
    bare fd, uvicorn takes it for a Unix socket, and the TCP connections it accepts then lack
    TCP_NODELAY (every answer written in two parts waits ~40 ms for a delayed ACK).

    ``header_timeout_s``: the gateway's HTTP protocol (``gateway/http_protocol.py``) with that
    header timeout; None: uvicorn's own (an upstream AgentOS of the demo). ``ws_max_size``: a larger
    WebSocket message is closed with 1009 by uvicorn itself, before it is buffered whole.
    """
    import functools
    import socket as sockets

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    options: dict = dict(
        log_level=os.environ.get("GATEWAY_LOG_LEVEL", "info"), access_log=False, timeout_graceful_shutdown=grace_s
    )
    if header_timeout_s is not None:
        from gateway.http_protocol import GatewayHttpProtocol

        options["http"] = functools.partial(GatewayHttpProtocol, header_timeout_s=header_timeout_s)
    if ws_max_size is not None:
        options["ws_max_size"] = ws_max_size
    if isinstance(app, str):
        options.update(factory=True, workers=workers)
    if fd is None:
        config = uvicorn.Config(app, host=host, port=port, **options)
        listener = config.bind_socket() if workers > 1 or admin is not None else None
    else:
        config = uvicorn.Config(app, **options)
        listener = sockets.socket(fileno=os.dup(fd))  # uvicorn closes its copy; the owner keeps fd
    listeners = [sock for sock in (listener, admin) if sock is not None] or None
    if admin is not None:
        admin_host, admin_port = admin.getsockname()[:2]
        logging.getLogger("uvicorn.error").info(
            "Admin listener on http://%s:%d: GET /metrics (Prometheus), /admin", admin_host, admin_port
        )
    server = (server_class or uvicorn.Server)(config)
    try:
        if workers > 1:
            Multiprocess(config, sockets=listeners).run()
        else:
            server.run(sockets=listeners)
    except KeyboardInterrupt:  # Ctrl-C after a clean shutdown: exit 0, as uvicorn.run does
        pass


def _serve_app(
    app: Any, *, host: str, port: int, fd: Optional[int], grace_s: float = 30.0,
    header_timeout_s: Optional[float] = None, admin: Any = None,
) -> None:  # fmt: skip
    _run(app, host=host, port=port, fd=fd, grace_s=grace_s, header_timeout_s=header_timeout_s, admin=admin)


def _admin_socket(host: str, port: int, fd: Optional[int]) -> Any:
    """The admin listener's socket: the inherited ``fd``, else ``host:port`` bound here, before
    the app is built, so its real port (``0``: any free one) is known to the app. ``OSError``
    when the port is taken."""
    import socket as sockets

    from gateway.demo.upstreams import listening_socket

    if fd is not None:
        return sockets.socket(fileno=os.dup(fd))  # uvicorn closes its copy; the owner keeps fd
    return listening_socket(host, port)


def _cannot_listen(what: str, host: str, port: int, error: OSError) -> int:
    print(f"agentos-gateway: cannot listen on {host}:{port} ({what}): {error.strerror or error}", file=sys.stderr)
    return EXIT_START_FAILED


def _with_admin_port(settings: Any, port: int) -> Any:
    return settings.model_copy(update={"admin": settings.admin.model_copy(update={"port": port})})


def _serve_gateway(app: Any, settings: Any, *, fd: Optional[int], admin: Any) -> None:
    """One gateway process. SIGTERM first turns /ready to 503 for ``drain_delay_s`` (load
    balancers stop sending), then closes the listener and lets in-flight work finish for
    ``grace_s``; a second SIGTERM or Ctrl-C stops at once."""
    import threading

    import uvicorn

    class DrainingServer(uvicorn.Server):
        draining = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig == signal.SIGTERM and not self.draining and settings.shutdown.drain_delay_s > 0:
                self.draining = True
                app.state.services.draining = True
                timer = threading.Timer(settings.shutdown.drain_delay_s, super().handle_exit, (sig, frame))
                timer.daemon = True
                timer.start()
                return
            super().handle_exit(sig, frame)

    _run(
        app, host=settings.host, port=settings.port, fd=fd, grace_s=settings.shutdown.grace_s,
        server_class=DrainingServer, header_timeout_s=settings.limits.client_header_timeout_s, admin=admin,
        ws_max_size=settings.doors.websocket_max_message_bytes,
    )  # fmt: skip


def _serve_workers(args: argparse.Namespace, settings: Any, admin: Any) -> None:
    """``--workers N``: uvicorn's process manager, each worker building the app from the same
    configuration (passed by environment: the admin listener's real port too) and sharing
    metrics through a multiprocess directory."""
    import tempfile

    from gateway.local_os import DB_FILE_NAME
    from gateway.metrics import MULTIPROCESS_ENV
    from gateway.settings import ADMIN_PORT_ENV, CONFIG_ENV, LOCAL_DB_ENV

    if args.config:
        os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    os.environ[ADMIN_PORT_ENV] = str(settings.admin.port)
    os.environ.setdefault(MULTIPROCESS_ENV, tempfile.mkdtemp(prefix="agentos-gateway-metrics-"))
    # Local components without a database share one SQLite file across the workers (a session one
    # worker made is found by the next request, whichever worker takes it); removed at exit.
    shared_db_dir = tempfile.mkdtemp(prefix="agentos-gateway-") if not settings.local_db else None
    if shared_db_dir is not None:
        os.environ[LOCAL_DB_ENV] = f"sqlite:///{Path(shared_db_dir) / DB_FILE_NAME}"
    try:
        _run(
            "gateway.api.app:create_worker_app", host=settings.host, port=settings.port, fd=args.fd,
            grace_s=settings.shutdown.grace_s, workers=args.workers,
            header_timeout_s=settings.limits.client_header_timeout_s, admin=admin,
            ws_max_size=settings.doors.websocket_max_message_bytes,
        )  # fmt: skip
    finally:
        if shared_db_dir is not None:
            shutil.rmtree(shared_db_dir, ignore_errors=True)


def _fail_config(error: Exception) -> int:
    print(f"agentos-gateway: configuration error:\n{error}", file=sys.stderr)
    return EXIT_CONFIG_ERROR


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway import fd_limit
    from gateway.local import LocalRegistry
    from gateway.logs import configure_logging
    from gateway.settings import ConfigError, admin_port_problem, load_settings

    try:
        settings = load_settings(args.config)
        overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
        settings = settings.model_copy(update=overrides)
        if args.admin_port is not None:
            settings = _with_admin_port(settings, args.admin_port)
        binds_both = args.fd is None and args.admin_fd is None  # inherited sockets have their ports
        problem = admin_port_problem(settings.port, settings.admin.port) if binds_both else None
        if problem:
            raise ConfigError(problem)
    except ConfigError as error:
        return _fail_config(error)
    try:
        admin = _admin_socket(settings.host, settings.admin.port, args.admin_fd)
    except OSError as error:
        return _cannot_listen("the admin listener", settings.host, settings.admin.port, error)
    settings = _with_admin_port(settings, admin.getsockname()[1])
    configure_logging()
    fd_limit.apply(settings.limits.max_streams, settings.limits.max_concurrent_runs)  # workers inherit it
    try:
        if args.workers > 1:
            LocalRegistry.from_config(settings.local)  # fail here, once, rather than in every worker
            _serve_workers(args, settings, admin)
            return 0
        from gateway.api.app import create_app

        app = create_app(settings, config_path=args.config)
    except ConfigError as error:
        return _fail_config(error)
    _serve_gateway(app, settings, fd=args.fd, admin=admin)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.check import check_config

    # The pool's own warnings (an upstream down, GET /config failing) say why, on stderr.
    logging.basicConfig(level=logging.WARNING, format="agentos-gateway: %(message)s")
    report = asyncio.run(check_config(args.file))
    if report.lines:
        print("\n".join(report.lines), flush=True)
    if not report.ok:
        return _fail_config("\n".join(report.errors))
    return 0


def build_upstream_app(name: str, db_url: Optional[str], doors: str = "none", doors_prefix: str = "") -> Any:
    """A real AgentOS serving the demo components, answering as instance ``name``; with
    ``doors`` ``all`` (or ``stateless-mcp``) also its other doors: AG-UI for the agent, A2A, MCP
    (stateful, or stateless) and the workflow WebSocket (always there). They need the project's
    ``doors`` extra (agno's ``agui`` and ``a2a`` extras, fastmcp). ``doors_prefix`` mounts them
    under a prefix (``/chat``: ``/chat/agui``, ``/chat/a2a/...``, ``/chat/mcp``)."""
    from agno.os import AgentOS

    from gateway.demo import build_demo, open_db

    db = open_db(db_url)
    demo = build_demo(instance=name, db=db)
    door_options: Dict[str, Any] = {}
    if doors != "none":
        from agno.os.config import MCPConfig
        from agno.os.interfaces.a2a import A2A
        from agno.os.interfaces.agui import AGUI

        a2a = A2A(agents=[demo.agent], teams=[demo.team], workflows=[demo.workflow], prefix=f"{doors_prefix}/a2a")
        mcp: Dict[str, Any] = {"default_tools": True}  # what mcp=True serves
        if doors == "stateless-mcp":
            mcp["stateless"] = True
        if doors_prefix:
            mcp["path"] = f"{doors_prefix}/mcp"
        door_options = {
            "interfaces": [AGUI(agent=demo.agent, prefix=doors_prefix), a2a],
            "mcp": MCPConfig(**mcp) if len(mcp) > 1 else True,
        }
    agent_os = AgentOS(
        id=name,
        name=name,
        # With a database of its own, AgentOS serves its db-backed families too (components,
        # approvals, schedules); without one they answer 503.
        db=db if db_url else None,
        agents=[demo.agent],
        teams=[demo.team],
        workflows=[demo.workflow],
        telemetry=False,
        **door_options,
    )
    return agent_os.get_app()


def cmd_upstream(args: argparse.Namespace) -> int:
    try:
        app = build_upstream_app(args.name, args.db, args.doors, args.doors_prefix)
    except ValueError as error:
        return _fail_config(error)
    except ImportError as error:
        return _fail_config(ImportError(f"--doors {args.doors} needs the doors extra (pip install 'agentos-gateway[doors]'): {error}"))
    _serve_app(app, host=args.host, port=args.port, fd=args.fd)
    return 0


DEMO_LINES = """\
agentos-gateway demo: http://{host}:{port} serves echo-agent, echo-team and echo-workflow
(an offline deterministic model: 'a op b' is computed, anything else echoed). Paste these:

  # one answer, as JSON
  curl -s http://{host}:{port}/v1/agents/echo-agent/run -H 'content-type: application/json' \\
       -d '{{"input": "what is 6 * 7", "session_id": "demo-1"}}'

  # a second call in the same session: the answer ends with history=2 (the first exchange)
  curl -s http://{host}:{port}/v1/agents/echo-agent/run -H 'content-type: application/json' \\
       -d '{{"input": "hello again", "session_id": "demo-1"}}'

  # streamed as server-sent events, word by word
  curl -N http://{host}:{port}/v1/agents/echo-agent/run -H 'content-type: application/json' \\
       -d '{{"input": "slow: one two three", "stream": true}}'

  # a team whose leader delegates to its member
  curl -s http://{host}:{port}/v1/teams/echo-team/run -H 'content-type: application/json' \\
       -d '{{"input": "delegate: 3 + 4"}}'

  # what is served, in AgentOS's shape
  curl -s http://{host}:{port}/config

  # the gateway's own Prometheus metrics, on its admin listener (its /admin API needs admin_key)
  curl -s http://{host}:{admin_port}/metrics | grep agentos_gateway_requests_total
"""

POOL_DEMO_HEADER = """\
agentos-gateway demo: http://{host}:{port} is a gateway in front of {count} AgentOS upstream(s):
{upstreams}
Each serves echo-agent, echo-team and echo-workflow (an offline deterministic model: 'a op b' is
computed, anything else echoed). Every answer ends with [instance=NAME history=H]: the upstream
that ran it, and how many history messages it saw. `curl -i` shows the headers
x-agentos-gateway-upstream (who answered) and x-agentos-gateway-affinity (hit: the session's own
upstream; moved: it failed over; new: the gateway made the session id). Paste these:
"""

POOL_DEMO_LINES = """
  # {sessions}
  curl -si {url}/v1/agents/echo-agent/run -H 'content-type: application/json' \\
       -d '{{"input": "what is 6 * 7", "session_id": "{first}"}}'
  curl -si {url}/v1/agents/echo-agent/run -H 'content-type: application/json' \\
       -d '{{"input": "what is 2 + 3", "session_id": "{second}"}}'

  # {first} again: the same upstream, and the answer ends with history=2 (the first exchange)
  curl -si {url}/v1/agents/echo-agent/run -H 'content-type: application/json' \\
       -d '{{"input": "hello again", "session_id": "{first}"}}'

  # streamed as server-sent events, word by word (a new session: any upstream may take it)
  curl -N {url}/v1/agents/echo-agent/run -H 'content-type: application/json' \\
       -d '{{"input": "slow: one two three", "stream": true}}'

  # a team whose leader delegates to its member
  curl -s {url}/v1/teams/echo-team/run -H 'content-type: application/json' \\
       -d '{{"input": "delegate: 3 + 4"}}'
{doors}
  # what is served, merged from every upstream, in AgentOS's shape
  curl -s {url}/config

  # the gateway's own Prometheus metrics and upstream health, on its admin listener
  # (its /admin API needs admin_key)
  curl -s {admin_url}/metrics | grep agentos_gateway_upstream_healthy

Ctrl-C stops the gateway and its {count} upstream(s).
"""


POOL_DEMO_DOORS = """
  # AgentOS's other doors, each conversation kept on its upstream like a session:
  # AG-UI (CopilotKit and other AG-UI frontends): the thread is the session
  curl -N {url}/agui -H 'content-type: application/json' -d '{{"threadId": "thread-1", "runId": "r1",
       "messages": [{{"id": "m1", "role": "user", "content": "what is 6 * 7"}}], "state": {{}}, "tools": [],
       "context": [], "forwardedProps": {{}}}}'
  # A2A (agno's RemoteAgent(base_url="{url}/a2a/agents/echo-agent", protocol="a2a") too): the context
  curl -s {url}/a2a/agents/echo-agent/v1/message:send -H 'content-type: application/json' -d '{{"jsonrpc":
       "2.0", "id": "1", "method": "message/send", "params": {{"message": {{"messageId": "m1", "role": "user",
       "contextId": "ctx-1", "parts": [{{"kind": "text", "text": "what is 6 * 7"}}]}}}}}}'
  # MCP (Claude, Cursor, any MCP client; fastmcp's command line here): the MCP session
  .venv/bin/fastmcp call {url}/mcp run_agent agent_id=echo-agent message="what is 6 * 7" session_id=mcp-1
  # the workflow WebSocket: send {{"action": "start-workflow", "workflow_id": "echo-workflow",
  # "message": "hi", "session_id": "ws-1"}}
  .venv/bin/python -m websockets ws://{ws_host}/workflows/ws
"""


def _shown_host(host: str) -> str:
    return "localhost" if host in ("127.0.0.1", "0.0.0.0") else host


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.settings import DEFAULT_ADMIN_PORT

    if args.admin_port is None:
        args.admin_port = DEFAULT_ADMIN_PORT
    if args.upstreams == 0:
        return _demo_in_process(args)
    return _demo_with_upstreams(args)


def _demo_in_process(args: argparse.Namespace) -> int:
    """The demo components served by the gateway itself."""
    from gateway.api.app import create_app
    from gateway.settings import ConfigError, admin_port_problem, load_settings

    problem = admin_port_problem(args.port, args.admin_port)
    if problem:
        return _fail_config(problem)
    try:
        admin = _admin_socket(args.host, args.admin_port, None)
    except OSError as error:
        return _cannot_listen("the admin listener", args.host, args.admin_port, error)
    admin_port = admin.getsockname()[1]
    try:
        settings = load_settings(None).model_copy(update={"host": args.host, "port": args.port})
        settings = _with_admin_port(settings, admin_port)
        app = create_app(settings)
    except ConfigError as error:
        return _fail_config(error)
    print(DEMO_LINES.format(host=_shown_host(args.host), port=args.port, admin_port=admin_port), flush=True)
    timeout = settings.limits.client_header_timeout_s
    _serve_app(app, host=args.host, port=args.port, fd=None, header_timeout_s=timeout, admin=admin)
    return 0


def _exit_on_signal(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)


def _demo_with_upstreams(args: argparse.Namespace) -> int:
    """N real upstream processes, then the gateway in front of them; both stop together."""
    from gateway.demo.upstreams import (
        DemoStartError,
        UpstreamProcesses,
        listening_socket,
        upstream_names,
        upstream_ports,
    )
    from gateway.settings import admin_port_problem

    # SIGTERM (and a closed terminal) must unwind through the ``with`` that stops the children:
    # uvicorn restores this handler after its graceful shutdown and raises the signal again.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    problem = admin_port_problem(args.port, args.admin_port)
    if problem:
        return _fail_config(problem)
    try:
        gateway_socket = listening_socket(args.host, args.port)
    except OSError as error:
        reason = error.strerror or error
        print(f"agentos-gateway demo: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return EXIT_START_FAILED
    try:
        admin_socket = listening_socket(args.host, args.admin_port)
    except OSError as error:
        gateway_socket.close()
        return _cannot_listen("the admin listener", args.host, args.admin_port, error)
    port, admin_port = gateway_socket.getsockname()[1], admin_socket.getsockname()[1]
    names = upstream_names(args.upstreams)
    try:
        with gateway_socket, admin_socket, UpstreamProcesses() as children:
            for name, upstream_port in zip(names, upstream_ports(port, args.upstream_base_port, len(names))):
                children.start(name, args.host, upstream_port)
            children.wait_until_up()
            try:
                app = _pool_demo_app(args.host, port, admin_port, children.children)
            except ValueError as error:  # ConfigError, or a GATEWAY_* variable pydantic refused
                return _fail_config(error)
            print(_pool_demo_lines(_shown_host(args.host), port, admin_port, children.children), flush=True)
            timeout = app.state.services.settings.limits.client_header_timeout_s
            _serve_app(
                app, host=args.host, port=port, fd=gateway_socket.fileno(), header_timeout_s=timeout, admin=admin_socket
            )
    except DemoStartError as error:
        print(f"agentos-gateway demo: {error}", file=sys.stderr)
        return EXIT_START_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def _pool_demo_app(host: str, port: int, admin_port: int, children: List[Any]) -> Any:
    """The gateway in front of ``children``, nothing local (so no id is served twice)."""
    from gateway.api.app import create_app
    from gateway.settings import AdminSettings, LocalEntities, Settings, UpstreamConfig

    upstreams = [UpstreamConfig(name=child.name, url=child.url, weight=1.0) for child in children]
    admin = AdminSettings(port=admin_port)
    return create_app(Settings(host=host, port=port, upstreams=upstreams, local=LocalEntities(), admin=admin))


def _pool_demo_lines(host: str, port: int, admin_port: int, children: List[Any]) -> str:
    from gateway.demo.upstreams import doors_installed, sessions_on_different_upstreams

    (first, first_home), (second, second_home) = sessions_on_different_upstreams([c.name for c in children])
    if first_home != second_home:
        sessions = f"session {first} lives on {first_home}, session {second} on {second_home} (rendezvous hashing)"
    else:
        sessions = f"sessions {first} and {second} both live on {first_home}, the only upstream"
    listing = "\n".join(f"  {c.name}  {c.url}  (pid {c.process.pid})" for c in children)
    header = POOL_DEMO_HEADER.format(host=host, port=port, count=len(children), upstreams=listing)
    url = f"http://{host}:{port}"
    doors = POOL_DEMO_DOORS.format(url=url, ws_host=f"{host}:{port}") if doors_installed() else ""
    lines = POOL_DEMO_LINES.format(
        url=url, admin_url=f"http://{host}:{admin_port}", sessions=sessions, first=first,
        second=second, count=len(children), doors=doors,
    )  # fmt: skip
    return header + lines


def _door_prefix(text: str) -> str:
    """``--doors-prefix``' type: empty, or plain path segments (``/chat``, ``/v1/ui``)."""
    import re

    if text and not re.fullmatch(r"(/[A-Za-z0-9_-]+)+", text):
        raise argparse.ArgumentTypeError(f"{text!r}: a prefix of plain segments, like /chat")
    return text


def upstream_count(text: str) -> int:
    """``--upstreams``' type: 0 (the demo in-process) up to one per letter (os-a ... os-z)."""
    from gateway.demo.upstreams import MAX_UPSTREAMS

    return _bounded_int(text, 0, MAX_UPSTREAMS, "a number of upstreams")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="agentos-gateway", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="gateway.yaml (default: $GATEWAY_CONFIG, else the demo components)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1, or the config's host)")
    serve.add_argument("--port", type=port_number, help="port to bind (default 7777, or the config's port)")
    serve.add_argument("--fd", type=int, help="serve on this inherited listening socket")
    serve.add_argument(
        "--admin-port", type=port_number,
        help="the admin listener's port: GET /metrics (Prometheus) and /admin (default: the config's admin.port, 9901)",
    )  # fmt: skip
    serve.add_argument("--admin-fd", type=int, help="serve the admin listener on this inherited listening socket")
    serve.add_argument(
        "--workers", type=lambda text: _bounded_int(text, 1, 64, "a number of workers"), default=1,
        help="worker processes (metrics are merged across them)",
    )  # fmt: skip
    serve.set_defaults(handler=cmd_serve)

    check = commands.add_parser(
        "check-config", help="validate a config, probe its upstreams once, and print the routing table"
    )
    check.add_argument("file", nargs="?", help="gateway.yaml (default: $GATEWAY_CONFIG, else the demo components)")
    check.set_defaults(handler=cmd_check_config)

    upstream = commands.add_parser("upstream", help="run a real AgentOS serving the demo components")
    upstream.add_argument("--port", type=port_number, default=7777)
    upstream.add_argument("--name", required=True, help="instance name, shown in every answer")
    upstream.add_argument("--db", help="sqlite:///FILE or postgresql://... (default: in memory)")
    upstream.add_argument("--host", default="127.0.0.1")
    upstream.add_argument("--fd", type=int, help="serve on this inherited listening socket")
    upstream.add_argument(
        "--doors", choices=("none", "all", "stateless-mcp"), default="none",
        help="also serve AG-UI, A2A and MCP (stateless-mcp: MCP without sessions); the WebSocket is always there",
    )  # fmt: skip
    upstream.add_argument(
        "--doors-prefix", default="", type=_door_prefix, help="mount AG-UI, A2A and MCP under this prefix (e.g. /chat)"
    )
    upstream.set_defaults(handler=cmd_upstream)

    demo = commands.add_parser(
        "demo", help="run demo upstreams and the gateway in front of them, and print curl examples"
    )
    demo.add_argument(
        "--upstreams", type=upstream_count, default=2,
        help="how many AgentOS upstreams to start (os-a, os-b, ...); 0: the demo components in-process",
    )  # fmt: skip
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=port_number, default=7777, help="the gateway's port (0: any free one)")
    demo.add_argument(
        "--admin-port", type=port_number,
        help="the gateway's admin listener: GET /metrics (Prometheus) and /admin (default 9901; 0: any free one)",
    )  # fmt: skip
    demo.add_argument(
        "--upstream-base-port", type=port_number,
        help="the first upstream's port, the next ones after it (default: the gateway's port + 1; 0: any free ones)",
    )  # fmt: skip
    demo.set_defaults(handler=cmd_demo)
    return root


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())

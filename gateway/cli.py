"""``agentos-gateway``: serve the gateway, run a demo AgentOS upstream, or run the demo.

    agentos-gateway serve [--config FILE] [--host H] [--port 7777]
    agentos-gateway upstream --name NAME [--port 7777] [--db sqlite:///FILE]
    agentos-gateway demo [--port 7777]

``--fd N`` (serve, upstream) listens on an inherited, already-bound socket instead of binding:
socket activation, and race-free ports for tests.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, List, Optional

# Before agno is imported anywhere: runs would otherwise post telemetry to the network.
os.environ.setdefault("AGNO_TELEMETRY", "false")

EXIT_CONFIG_ERROR = 2
MAX_PORT = 65535


def port_number(text: str) -> int:
    """``--port``'s type: checked by argparse (exit 2 naming the option), because a port given on
    the command line is applied after the settings were validated and would not be checked again."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-{MAX_PORT})")
    return port


def _serve_app(app: Any, *, host: str, port: int, fd: Optional[int]) -> None:
    import uvicorn

    listen: dict = {"fd": fd} if fd is not None else {"host": host, "port": port}
    uvicorn.run(app, log_level=os.environ.get("GATEWAY_LOG_LEVEL", "info"), access_log=False, **listen)


def _fail_config(error: Exception) -> int:
    print(f"agentos-gateway: configuration error:\n{error}", file=sys.stderr)
    return EXIT_CONFIG_ERROR


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.api.app import create_app
    from gateway.settings import ConfigError, load_settings

    try:
        settings = load_settings(args.config)
        overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
        settings = settings.model_copy(update=overrides)
        app = create_app(settings)
    except ConfigError as error:
        return _fail_config(error)
    _serve_app(app, host=settings.host, port=settings.port, fd=args.fd)
    return 0


def build_upstream_app(name: str, db_url: Optional[str]) -> Any:
    """A real AgentOS serving the demo components, answering as instance ``name``."""
    from agno.os import AgentOS

    from gateway.demo import build_demo, open_db

    demo = build_demo(instance=name, db=open_db(db_url))
    agent_os = AgentOS(
        id=name,
        name=name,
        agents=[demo.agent],
        teams=[demo.team],
        workflows=[demo.workflow],
        telemetry=False,
    )
    return agent_os.get_app()


def cmd_upstream(args: argparse.Namespace) -> int:
    try:
        app = build_upstream_app(args.name, args.db)
    except ValueError as error:
        return _fail_config(error)
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
"""


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.api.app import create_app
    from gateway.settings import ConfigError, load_settings

    try:
        settings = load_settings(None).model_copy(update={"host": args.host, "port": args.port})
        app = create_app(settings)
    except ConfigError as error:
        return _fail_config(error)
    shown_host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
    print(DEMO_LINES.format(host=shown_host, port=args.port), flush=True)
    _serve_app(app, host=args.host, port=args.port, fd=None)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="agentos-gateway", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="gateway.yaml (default: $GATEWAY_CONFIG, else the demo components)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1, or the config's host)")
    serve.add_argument("--port", type=port_number, help="port to bind (default 7777, or the config's port)")
    serve.add_argument("--fd", type=int, help="serve on this inherited listening socket")
    serve.set_defaults(handler=cmd_serve)

    upstream = commands.add_parser("upstream", help="run a real AgentOS serving the demo components")
    upstream.add_argument("--port", type=port_number, default=7777)
    upstream.add_argument("--name", required=True, help="instance name, shown in every answer")
    upstream.add_argument("--db", help="sqlite:///FILE or postgresql://... (default: in memory)")
    upstream.add_argument("--host", default="127.0.0.1")
    upstream.add_argument("--fd", type=int, help="serve on this inherited listening socket")
    upstream.set_defaults(handler=cmd_upstream)

    demo = commands.add_parser("demo", help="run the gateway with the demo components and print curl examples")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=port_number, default=7777)
    demo.set_defaults(handler=cmd_demo)
    return root


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())

"""What the gateway adds to the first event of each of AgentOS's other doors: a short loop.

One real AgentOS upstream serving every door (``agentos-gateway upstream --doors all``) and a
gateway in front of it (every feature on, its access log to a file), both on loopback. For each
door, ``--rounds`` requests alternate between the upstream directly and the gateway, each timed
from sending the request to its first event:

* AG-UI: ``POST /agui`` to the first ``data:`` line;
* A2A: ``POST /a2a/agents/echo-agent/v1/message:stream`` to the first ``data:`` line;
* MCP: a ``tools/call`` of ``run_agent`` in an initialized session, to its answer's first line;
* WebSocket: a ``start-workflow`` message on an open connection, to the first frame answering it;
* and for comparison a REST run (``POST /agents/echo-agent/runs``, streamed) to its first event.

Prints one line per door: the p50 of each side and their difference. Not a test: figures move
with the machine's load; run it on a quiet machine (``.venv/bin/python loadtests/doors_latency.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable, Dict, List, Tuple

import httpx
import websockets

MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: List[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "AGNO_TELEMETRY": "false", "GATEWAY_LOG_LEVEL": "warning"}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"doors_latency: {what} not ready within {timeout_s:g} s")


async def first_line(client: httpx.AsyncClient, url: str, body: Dict, headers: Dict[str, str]) -> float:
    started = time.perf_counter()
    async with client.stream("POST", url, json=body, headers=headers) as answer:
        answer.raise_for_status()
        elapsed = None
        async for line in answer.aiter_lines():  # to the end, so the next request starts clean
            if elapsed is None and line.startswith("data:"):
                elapsed = time.perf_counter() - started
    if elapsed is None:
        raise RuntimeError(f"{url}: no event")
    return elapsed


def rest(base: str) -> Callable[[httpx.AsyncClient], Awaitable[float]]:
    """AgentOS's own streamed run, for comparison: what the gateway adds to a REST run's first event."""

    async def one(client: httpx.AsyncClient) -> float:
        started = time.perf_counter()
        form = {"message": "what is 6 * 7", "stream": "true", "session_id": str(uuid.uuid4())}
        async with client.stream("POST", f"{base}/agents/echo-agent/runs", data=form) as answer:
            answer.raise_for_status()
            elapsed = None
            async for line in answer.aiter_lines():
                if elapsed is None and line.startswith("data:"):
                    elapsed = time.perf_counter() - started
        if elapsed is None:
            raise RuntimeError("no event")
        return elapsed

    return one


def agui(base: str) -> Callable[[httpx.AsyncClient], Awaitable[float]]:
    async def one(client: httpx.AsyncClient) -> float:
        body = {
            "threadId": str(uuid.uuid4()), "runId": str(uuid.uuid4()), "state": {}, "tools": [], "context": [],
            "forwardedProps": {}, "messages": [{"id": "m1", "role": "user", "content": "what is 6 * 7"}],
        }  # fmt: skip
        return await first_line(client, f"{base}/agui", body, {})

    return one


def a2a(base: str) -> Callable[[httpx.AsyncClient], Awaitable[float]]:
    async def one(client: httpx.AsyncClient) -> float:
        message = {"messageId": str(uuid.uuid4()), "role": "user", "contextId": str(uuid.uuid4()), "parts": [{"kind": "text", "text": "what is 6 * 7"}]}
        body = {"jsonrpc": "2.0", "id": "1", "method": "message/stream", "params": {"message": message}}
        return await first_line(client, f"{base}/a2a/agents/echo-agent/v1/message:stream", body, {})

    return one


def mcp(base: str) -> Callable[[httpx.AsyncClient], Awaitable[float]]:
    session: Dict[str, str] = {}

    async def one(client: httpx.AsyncClient) -> float:
        if not session:  # one MCP session per side, as a client keeps it
            init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "latency", "version": "1"}}}
            answer = await client.post(f"{base}/mcp", json=init, headers=MCP_HEADERS)
            answer.raise_for_status()
            session["mcp-session-id"] = answer.headers["mcp-session-id"]
            done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            await client.post(f"{base}/mcp", json=done, headers={**MCP_HEADERS, **session})
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "run_agent", "arguments": {"agent_id": "echo-agent", "message": "what is 6 * 7", "session_id": str(uuid.uuid4())}}}
        return await first_line(client, f"{base}/mcp", call, {**MCP_HEADERS, **session})

    return one


def websocket(base: str) -> Callable[[httpx.AsyncClient], Awaitable[float]]:
    url = base.replace("http://", "ws://") + "/workflows/ws"

    async def one(client: httpx.AsyncClient) -> float:
        async with websockets.connect(url, open_timeout=10) as ws:
            await asyncio.wait_for(ws.recv(), 10)  # "connected": sent on accept, not an answer to the run
            message = {"action": "start-workflow", "workflow_id": "echo-workflow", "message": "hi", "session_id": str(uuid.uuid4())}
            started = time.perf_counter()
            await ws.send(json.dumps(message))
            await asyncio.wait_for(ws.recv(), 10)
            elapsed = time.perf_counter() - started
            while True:  # to the end of the run, so the next one starts clean
                frame = await asyncio.wait_for(ws.recv(), 10)
                if "WorkflowCompleted" in str(frame) or "WorkflowError" in str(frame):
                    return elapsed

    return one


DOORS = {"rest": rest, "agui": agui, "a2a": a2a, "mcp": mcp, "websocket": websocket}


async def measure(direct: str, gateway: str, doors: List[str], rounds: int) -> List[Tuple[str, float, float]]:
    results = []
    async with httpx.AsyncClient(timeout=30) as client:
        for door in doors:
            sides = {"direct": DOORS[door](direct), "gateway": DOORS[door](gateway)}
            times: Dict[str, List[float]] = {"direct": [], "gateway": []}
            for side in sides:  # warm both: connections, imports, the first run's setup
                await sides[side](client)
            for _ in range(2):  # in blocks, twice each (a run's trailing work upstream must not land on the other side)
                for side, one in sides.items():
                    for _ in range(rounds // 2):
                        times[side].append(await one(client))
            results.append((door, statistics.median(times["direct"]), statistics.median(times["gateway"])))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--doors", default=",".join(DOORS), help="comma-separated: " + ", ".join(DOORS))
    args = parser.parse_args()
    doors = [door for door in args.doors.split(",") if door]
    unknown = [door for door in doors if door not in DOORS]
    if unknown:
        parser.error(f"unknown doors: {', '.join(unknown)}")
    work = Path(tempfile.mkdtemp(prefix="doors-latency-"))
    up_port, gw_port = free_port(), free_port()
    direct, gateway = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
    config = {
        "port": gw_port, "admin": {"port": free_port()}, "upstreams": [{"name": "os-a", "url": direct}],
        "health": {"interval_s": 1}, "shutdown": {"drain_delay_s": 0},
    }  # fmt: skip
    (work / "gateway.yaml").write_text(json.dumps(config))
    children = [start(["upstream", "--name", "os-a", "--port", str(up_port), "--doors", "all"], work / "upstream.log")]
    try:
        wait_until(lambda: httpx.get(f"{direct}/health").status_code == 200, "the upstream")
        children.append(start(["serve", "--config", str(work / "gateway.yaml")], work / "gateway.log"))
        wait_until(lambda: bool(httpx.get(f"{gateway}/config").json().get("interfaces")), "the gateway's doors")
        for door, direct_p50, gateway_p50 in asyncio.run(measure(direct, gateway, doors, args.rounds)):
            print(
                f"{door:9s} first event p50: direct {direct_p50 * 1000:7.2f} ms, through the gateway "
                f"{gateway_p50 * 1000:7.2f} ms, added {(gateway_p50 - direct_p50) * 1000:+.2f} ms ({args.rounds} rounds)"
            )
    finally:
        for child in reversed(children):
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())

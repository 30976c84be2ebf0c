"""The latency the gateway adds to AgentOS's workflow WebSocket: start-workflow to its first event
(``WorkflowStarted``) on a fresh connection, through the gateway and straight to the upstream,
alternately, and each p50/p90. Through the gateway the time includes its connection to the
upstream (made at the first run message, to know the session), so it is the whole added cost.

    .venv/bin/python loadtests/ws_first_event.py --direct ws://127.0.0.1:7778 --gateway ws://127.0.0.1:7777 \\
        [--key KEY] [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Dict, List, Optional

from websockets.asyncio.client import connect


async def first_event_s(base: str, key: Optional[str]) -> float:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with connect(base + "/workflows/ws", additional_headers=headers, open_timeout=10) as ws:
        await asyncio.wait_for(ws.recv(), 10)  # "connected"
        message = {"action": "start-workflow", "workflow_id": "echo-workflow", "message": "hi", "session_id": str(uuid.uuid4())}
        started = time.perf_counter()
        await ws.send(json.dumps(message))
        first = await asyncio.wait_for(ws.recv(), 10)
        elapsed = time.perf_counter() - started
        assert isinstance(first, str) and first.startswith("event: WorkflowStarted"), first[:100]
        return elapsed


def _quantile(values: List[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1] if len(values) > 1 else values[0]


async def main(direct: str, gateway: str, key: Optional[str], runs: int) -> None:
    times: Dict[str, List[float]] = {"direct": [], "gateway": []}
    for _ in range(3):  # warm both: imports, connection pools
        await first_event_s(direct, None)
        await first_event_s(gateway, key)
    for _ in range(runs):
        times["direct"].append(await first_event_s(direct, None))
        times["gateway"].append(await first_event_s(gateway, key))
    p50 = {name: statistics.median(values) * 1000 for name, values in times.items()}
    p90 = {name: _quantile(values, 0.9) * 1000 for name, values in times.items()}
    print(
        f"start-workflow to first event, {runs} runs each: direct p50 {p50['direct']:.2f} ms (p90 {p90['direct']:.2f}), "
        f"gateway p50 {p50['gateway']:.2f} ms (p90 {p90['gateway']:.2f}), added p50 {p50['gateway'] - p50['direct']:.2f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--direct", required=True, help="the upstream AgentOS, ws://host:port")
    parser.add_argument("--gateway", required=True, help="the gateway in front of it, ws://host:port")
    parser.add_argument("--key", help="a client key of the gateway")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.direct, args.gateway, args.key, args.runs))

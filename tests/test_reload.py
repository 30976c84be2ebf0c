"""Reloading the configuration (SIGHUP, POST /admin/reload) of a running gateway: streams in
flight finish, the new upstreams serve, a bad file is refused and the old configuration stays."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import List

import httpx
import yaml

from tests.pools import ADMIN_KEY, answered_by, gateway_config, upstream_states
from tests.processes import start_server


async def test_reload_swaps_upstreams_without_dropping_streams(log_dir, pool_upstreams, tmp_path) -> None:
    a, b = pool_upstreams
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config([a])))
    gateway = await asyncio.to_thread(start_server, "reload-gateway", ["serve", "--config", str(path)], log_dir)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    events: List[str] = []
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            async with client.stream(
                "POST", "/v1/agents/echo-agent/run", json={"input": "slow: a b c d e f g h", "stream": True}
            ) as stream:
                assert stream.headers["x-agentos-gateway-upstream"] == a.name
                async for line in stream.aiter_lines():
                    if not line.startswith("event: "):
                        continue
                    events.append(line[7:])
                    if len(events) == 1:  # mid-stream: a's place is taken by b
                        path.write_text(yaml.safe_dump(gateway_config([b])))
                        gateway.process.send_signal(signal.SIGHUP)
                        deadline = time.monotonic() + 15
                        while set(await upstream_states(gateway)) != {b.name}:
                            assert time.monotonic() < deadline, "the reload never took effect"
                            await asyncio.sleep(0.05)
            assert events[-1] == "RunCompleted", events  # the stream on the departed upstream finished
            after = await client.post("/v1/agents/echo-agent/run", json={"input": "hi"})
            assert answered_by(after.json()["content"])[0] == b.name

            path.write_text("upstreams:\n  - {name: x, url: 'http://127.0.0.1:1', weight: -1}\n")
            refused = await client.post(f"{gateway.admin_url}/admin/reload", headers=admin)
            assert refused.status_code == 400, refused.text
            assert "upstreams.0.weight" in refused.json()["detail"] and "stays" in refused.json()["detail"]
            still = await client.post("/v1/agents/echo-agent/run", json={"input": "hi"})
            assert still.status_code == 200 and answered_by(still.json()["content"])[0] == b.name

            both = gateway_config([a, b], weights={a.name: 1000, b.name: 1})
            path.write_text(yaml.safe_dump(both))
            reloaded = await client.post(f"{gateway.admin_url}/admin/reload", headers=admin)
            assert reloaded.json() == {"reloaded": True, "upstreams": [a.name, b.name]}
            homes = [
                (await client.post("/v1/agents/echo-agent/run", json={"input": "hi"})).headers["x-agentos-gateway-upstream"]
                for _ in range(10)
            ]
            assert homes.count(a.name) >= 9  # the new weight holds
    finally:
        gateway.stop()

"""The gateway raises its own file-descriptor limit at start (``gateway/fd_limit.py``), and says
when even the hard limit is below what its limits can use."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from pathlib import Path
from typing import Optional, Tuple

import yaml

from gateway.fd_limit import FD_MARGIN, needed_fds


def test_what_the_limits_can_use() -> None:
    assert needed_fds(1000, 1000) == 2000 + FD_MARGIN
    assert needed_fds(10, 100) == 20 + 180 + FD_MARGIN  # a non-stream run holds two sockets too


async def _fd_line(tmp_path: Path, soft: int, hard: int) -> Tuple[Optional[dict], int]:
    """The gateway's fd-limit log line when started with these limits, and the limit it ran with."""
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"port": 0, "admin": {"port": 0}, "shutdown": {"drain_delay_s": 0}}))

    def lowered() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, preexec_fn=lowered,
        env={**os.environ, "AGNO_TELEMETRY": "false"},
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            assert process.stdout is not None
            async for raw in process.stdout:
                line = raw.decode(errors="replace")
                if "fd_limit" in line:
                    found = json.loads(line)
                    limit = int(open(f"/proc/{process.pid}/limits").read().split("Max open files")[1].split()[0])
                    return found, limit
                if "Application startup complete" in line:
                    limit = int(open(f"/proc/{process.pid}/limits").read().split("Max open files")[1].split()[0])
                    return None, limit
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 15)
    raise AssertionError("the gateway ended before starting")


async def test_the_soft_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    line, limit = await _fd_line(tmp_path, 256, hard)
    assert limit == hard
    if hard > 256:
        assert line is not None and line["message"] == f"file-descriptor limit raised from 256 to {hard}"


async def test_a_hard_limit_below_the_limits_needs_is_said(tmp_path: Path) -> None:
    line, limit = await _fd_line(tmp_path, 256, 512)
    assert limit == 512
    assert line is not None and line["level"] == "warning"
    assert "the file-descriptor limit is 512, below the 2256" in line["message"] and "limits.max_streams" in line["message"]

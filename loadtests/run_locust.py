"""``make loadtest``: the demo gateway (two real AgentOS upstreams), locust headless against it for
a fixed time, then the demo stopped. Exits with locust's code: non-zero on any failure.

    python loadtests/run_locust.py [--time 30s] [--users 10] [--spawn-rate 5] [--upstreams 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
STARTUP_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_a_run(url: str, demo: subprocess.Popen, log: Path) -> None:
    """Until the gateway answers a run (its upstreams up and probed)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    body = json.dumps({"input": "hello"}).encode()
    while time.monotonic() < deadline:
        if demo.poll() is not None:
            raise RuntimeError(f"the demo exited ({demo.returncode}):\n{log.read_text(errors='replace')[-2000:]}")
        request = urllib.request.Request(
            f"{url}/v1/agents/echo-agent/run", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(request, timeout=10) as answer:
                if answer.status == 200:
                    return
        time.sleep(0.3)
    raise RuntimeError(f"the demo gateway did not answer a run within {STARTUP_TIMEOUT_S:g} s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (the demo then stops its upstreams); SIGKILL to its process group if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=25)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the demo and its upstreams only
        process.wait(timeout=10)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time", default="30s", help="locust's -t (default 30s)")
    parser.add_argument("--users", type=int, default=10, help="locust's -u (default 10)")
    parser.add_argument("--spawn-rate", type=float, default=5, help="locust's -r (default 5)")
    parser.add_argument("--upstreams", type=int, default=2, help="demo upstreams (default 2)")
    args = parser.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="agentos-loadtest-")) / "demo.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"AGNO_TELEMETRY": "false", "GATEWAY_LOG_LEVEL": "warning"})
    with open(log, "wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "demo", "--upstreams", str(args.upstreams), "--port", str(port),
             "--upstream-base-port", "0", "--admin-port", "0"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches this script, which stops the demo in order
        )  # fmt: skip
    try:
        print(f"loadtest: demo gateway on {url} (pid {demo.pid}, log {log}); waiting for its upstreams", flush=True)
        wait_for_a_run(url, demo, log)
        command = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
            "-t", args.time, "-u", str(args.users), "-r", str(args.spawn_rate), "--host", url,
            "--stop-timeout", "10", "--exit-code-on-error", "1",
        ]  # fmt: skip
        print("loadtest: " + " ".join(command[2:]), flush=True)
        code = subprocess.run(command, cwd=ROOT).returncode
    except KeyboardInterrupt:
        code = 130
    except RuntimeError as error:
        print(f"loadtest: {error}", file=sys.stderr)
        code = 1
    finally:
        stop(demo)
    print(f"loadtest: {'passed' if code == 0 else f'FAILED (exit {code})'}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

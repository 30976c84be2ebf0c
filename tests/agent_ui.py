"""agno's Agent UI as a browser drives it: each call after its CORS preflight, from the UI's
origin (AgentOS's default allowed origin), for the tests that play the UI's call sequence."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import httpx

from tests.processes import Server

AGENT_UI = "http://localhost:3000"
TIMEOUT_S = 60.0


class AgentUI:
    """The calls of agno's Agent UI, each after its CORS preflight, as a browser sends them."""

    def __init__(self, server: Server) -> None:
        self.client = httpx.Client(base_url=server.url, timeout=TIMEOUT_S)

    def call(self, method: str, path: str, *, json_content: bool = True, **kwargs: Any) -> httpx.Response:
        preflight = self.client.options(
            path,
            headers={
                "Origin": AGENT_UI,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200, (method, path, preflight.text)
        assert preflight.headers["access-control-allow-origin"] == AGENT_UI
        assert method in preflight.headers["access-control-allow-methods"]
        headers = {"Origin": AGENT_UI, **({"Content-Type": "application/json"} if json_content else {})}
        answer = self.client.request(method, path, headers=headers, **kwargs)
        assert answer.headers.get("access-control-allow-origin") == AGENT_UI, (method, path, answer.headers)
        return answer

    def run(self, agent_id: str, message: str, session_id: str = "") -> List[Tuple[str, Dict[str, Any]]]:
        """The form run as the UI sends it (multipart, ``stream=true``): its SSE events."""
        files = {"message": (None, message), "stream": (None, "true"), "session_id": (None, session_id)}
        answer = self.call("POST", f"/agents/{agent_id}/runs", json_content=False, files=files)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/event-stream")
        return sse_events(answer.text)

    def close(self) -> None:
        self.client.close()


def sse_events(text: str) -> List[Tuple[str, Dict[str, Any]]]:
    events = []
    for frame in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events



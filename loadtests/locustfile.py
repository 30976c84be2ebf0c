"""Mixed traffic against a gateway in front of the demo upstreams (``make loadtest``).

    locust -f loadtests/locustfile.py --headless -t 30s -u 10 -r 5 --host http://127.0.0.1:7777

Users, each checking what it gets back, any surprise a failure:

* ``ChatUser``: multi-turn streamed chats (v1 JSON, ``stream: true``), one session id across its
  turns; every answer ends with ``[instance=NAME history=H]``: NAME must stay the session's
  upstream (affinity) and H must grow turn after turn (the session remembers).
* ``OneShotUser``: runs without a session (each a new one: ``history=0``), JSON answers.
* ``TeamWorkflowUser``: a delegating team run and a workflow run.
* ``CancelUser``: starts a ``slow:`` stream with its own run id, cancels it with AgentOS's
  ``POST /agents/echo-agent/runs/{run_id}/cancel`` after the first content, and expects
  ``RunCancelled`` in the stream.

SSE timing goes to locust's statistics as custom entries (through its ``request`` event):
``SSE / time to first event`` (ms, request sent to the first ``data:`` line) and
``SSE / events per run`` (the count, shown in the response-time columns).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

from locust import HttpUser, between, events, task

INSTANCE = re.compile(r"\[instance=(?P<name>\S+) history=(?P<history>\d+)\]")
TURNS_PER_SESSION = 4
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def _instance(content: str) -> Tuple[str, int]:
    match = INSTANCE.search(content or "")
    if match is None:
        raise AssertionError(f"no [instance=... history=...] suffix in {content!r}")
    return match["name"], int(match["history"])


class StreamedRun:
    """One SSE answer read line by line: its events, and when the first one arrived."""

    def __init__(self) -> None:
        self.events: List[Dict[str, Any]] = []
        self.first_event_ms: Optional[float] = None

    def read(self, response: Any, sent: float, on_event: Any = None) -> None:
        for line in response.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data:"):
                continue
            if self.first_event_ms is None:
                self.first_event_ms = (time.perf_counter() - sent) * 1000
            event = json.loads(line[5:].strip())
            self.events.append(event)
            if on_event is not None:
                on_event(event)

    def named(self, name: str) -> List[Dict[str, Any]]:
        return [event for event in self.events if event.get("event") == name]


class GatewayUser(HttpUser):
    abstract = True
    wait_time = between(0.1, 0.5)

    def sse_metrics(self, run: StreamedRun) -> None:
        fire = self.environment.events.request.fire
        if run.first_event_ms is not None:
            fire(request_type="SSE", name="time to first event", response_time=run.first_event_ms,
                 response_length=0, exception=None, context={})  # fmt: skip
        fire(request_type="SSE", name="events per run", response_time=len(run.events),
             response_length=0, exception=None, context={})  # fmt: skip

    def stream(self, path: str, body: Dict[str, Any], name: str, on_event: Any = None) -> Tuple[Any, StreamedRun]:
        """A streamed run; the response (for its status, headers and ``failure()``) and its events."""
        run = StreamedRun()
        sent = time.perf_counter()
        with self.client.post(path, json={**body, "stream": True}, headers=JSON_HEADERS, stream=True,
                              catch_response=True, name=name) as response:  # fmt: skip
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return response, run
            try:
                run.read(response, sent, on_event)
            except Exception as error:  # noqa: BLE001 - reported to locust
                response.failure(f"stream broken: {error!r}")
                return response, run
            response.success()
        self.sse_metrics(run)
        return response, run


class ChatUser(GatewayUser):
    """Multi-turn streamed chat sessions."""

    weight = 4

    def on_start(self) -> None:
        self._new_session()

    def _new_session(self) -> None:
        self.session_id = f"locust-{uuid.uuid4()}"
        self.turn = 0
        self.home: Optional[str] = None
        self.history = -1

    @task
    def chat_turn(self) -> None:
        response, run = self.stream(
            "/v1/agents/echo-agent/run",
            {"input": f"turn {self.turn} of a chat", "session_id": self.session_id, "user_id": "locust"},
            name="/v1/agents/echo-agent/run [chat turn, stream]",
        )
        completed = run.named("RunCompleted")
        if response.status_code != 200 or not completed:
            self._fail("chat turn", f"no RunCompleted (events: {[e.get('event') for e in run.events][-5:]})")
            self._new_session()
            return
        try:
            instance, history = _instance(completed[-1].get("content", ""))
            if self.home is not None and instance != self.home:
                raise AssertionError(f"session {self.session_id} moved from {self.home} to {instance}")
            if history <= self.history:
                raise AssertionError(f"history did not grow: {self.history} then {history}")
            upstream = response.headers.get("x-agentos-gateway-upstream")
            if upstream and upstream != instance:
                raise AssertionError(f"header says {upstream}, the answer says {instance}")
        except AssertionError as error:
            self._fail("chat turn", str(error))
            self._new_session()
            return
        self.home, self.history = instance, history
        self.turn += 1
        if self.turn >= TURNS_PER_SESSION:
            self._new_session()

    def _fail(self, name: str, message: str) -> None:
        self.environment.events.request.fire(
            request_type="CHECK", name=name, response_time=0, response_length=0,
            exception=AssertionError(message), context={},
        )  # fmt: skip


class OneShotUser(GatewayUser):
    """Runs without a session: each is a new session, so the model saw no history."""

    weight = 3

    @task
    def one_shot(self) -> None:
        with self.client.post("/v1/agents/echo-agent/run", json={"input": "what is 6 * 7"}, headers=JSON_HEADERS,
                              catch_response=True, name="/v1/agents/echo-agent/run [one-shot]") as response:  # fmt: skip
            try:
                body = response.json()
                assert response.status_code == 200, f"status {response.status_code}"
                assert body.get("status") == "COMPLETED", f"status {body.get('status')}"
                assert "6 * 7 = 42" in body.get("content", ""), body.get("content")
                assert _instance(body["content"])[1] == 0, "a run without a session saw history"
                assert body.get("session_id"), "no session id made for the run"
            except (AssertionError, ValueError, KeyError) as error:
                response.failure(str(error))


class TeamWorkflowUser(GatewayUser):
    """A delegating team and a workflow, JSON and streamed."""

    weight = 1

    @task
    def team(self) -> None:
        with self.client.post("/v1/teams/echo-team/run", json={"input": "delegate: 3 + 4"}, headers=JSON_HEADERS,
                              catch_response=True, name="/v1/teams/echo-team/run") as response:  # fmt: skip
            try:
                body = response.json()
                assert response.status_code == 200 and body.get("status") == "COMPLETED", response.text[:200]
                assert "Member said: 3 + 4 = 7" in body.get("content", ""), body.get("content")
            except (AssertionError, ValueError) as error:
                response.failure(str(error))

    @task
    def workflow(self) -> None:
        response, run = self.stream(
            "/v1/workflows/echo-workflow/run", {"input": "10 / 4"}, name="/v1/workflows/echo-workflow/run [stream]"
        )
        done = run.named("WorkflowCompleted")
        if response.status_code == 200 and (not done or "10 / 4 = 2.5" not in done[-1].get("content", "")):
            self.environment.events.request.fire(
                request_type="CHECK", name="workflow", response_time=0, response_length=0,
                exception=AssertionError(f"no WorkflowCompleted with 2.5 in {[e.get('event') for e in run.events]}"),
                context={},
            )  # fmt: skip


class CancelUser(GatewayUser):
    """A slow stream cancelled mid-way through AgentOS's cancel route."""

    weight = 1
    wait_time = between(0.5, 1.0)

    @task
    def cancel_a_slow_stream(self) -> None:
        run_id = str(uuid.uuid4())
        cancelled: Dict[str, Any] = {}

        def on_event(event: Dict[str, Any]) -> None:
            if event.get("event") == "RunContent" and "status" not in cancelled:
                answer = self.client.post(f"/agents/echo-agent/runs/{run_id}/cancel", name="/agents/echo-agent/runs/{run_id}/cancel")
                cancelled["status"] = answer.status_code

        response, run = self.stream(
            "/v1/agents/echo-agent/run",
            {"input": "slow: one two three four five six seven eight", "run_id": run_id},
            name="/v1/agents/echo-agent/run [slow, cancelled]",
            on_event=on_event,
        )
        if response.status_code != 200:
            return
        problem = None
        if cancelled.get("status") != 200:
            problem = f"cancel answered {cancelled.get('status')}"
        elif not run.named("RunCancelled"):
            problem = f"no RunCancelled in {[e.get('event') for e in run.events]}"
        if problem:
            self.environment.events.request.fire(
                request_type="CHECK", name="cancel", response_time=0, response_length=0,
                exception=AssertionError(problem), context={},
            )  # fmt: skip


@events.quitting.add_listener
def _fail_on_any_failure(environment: Any, **kwargs: Any) -> None:
    """Locust's own rule (exit 1 on any failure), made explicit for `make loadtest`."""
    if environment.stats.total.fail_ratio > 0:
        environment.process_exit_code = 1

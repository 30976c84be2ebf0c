"""``AgentOSRunner``: run an agno Agent, Team or Workflow in-process or on a remote server,
with agno's ``arun()`` signature and agno's own return types either way.

Remote failures surface as httpx's exceptions, never swallowed:

* ``httpx.HTTPStatusError``: the server answered >= 400 (for a stream, before the first event);
* ``httpx.ConnectError``, ``httpx.TimeoutException`` and the rest of ``httpx.RequestError``.

A run that fails inside the model is not an exception: it is a ``RunOutput`` with
``status=ERROR``, or an error event in the stream, exactly as agno reports it locally.
"""

from __future__ import annotations

import asyncio
from uuid import uuid4
from typing import Any, AsyncIterator, Dict, Iterator, Literal, Optional, Sequence, Union

import httpx
from agno.agent import Agent
from agno.media import Audio, File, Image, Video
from agno.team import Team
from agno.workflow import Workflow

from gateway.wire.encoding import agentos_form, v1_body
from gateway.wire.kinds import EntityKind
from gateway.wire.sse import iter_data

Protocol = Literal["v1", "agentos"]
LocalComponent = Union[Agent, Team, Workflow]
DEFAULT_TIMEOUT_S = 300.0


class AgentOSRunner:
    """One client for one agent, team or workflow, local or remote.

    Local: ``AgentOSRunner(agent=...)`` (or ``team=``, ``workflow=``).
    Remote: ``AgentOSRunner(base_url=..., agent_id=...)`` (or ``team_id=``, ``workflow_id=``),
    speaking the gateway's v1 JSON API (``protocol="v1"``) or a plain AgentOS's form API
    (``protocol="agentos"``). One shared ``httpx.AsyncClient``; ``async with`` closes it.
    """

    def __init__(
        self,
        agent: Optional[Agent] = None,
        team: Optional[Team] = None,
        workflow: Optional[Workflow] = None,
        *,
        base_url: Optional[str] = None,
        agent_id: Optional[str] = None,
        team_id: Optional[str] = None,
        workflow_id: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        protocol: Protocol = "v1",
        headers: Optional[Dict[str, str]] = None,
    ) -> None:
        local = {EntityKind.AGENT: agent, EntityKind.TEAM: team, EntityKind.WORKFLOW: workflow}
        remote = {EntityKind.AGENT: agent_id, EntityKind.TEAM: team_id, EntityKind.WORKFLOW: workflow_id}
        given_local = [kind for kind, value in local.items() if value is not None]
        given_remote = [kind for kind, value in remote.items() if value is not None]

        if given_local and (given_remote or base_url is not None):
            raise ValueError("give either a local agent/team/workflow or base_url with an id, not both")
        if given_local:
            if len(given_local) > 1:
                raise ValueError("give exactly one of agent, team or workflow")
            if api_key is not None:
                raise ValueError("api_key is for remote runners (base_url)")
            self.kind = given_local[0]
            self.component: Optional[LocalComponent] = local[self.kind]
            self.entity_id: str = getattr(self.component, "id", None) or ""
            self.base_url: Optional[str] = None
        else:
            if base_url is None:
                raise ValueError("give a local agent/team/workflow, or base_url with agent_id, team_id or workflow_id")
            if len(given_remote) != 1:
                raise ValueError("give base_url with exactly one of agent_id, team_id or workflow_id")
            if protocol not in ("v1", "agentos"):
                raise ValueError(f"protocol must be 'v1' or 'agentos', not {protocol!r}")
            if timeout is None or timeout <= 0:
                raise ValueError("timeout must be a positive number of seconds")
            self.kind = given_remote[0]
            self.component = None
            self.entity_id = str(remote[self.kind])
            self.base_url = base_url.rstrip("/")
        self.protocol: Protocol = protocol
        self.timeout = timeout
        self._headers = dict(headers or {})
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._client: Optional[httpx.AsyncClient] = None
        self._client_loop: Optional[asyncio.AbstractEventLoop] = None
        self._sync_runner: Optional[asyncio.Runner] = None

    @property
    def is_remote(self) -> bool:
        return self.base_url is not None

    # -- running ---------------------------------------------------------------------------------

    def arun(
        self,
        input: Any,
        *,
        stream: bool = False,
        stream_events: Optional[bool] = None,
        user_id: Optional[str] = None,
        session_id: Optional[str] = None,
        session_state: Optional[Dict[str, Any]] = None,
        audio: Optional[Sequence[Audio]] = None,
        images: Optional[Sequence[Image]] = None,
        videos: Optional[Sequence[Video]] = None,
        files: Optional[Sequence[File]] = None,
        retries: Optional[int] = None,
        knowledge_filters: Optional[Any] = None,
        add_history_to_context: Optional[bool] = None,
        add_dependencies_to_context: Optional[bool] = None,
        add_session_state_to_context: Optional[bool] = None,
        dependencies: Optional[Dict[str, Any]] = None,
        metadata: Optional[Dict[str, Any]] = None,
        debug_mode: Optional[bool] = None,
        **kwargs: Any,
    ) -> Any:
        """A coroutine giving the run's output, or with ``stream=True`` an async iterator of events.

        ``stream_events=None`` means agno's local default (content events only); a remote runner
        sends that choice explicitly, so local and remote runs yield the same events.
        """
        params: Dict[str, Any] = {
            "stream_events": stream_events,
            "user_id": user_id,
            "session_id": session_id,
            "session_state": session_state,
            "audio": audio,
            "images": images,
            "videos": videos,
            "files": files,
            "retries": retries,
            "knowledge_filters": knowledge_filters,
            "add_history_to_context": add_history_to_context,
            "add_dependencies_to_context": add_dependencies_to_context,
            "add_session_state_to_context": add_session_state_to_context,
            "dependencies": dependencies,
            "metadata": metadata,
            "debug_mode": debug_mode,
            **kwargs,
        }
        params = {key: value for key, value in params.items() if value is not None}
        if not self.is_remote:
            assert self.component is not None
            # A remote server starts a new session when none is named; agno's local arun would
            # reuse the component's last one. Same arguments, same behaviour: a new session.
            params.setdefault("session_id", str(uuid4()))
            return self.component.arun(input, stream=stream, **params)  # type: ignore[call-overload]
        params["stream_events"] = bool(stream_events)
        if stream:
            return self._remote_stream(input, params)
        return self._remote_run(input, params)

    async def acancel(self, run_id: str) -> bool:
        """Ask for the run to be cancelled; True when the cancel was accepted.

        AgentOS accepts a cancel for any run id (even one not started yet, which is then
        cancelled on start), so True does not prove the run existed.
        """
        if not self.is_remote:
            assert self.component is not None
            return bool(await self.component.acancel_run(run_id))
        url = f"{self.base_url}/{self.kind.path}/{self.entity_id}/runs/{run_id}/cancel"
        response = await self._http().post(url, headers=self._headers)
        response.raise_for_status()
        return True

    async def _remote_run(self, input: Any, params: Dict[str, Any]) -> Any:
        response = await self._http().post(**self._request(input, stream=False, params=params))
        response.raise_for_status()
        return self.kind.output_from_dict(response.json())

    async def _remote_stream(self, input: Any, params: Dict[str, Any]) -> AsyncIterator[Any]:
        async with self._http().stream("POST", **self._request(input, stream=True, params=params)) as response:
            if response.status_code >= 400:
                await response.aread()
                response.raise_for_status()
            async for data in iter_data(response.aiter_lines()):
                try:
                    yield self.kind.event_from_dict(data)
                except ValueError:
                    # agno's client skips event types it does not know; so does the runner.
                    continue

    def _request(self, input: Any, *, stream: bool, params: Dict[str, Any]) -> Dict[str, Any]:
        if self.protocol == "v1":
            return {
                "url": f"{self.base_url}/v1/{self.kind.path}/{self.entity_id}/run",
                "json": v1_body(input, stream=stream, params=params),
                "headers": self._headers,
            }
        return {
            "url": f"{self.base_url}/{self.kind.path}/{self.entity_id}/runs",
            "data": agentos_form(input, stream=stream, params=params),
            "headers": self._headers,
        }

    # -- the shared client -----------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout))
            self._client_loop = loop
        elif self._client_loop is not loop:
            raise RuntimeError("this AgentOSRunner's client belongs to another event loop: use one runner per loop")
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._client_loop = None

    async def __aenter__(self) -> "AgentOSRunner":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    # -- sync face, for scripts ------------------------------------------------------------------

    def run(self, input: Any, *, stream: bool = False, **kwargs: Any) -> Any:
        """``arun`` for code without an event loop: the output, or an iterator of events.

        The runner keeps one private event loop for its sync calls; ``close()`` ends it.
        """
        if _loop_is_running():
            raise RuntimeError("AgentOSRunner.run() cannot be called from a running event loop: await arun()")
        if stream:
            return self._iterate_sync(self.arun(input, stream=True, **kwargs))
        return self._sync().run(self._await(self.arun(input, stream=False, **kwargs)))

    def _iterate_sync(self, events: AsyncIterator[Any]) -> Iterator[Any]:
        runner = self._sync()
        try:
            while True:
                try:
                    yield runner.run(self._await(events.__anext__()))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                runner.run(self._await(aclose()))

    @staticmethod
    async def _await(awaitable: Any) -> Any:
        return await awaitable

    def _sync(self) -> asyncio.Runner:
        if self._sync_runner is None:
            self._sync_runner = asyncio.Runner()
        return self._sync_runner

    def close(self) -> None:
        """Close the client and the private loop of the sync face."""
        if self._sync_runner is not None:
            self._sync_runner.run(self.aclose())
            self._sync_runner.close()
            self._sync_runner = None

    def __enter__(self) -> "AgentOSRunner":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _loop_is_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True

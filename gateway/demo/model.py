"""An offline, deterministic agno model: no network, no key, the same answer every time.

What it answers to the last user message:

* ``a op b`` anywhere in the text (``+ - * /``): the arithmetic, ``6 * 7 = 42``;
* ``delegate: task`` (a team leader holding agno's delegation tool): a real tool call to
  ``delegate_task_to_member``, then ``Member said: <result>`` once the tool answered;
* ``fail: x``: raises, so the run fails in-band (``status: ERROR`` / ``RunError``);
* ``slow: x``: an echo streamed with 0.25 s before each chunk (for cancel and timeout demos);
* anything else: ``Echo: <text>``.

Every answer ends with ``[instance=NAME history=H]``: which server answered, and how many
history messages it saw, so a person or a test sees where a run went and whether the
session continued there.
"""

from __future__ import annotations

import asyncio
import json
import operator
import re
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator, List, Optional
from uuid import uuid4

from agno.metrics import MessageMetrics
from agno.models.base import Model
from agno.models.message import Message
from agno.models.response import ModelResponse

DELEGATION_TOOL = "delegate_task_to_member"
MEMBER_ID = "member-agent"
SLOW_CHUNK_DELAY_S = 0.25

_ARITHMETIC = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/])\s*(-?\d+(?:\.\d+)?)")
_WORDS = re.compile(r"\S+\s*")
_OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


class DeterministicFailure(RuntimeError):
    """What ``fail: x`` raises: the model's failure, reported in-band by agno."""


@dataclass
class _Plan:
    """What the model will answer: a text, or one tool call."""

    text: str = ""
    tool_call: Optional[dict] = None
    slow: bool = False


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _arithmetic(text: str) -> Optional[str]:
    match = _ARITHMETIC.search(text)
    if match is None:
        return None
    left, op, right = float(match.group(1)), match.group(2), float(match.group(3))
    result = "undefined" if op == "/" and right == 0 else _number(_OPERATORS[op](left, right))
    return f"{match.group(1)} {op} {match.group(3)} = {result}"


def _offers_tool(tools: Optional[List[Any]], name: str) -> bool:
    for tool in tools or []:
        function = tool.get("function", {}) if isinstance(tool, dict) else {}
        if function.get("name") == name:
            return True
    return False


@dataclass
class DeterministicModel(Model):
    id: str = "deterministic-v1"
    name: str = "DeterministicModel"
    provider: str = "Deterministic"
    instance: str = "local"

    # Stateless on purpose: AgentOS shares one model instance across concurrent runs.

    def _plan(self, messages: List[Message], tools: Optional[List[Any]]) -> _Plan:
        history = sum(1 for m in messages if m.from_history)
        suffix = f" [instance={self.instance} history={history}]"
        current = [m for m in messages if not m.from_history]
        last = current[-1] if current else None
        if last is not None and last.role == "tool":
            return _Plan(text=f"Member said: {last.get_content_string()}{suffix}")
        user = next((m for m in reversed(current) if m.role == "user"), None)
        text = user.get_content_string().strip() if user is not None else ""
        command, _, rest = text.partition(":")
        command, rest = command.strip().lower(), rest.strip()
        if command == "fail":
            raise DeterministicFailure(f"deterministic failure: {rest}")
        if command == "delegate" and _offers_tool(tools, DELEGATION_TOOL):
            arguments = json.dumps({"member_id": MEMBER_ID, "task": rest})
            call = {
                "id": f"call_{uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": DELEGATION_TOOL, "arguments": arguments},
            }
            return _Plan(tool_call=call)
        answer = _arithmetic(text) or f"Echo: {text}"
        return _Plan(text=answer + suffix, slow=command == "slow")

    @staticmethod
    def _usage(messages: List[Message], plan: _Plan) -> MessageMetrics:
        output = len(plan.text.split()) if plan.text else 1
        return MessageMetrics(input_tokens=len(messages), output_tokens=output, total_tokens=len(messages) + output)

    def _response(self, messages: List[Message], plan: _Plan) -> ModelResponse:
        return ModelResponse(
            role="assistant",
            content=plan.text or None,
            tool_calls=[plan.tool_call] if plan.tool_call else [],
            response_usage=self._usage(messages, plan),
        )

    def _chunks(self, messages: List[Message], plan: _Plan) -> Iterator[ModelResponse]:
        if plan.tool_call is not None:
            yield self._response(messages, plan)
            return
        words = _WORDS.findall(plan.text) or [plan.text]
        for index, word in enumerate(words):
            last = index == len(words) - 1
            yield ModelResponse(
                role="assistant", content=word, response_usage=self._usage(messages, plan) if last else None
            )

    def invoke(self, *args: Any, messages: List[Message], tools: Any = None, **kwargs: Any) -> ModelResponse:
        plan = self._plan(messages, tools)
        if plan.slow:
            time.sleep(SLOW_CHUNK_DELAY_S * len(_WORDS.findall(plan.text)))
        return self._response(messages, plan)

    async def ainvoke(self, *args: Any, messages: List[Message], tools: Any = None, **kwargs: Any) -> ModelResponse:
        plan = self._plan(messages, tools)
        if plan.slow:
            await asyncio.sleep(SLOW_CHUNK_DELAY_S * len(_WORDS.findall(plan.text)))
        return self._response(messages, plan)

    def invoke_stream(
        self, *args: Any, messages: List[Message], tools: Any = None, **kwargs: Any
    ) -> Iterator[ModelResponse]:
        plan = self._plan(messages, tools)
        for chunk in self._chunks(messages, plan):
            if plan.slow:
                time.sleep(SLOW_CHUNK_DELAY_S)
            yield chunk

    async def ainvoke_stream(
        self, *args: Any, messages: List[Message], tools: Any = None, **kwargs: Any
    ) -> AsyncIterator[ModelResponse]:
        plan = self._plan(messages, tools)
        for chunk in self._chunks(messages, plan):
            if plan.slow:
                await asyncio.sleep(SLOW_CHUNK_DELAY_S)
            yield chunk

    # The provider-parsing hooks are unused: invoke* already return ModelResponse.
    def _parse_provider_response(self, response: Any, **kwargs: Any) -> ModelResponse:
        return response

    def _parse_provider_response_delta(self, response: Any) -> ModelResponse:
        return response

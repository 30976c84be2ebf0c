"""Schemathesis over the gateway's own OpenAPI schemas (``GET /openapi.json`` of a real process,
on its public port and on its admin listener): no input, valid or not, gets a 5xx answer or hangs
(every call has a timeout).

Every operation gets positive and negative cases from the schema; to reach past the 400/404
gates, as many again name a served entity (``echo-agent`` on the agent routes, ...) or, on the
admin routes (the admin listener's schema), a real upstream. The AgentOS-native run and continue routes read their form
themselves, so FastAPI declares no body for them: AgentOS's form fields are added to the schema
here. On the pool gateway the admin key is sent, drains are undone after each case, and
``POST /admin/reload`` reads the gateway's own file again.

Allowed 5xx, by design and documented: 501 from the continue route for a local entity (served for
upstream entities only). ``FUZZ_EXAMPLES=500`` makes a longer hunt.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any, Dict, Iterator, List, Tuple

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.pools import ADMIN_KEY, gateway_config, start_gateway

CALL_TIMEOUT_S = 15.0  # a run of the demo model answers in milliseconds; slow: inputs within seconds
# Cases per operation (positive and negative mixed).
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
ENTITY_IDS = {"agents": "echo-agent", "teams": "echo-team", "workflows": "echo-workflow"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

# AgentOS's run form (agno/os/routers/*: message, stream, session_id, user_id, ...).
NATIVE_FORM = {
    "type": "object",
    "properties": {
        "message": {"type": "string"},
        "stream": {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no", "maybe", ""]},
        "session_id": {"type": "string"},
        "user_id": {"type": "string"},
        "run_id": {"type": "string"},
        "session_state": {"type": "string"},
        "dependencies": {"type": "string"},
        "metadata": {"type": "string"},
        "background": {"type": "string"},
        "tools": {"type": "string"},
    },
}


def _with_form_bodies(raw: Dict[str, Any]) -> Dict[str, Any]:
    schema = copy.deepcopy(raw)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            native = path.endswith("/runs") or path.endswith("/continue")
            if method == "post" and native and "requestBody" not in operation:
                operation["requestBody"] = {
                    "required": False,
                    "content": {"application/x-www-form-urlencoded": {"schema": NATIVE_FORM}},
                }
    return schema


def _strategy(operation, upstream_names: List[str]):  # type: ignore[no-untyped-def]
    """Positive and negative cases; for an operation naming an entity or an upstream, as many
    again with a real one (a JSON-schema enum hint would be merged away into "any string")."""
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    strategies = [operation.as_strategy(mode) for mode in modes]
    names = {parameter.name for parameter in operation.path_parameters}
    kind = next((part for part in operation.path.split("/") if part in ENTITY_IDS), None)
    real = {"entity_id": [ENTITY_IDS[kind]] if kind else [], "name": upstream_names}
    for parameter, values in real.items():
        if parameter in names and values:
            for mode in modes:
                strategies.append(
                    st.sampled_from(values).flatmap(
                        lambda value, mode=mode, parameter=parameter: operation.as_strategy(
                            mode, path_parameters={parameter: value}
                        )
                    )
                )
    return st.one_of(strategies)


def _allowed_5xx(method: str, path: str, status: int, local: bool) -> bool:
    return local and status == 501 and path.endswith("/continue")


def fuzz(
    base_url: str,
    *,
    local: bool,
    max_examples: int,
    upstream_names: List[str] = (),  # type: ignore[assignment]
    after_call=None,  # type: ignore[no-untyped-def]
) -> Tuple[int, List[str]]:
    """Every operation of the gateway's schema, positive and negative cases; returns the number of
    calls and the failures (at most one per operation: the first case found)."""
    raw = httpx.get(f"{base_url}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(_with_form_bodies(raw))
    session = requests.Session()
    calls = 0
    failures: List[str] = []
    statuses: Dict[str, Dict[int, int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        method, path = operation.method.upper(), operation.path
        headers = dict(ADMIN) if path.startswith("/admin/") else {}
        strategy = _strategy(operation, list(upstream_names))

        @settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            # The same cases in every run, so the suite is repeatable; FUZZ_RANDOM=1 explores.
            derandomize=not os.environ.get("FUZZ_RANDOM"),
            phases=[Phase.explicit, Phase.generate],  # no shrinking: the first case is reported
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            try:
                response = case.call(base_url=base_url, session=session, headers=headers, timeout=CALL_TIMEOUT_S)
            except requests.exceptions.Timeout:
                raise AssertionError(f"no answer within {CALL_TIMEOUT_S} s:\n{case.as_curl_command()}") from None
            finally:
                if after_call is not None:
                    after_call(case)
            status = response.status_code
            seen = statuses.setdefault(f"{method} {path}", {})
            seen[status] = seen.get(status, 0) + 1
            if status >= 500 and not _allowed_5xx(method, path, status, local):
                raise AssertionError(f"{status} {response.text[:300]!r}\n{case.as_curl_command()}")

        try:
            check()
        except AssertionError as error:
            failures.append(f"{method} {path}: {error}")
    session.close()
    for label, seen in statuses.items():
        print(f"  {label}: {dict(sorted(seen.items()))}")
    return calls, failures


def test_fuzz_local_gateway(gateway) -> None:
    started = time.monotonic()
    calls, failures = fuzz(gateway.url, local=True, max_examples=MAX_EXAMPLES)
    print(f"local gateway: {calls} calls in {time.monotonic() - started:.1f} s")
    assert not failures, "\n\n".join(failures)


@pytest.fixture(scope="module")
def fuzz_pool_gateway(log_dir, pool_upstreams) -> Iterator:
    """A pool gateway of this module's own: drains and reloads do not disturb the shared one. Its
    config is a file (start_gateway writes one), so POST /admin/reload reads it again."""
    server = start_gateway("fuzz-pool-gateway", gateway_config(pool_upstreams), log_dir)
    yield server
    server.stop()


def test_fuzz_pool_gateway(fuzz_pool_gateway, pool_upstreams) -> None:
    names = [server.name for server in pool_upstreams]
    admin_url = fuzz_pool_gateway.admin_url

    def undrain_after_drain(case) -> None:  # type: ignore[no-untyped-def]
        if case.path.endswith("/drain") and case.method.upper() == "POST":
            for name in names:
                httpx.post(f"{admin_url}/admin/upstreams/{name}/undrain", headers=ADMIN, timeout=10).raise_for_status()

    started = time.monotonic()
    try:
        calls, failures = fuzz(fuzz_pool_gateway.url, local=False, max_examples=MAX_EXAMPLES, upstream_names=names)
        admin_calls, admin_failures = fuzz(
            admin_url, local=False, max_examples=MAX_EXAMPLES, upstream_names=names, after_call=undrain_after_drain
        )
        calls, failures = calls + admin_calls, failures + admin_failures
    finally:
        for name in names:
            httpx.post(f"{admin_url}/admin/upstreams/{name}/undrain", headers=ADMIN, timeout=10)
    print(f"pool gateway: {calls} calls in {time.monotonic() - started:.1f} s")
    states = httpx.get(f"{admin_url}/admin/upstreams", headers=ADMIN, timeout=10).json()
    assert [state["draining"] for state in states] == [False, False]
    assert not failures, "\n\n".join(failures)

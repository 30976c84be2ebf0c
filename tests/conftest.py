from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("AGNO_TELEMETRY", "false")

from tests.processes import Server, left_running, start_server, stop_servers  # noqa: E402

# Every server in the tests answers as this instance, so local and remote answers compare equal.
INSTANCE = "test-instance"


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def upstream(log_dir: Path) -> Iterator[Server]:
    """A real AgentOS (``agentos-gateway upstream``) serving the demo components."""
    server = start_server("upstream", ["upstream", "--name", INSTANCE], log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-db") / "sessions.db"


@pytest.fixture(scope="session")
def gateway(log_dir: Path, gateway_db: Path) -> Iterator[Server]:
    """A real gateway (``agentos-gateway serve``, embedded default: the demo components, in-process),
    storing sessions in SQLite so tests can read what happened to a run."""
    env = {"GATEWAY_INSTANCE_NAME": INSTANCE, "GATEWAY_DEMO_DB": f"sqlite:///{gateway_db}"}
    server = start_server("gateway", ["serve"], log_dir, env=env)
    yield server
    server.stop()


POOL_NAMES = ("pool-a", "pool-b")


@pytest.fixture(scope="session")
def pool_upstreams(log_dir: Path) -> Iterator[list]:
    """Two real AgentOS upstreams (in-memory sessions) for a pool gateway."""
    from tests.pools import start_upstreams

    servers = start_upstreams(POOL_NAMES, log_dir)
    yield servers
    stop_servers(servers)


@pytest.fixture(scope="session")
def pool_gateway(log_dir: Path, pool_upstreams: list) -> Iterator[Server]:
    """A real gateway in front of ``pool_upstreams``, serving nothing locally."""
    from tests.pools import gateway_config, start_gateway

    server = start_gateway("pool-gateway", gateway_config(pool_upstreams), log_dir)
    yield server
    server.stop()


# Run first: the longest module. Under pytest-xdist (``make test``) one worker runs it while the
# other takes the rest, instead of one worker running it alone at the end.
RUN_FIRST = ("tests/test_soak.py",)


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in RUN_FIRST)  # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def no_server_left_running() -> Iterator[None]:
    """Every fixture stops what it started: a server still running after the session's other
    fixtures are torn down leaked (it would outlive the run, holding its port and memory). It is
    stopped here, and the run fails naming it (an error in a fixture's teardown fails a run under
    pytest-xdist too, where a worker's exit status would not)."""
    yield
    leaked = left_running()
    if leaked:
        names = ", ".join(f"{server.name} (pid {server.process.pid})" for server in leaked)
        pytest.fail(f"servers left running by the tests, now stopped: {names}", pytrace=False)

"""Prometheus collectors of the gateway, all named ``agentos_gateway_*``.

With ``--workers N`` each worker writes its samples to ``PROMETHEUS_MULTIPROC_DIR`` and a scrape of
any worker merges them (prometheus-client's multiprocess mode): counters and histograms add up,
in-flight gauges sum over live workers, the health gauge shows the most recent worker's view.

Labels are bounded: ``entity`` is an id the gateway serves or ``unknown``, ``route`` a route
template, ``kind`` one of three entity kinds, an interface (``agui``, ``a2a``, ``mcp``,
``websocket``: AgentOS's other doors), ``admin`` (the admin listener's requests) or empty,
``upstream`` a configured (or DNS-discovered) name.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

PREFIX = "agentos_gateway"
# 1 ms to 300 s (the default whole-run timeout): time to first byte and whole runs alike.
DURATION_BUCKETS: Tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    f"{PREFIX}_requests", "Requests answered, by kind, entity, route and status code",
    ["kind", "entity", "route", "code"],
)  # fmt: skip
REQUEST_DURATION = Histogram(
    f"{PREFIX}_request_duration_seconds", "Request start to the last byte of the answer",
    ["kind", "route"], buckets=DURATION_BUCKETS,
)  # fmt: skip
TIME_TO_FIRST_BYTE = Histogram(
    f"{PREFIX}_time_to_first_byte_seconds", "Request start to the first byte of the answer's body",
    ["kind", "route"], buckets=DURATION_BUCKETS,
)  # fmt: skip
RUNS = Counter(f"{PREFIX}_runs", "Runs by how they ended", ["kind", "entity", "outcome"])
ACTIVE_STREAMS = Gauge(f"{PREFIX}_active_streams", "SSE answers being sent", multiprocess_mode="livesum")
STREAM_EVENTS = Counter(f"{PREFIX}_stream_events", "SSE events sent to clients", ["kind"])
UPSTREAM_REQUESTS = Counter(
    f"{PREFIX}_upstream_requests", "Requests to upstreams by outcome", ["upstream", "outcome"]
)
UPSTREAM_IN_FLIGHT = Gauge(
    f"{PREFIX}_upstream_in_flight", "Requests in flight per upstream", ["upstream"], multiprocess_mode="livesum"
)
UPSTREAM_HEALTHY = Gauge(
    f"{PREFIX}_upstream_healthy", "1 when active health checks say the upstream is up", ["upstream"],
    multiprocess_mode="livemostrecent",
)  # fmt: skip
UPSTREAM_EJECTIONS = Counter(f"{PREFIX}_upstream_ejections", "Outlier ejections", ["upstream"])
RETRIES = Counter(f"{PREFIX}_retries", "Retries on another upstream, by the failure retried", ["upstream", "reason"])
PANIC = Counter(f"{PREFIX}_panic", "Requests routed in panic: too few usable upstreams, so health was ignored")
PROBE_DURATION = Histogram(
    f"{PREFIX}_probe_duration_seconds", "Active health probe latency", ["upstream"], buckets=DURATION_BUCKETS
)

# Run outcome from the terminal event's name (bytes scanned on the pass-through path).
OUTCOME_BY_EVENT = {
    "RunCompleted": "COMPLETED", "TeamRunCompleted": "COMPLETED", "WorkflowCompleted": "COMPLETED",
    "RunError": "ERROR", "TeamRunError": "ERROR", "WorkflowError": "ERROR",
    "RunCancelled": "CANCELLED", "TeamRunCancelled": "CANCELLED", "WorkflowCancelled": "CANCELLED",
    "RunPaused": "PAUSED", "TeamRunPaused": "PAUSED",
}  # fmt: skip
UNKNOWN_ENTITY = "unknown"


_CHILDREN: Dict[Tuple[Any, Tuple[str, ...]], Any] = {}


def labelled(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once per set of labels: prometheus-client's own lookup
    takes a lock and builds its key on every call, and the request path asks for several per
    request. The labels are bounded (above), so this cache is too."""
    key = (metric, labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def record_run(kind: str, entity: str, outcome: Optional[str]) -> None:
    labelled(RUNS, kind, entity, outcome or "UNKNOWN").inc()


def scrape() -> Tuple[bytes, str]:
    """The text exposition of this process, or of every worker in multiprocess mode."""
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST

"""The health of one upstream: everything that decides whether it may take new work lives here.

Rules (Envoy's, named the same way):

* Active health: an upstream starts PENDING and takes no traffic until its first probe. The first
  answer decides at once (up or down: one good probe is enough at start, as in Envoy); after that
  ``unhealthy_threshold`` consecutive failed probes mark a HEALTHY upstream UNHEALTHY and
  ``healthy_threshold`` consecutive good ones mark an UNHEALTHY upstream HEALTHY. Transitions
  are the table ``_ACTIVE_TRANSITIONS``. An upstream that comes back up this way is also
  un-ejected. Unlike Envoy's default, a good probe of an upstream that never went down does not
  un-eject it: ``/health`` says nothing about runs.
* Restart: a new process (its ``/health`` ``instantiated_at`` changed) starts clean, whether or
  not the probes saw it down: ``on_restart`` forgets its ejection, backoff and failure counts and
  makes it PENDING, so the good probe that showed the restart marks it up at once.
* Passive health (outlier ejection), with Envoy's split of local-origin errors:
  ``consecutive_failures`` outcomes in a row that say the upstream itself is broken (connect
  errors, timeouts, resets, malformed answers, a stream cut short, and its 502/503/504) eject it
  for ``base_ejection_s * 2**(n-1)`` (n = how many times it was ejected, capped at
  ``max_ejection_s``), unless that would eject more than ``max_ejection_percent`` of the pool
  (checked over the pool: ``Pool.record``). A plain 500 is AgentOS's answer to an exception,
  often the client's own bad input: it counts only with ``count_5xx``, and otherwise shows the
  upstream answering (like a success, it ends a streak). A run that failed in-band is the
  model's failure, not the upstream's: it is never reported here. Once an upstream has been back
  for ``max_ejection_s``, its backoff starts over.
* Drain (admin): a draining upstream takes no new work; what it is doing finishes.

No clocks, sockets or tasks: time is passed in (seconds, any monotonic origin).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple


class ActiveState(enum.Enum):
    PENDING = "pending"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class Probe(enum.Enum):
    OK = "ok"
    FAILED = "failed"


class Outcome(enum.Enum):
    """How one forwarded request ended, as far as the upstream's health is concerned."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, in C (Enum's is Python)

    SUCCESS = "success"  # any answer below 500, in-band run errors included
    CONNECT_ERROR = "connect_error"  # refused, unreachable
    TIMEOUT = "timeout"  # connect, answer or stream silence
    RESET = "reset"  # the connection was lost before or while answering (a stream cut short)
    PROTOCOL_ERROR = "protocol_error"  # an answer that is not HTTP
    GATEWAY_ERROR = "gateway_error"  # it answered 502, 503 or 504, not as AgentOS answers
    SERVER_ERROR = "server_error"  # another 5xx, or AgentOS's own JSON 5xx: its answer to the request

    @classmethod
    def of_status(cls, status_code: int, json_answer: bool = False) -> "Outcome":
        """``json_answer``: the body is JSON, as AgentOS's own errors are. AgentOS answers some
        requests with a 503 of its own (``{"detail": "No knowledge base is available..."}``):
        that is its verdict on the request, which any client can ask for, not a sign that the
        upstream is broken (a server that is: uvicorn's or a proxy's 502/503/504, in text)."""
        if status_code in (502, 503, 504) and not json_answer:
            return cls.GATEWAY_ERROR
        return cls.SERVER_ERROR if status_code >= 500 else cls.SUCCESS


# What says the upstream itself is broken, whatever the request was.
UPSTREAM_FAILURES = frozenset(
    {Outcome.CONNECT_ERROR, Outcome.TIMEOUT, Outcome.RESET, Outcome.PROTOCOL_ERROR, Outcome.GATEWAY_ERROR}
)


@dataclass(frozen=True)
class HealthPolicy:
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3


@dataclass(frozen=True)
class OutlierPolicy:
    consecutive_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejection_percent: float = 50.0
    count_5xx: bool = False  # a plain 500 counts towards ejection too


# (state, probe) -> (state when the streak reaches its threshold, which streak counts)
_ACTIVE_TRANSITIONS: Dict[Tuple[ActiveState, Probe], Tuple[ActiveState, Optional[str]]] = {
    (ActiveState.PENDING, Probe.OK): (ActiveState.HEALTHY, None),  # the first answer decides
    (ActiveState.PENDING, Probe.FAILED): (ActiveState.UNHEALTHY, None),
    (ActiveState.HEALTHY, Probe.OK): (ActiveState.HEALTHY, None),
    (ActiveState.HEALTHY, Probe.FAILED): (ActiveState.UNHEALTHY, "unhealthy_threshold"),
    (ActiveState.UNHEALTHY, Probe.OK): (ActiveState.HEALTHY, "healthy_threshold"),
    (ActiveState.UNHEALTHY, Probe.FAILED): (ActiveState.UNHEALTHY, None),
}


@dataclass
class UpstreamHealth:
    """Active state, passive ejection and drain of one upstream."""

    health_policy: HealthPolicy = field(default_factory=HealthPolicy)
    outlier_policy: OutlierPolicy = field(default_factory=OutlierPolicy)
    active: ActiveState = ActiveState.PENDING
    streak: int = 0  # consecutive probes pushing towards the other state
    consecutive_failures: int = 0  # from real traffic
    ejections: int = 0  # the backoff exponent
    ejected_until: float = 0.0
    draining: bool = False

    # -- active ----------------------------------------------------------------------------------

    def on_probe(self, probe: Probe) -> ActiveState:
        target, threshold_name = _ACTIVE_TRANSITIONS[(self.active, probe)]
        if target is self.active:
            self.streak = 0
        elif threshold_name is None:
            self.active, self.streak = target, 0
        else:
            self.streak += 1
            if self.streak >= getattr(self.health_policy, threshold_name):
                self.active, self.streak = target, 0
                if target is ActiveState.HEALTHY:
                    self.ejected_until = 0.0  # it was down and came back: a fresh start
        return self.active

    def on_restart(self) -> None:
        """A new process: nothing the old one did counts. PENDING, so its first good probe (the
        one that showed the restart) marks it up; a drain set by an operator stays."""
        self.active, self.streak = ActiveState.PENDING, 0
        self.consecutive_failures = self.ejections = 0
        self.ejected_until = 0.0

    # -- passive ---------------------------------------------------------------------------------

    def is_ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def record(self, outcome: Outcome, now: float) -> bool:
        """Count one request's outcome; True when this upstream now wants ejecting (the pool
        decides, because of ``max_ejection_percent``)."""
        if outcome not in UPSTREAM_FAILURES and not (outcome is Outcome.SERVER_ERROR and self.outlier_policy.count_5xx):
            self.consecutive_failures = 0  # it answered: whatever the answer, the upstream works
            return False
        self.consecutive_failures += 1
        return self.consecutive_failures >= self.outlier_policy.consecutive_failures and not self.is_ejected(now)

    def eject(self, now: float) -> float:
        """Eject until a backed-off deadline, which is returned."""
        policy = self.outlier_policy
        if self.ejections and now - self.ejected_until >= policy.max_ejection_s:
            self.ejections = 0  # quiet for a whole max ejection: start the backoff over
        self.ejections += 1
        duration = min(policy.base_ejection_s * 2 ** (self.ejections - 1), policy.max_ejection_s)
        self.ejected_until = now + duration
        self.consecutive_failures = 0
        return self.ejected_until

    # -- together --------------------------------------------------------------------------------

    def is_usable(self, now: float) -> bool:
        """May take new work: healthy by probe, not ejected, not draining."""
        return self.active is ActiveState.HEALTHY and not self.is_ejected(now) and not self.draining


def may_eject(pool_size: int, ejected_now: int, max_ejection_percent: float) -> bool:
    """Whether one more upstream of the pool may be ejected. As in Envoy, one always may, so a
    small pool can still shed its one bad upstream."""
    if ejected_now == 0:
        return True
    return (ejected_now + 1) * 100.0 <= max_ejection_percent * pool_size

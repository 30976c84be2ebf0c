"""One upstream's health: the active state machine, outlier ejection with backoff, drain."""

from __future__ import annotations

import pytest

from gateway.balancing import ActiveState, HealthPolicy, Outcome, OutlierPolicy, Probe, RetryBudget, UpstreamHealth, may_eject
from gateway.balancing.health import UPSTREAM_FAILURES


def test_pending_until_the_first_probe_decides() -> None:
    up = UpstreamHealth()
    assert up.active is ActiveState.PENDING and not up.is_usable(0)
    assert up.on_probe(Probe.OK) is ActiveState.HEALTHY and up.is_usable(0)
    down = UpstreamHealth()
    assert down.on_probe(Probe.FAILED) is ActiveState.UNHEALTHY


def test_thresholds_mark_down_and_up() -> None:
    up = UpstreamHealth(health_policy=HealthPolicy(healthy_threshold=2, unhealthy_threshold=3))
    up.on_probe(Probe.OK)
    assert [up.on_probe(Probe.FAILED) for _ in range(3)] == [ActiveState.HEALTHY] * 2 + [ActiveState.UNHEALTHY]
    assert [up.on_probe(Probe.OK) for _ in range(2)] == [ActiveState.UNHEALTHY, ActiveState.HEALTHY]


def test_a_good_probe_resets_the_failure_streak() -> None:
    up = UpstreamHealth()
    up.on_probe(Probe.OK)
    for probe in [Probe.FAILED, Probe.FAILED, Probe.OK, Probe.FAILED, Probe.FAILED]:
        up.on_probe(probe)
    assert up.active is ActiveState.HEALTHY


def test_consecutive_failures_want_ejection_and_a_success_resets() -> None:
    up = UpstreamHealth(outlier_policy=OutlierPolicy(consecutive_failures=3))
    assert [up.record(Outcome.CONNECT_ERROR, 0) for _ in range(2)] == [False, False]
    assert up.record(Outcome.SUCCESS, 0) is False
    assert [up.record(o, 0) for o in (Outcome.TIMEOUT, Outcome.GATEWAY_ERROR, Outcome.RESET)] == [False, False, True]


@pytest.mark.parametrize(
    "outcome", [Outcome.CONNECT_ERROR, Outcome.TIMEOUT, Outcome.RESET, Outcome.PROTOCOL_ERROR, Outcome.GATEWAY_ERROR]
)
def test_what_says_the_upstream_is_broken_ejects(outcome: Outcome) -> None:
    up = UpstreamHealth(outlier_policy=OutlierPolicy(consecutive_failures=2))
    assert [up.record(outcome, 0) for _ in range(2)] == [False, True]


def test_a_plain_500_ejects_only_when_configured_and_otherwise_ends_a_streak() -> None:
    up = UpstreamHealth(outlier_policy=OutlierPolicy(consecutive_failures=2))
    assert not any(up.record(Outcome.SERVER_ERROR, 0) for _ in range(20))
    up.record(Outcome.TIMEOUT, 0)
    up.record(Outcome.SERVER_ERROR, 0)  # it answered: the timeout streak is over
    assert up.record(Outcome.TIMEOUT, 0) is False
    counting = UpstreamHealth(outlier_policy=OutlierPolicy(consecutive_failures=2, count_5xx=True))
    assert [counting.record(Outcome.SERVER_ERROR, 0) for _ in range(2)] == [False, True]


@pytest.mark.parametrize("status, outcome", [(200, Outcome.SUCCESS), (404, Outcome.SUCCESS), (500, Outcome.SERVER_ERROR),
                                             (501, Outcome.SERVER_ERROR), (502, Outcome.GATEWAY_ERROR),
                                             (503, Outcome.GATEWAY_ERROR), (504, Outcome.GATEWAY_ERROR)])  # fmt: skip
def test_outcome_of_a_status(status: int, outcome: Outcome) -> None:
    assert Outcome.of_status(status) is outcome


@pytest.mark.parametrize("status", [502, 503, 504])
def test_agentos_own_json_5xx_is_its_answer_not_a_broken_upstream(status: int) -> None:
    """AgentOS's ``{"detail": "No knowledge base is available..."}`` 503 counts as a 5xx answer
    (ejecting only with ``count_5xx``), never as the upstream failing."""
    assert Outcome.of_status(status, json_answer=True) is Outcome.SERVER_ERROR
    assert Outcome.of_status(status, json_answer=True) not in UPSTREAM_FAILURES


@pytest.mark.parametrize("seen_down", [False, True])
def test_a_restart_starts_clean_and_its_first_good_probe_marks_it_up(seen_down: bool) -> None:
    health = UpstreamHealth(health_policy=HealthPolicy(healthy_threshold=3, unhealthy_threshold=1))
    health.on_probe(Probe.OK)
    health.record(Outcome.CONNECT_ERROR, 0)
    for _ in range(3):
        health.eject(now=0.0)  # backoff grown
    if seen_down:
        health.on_probe(Probe.FAILED)
    health.on_restart()
    assert health.on_probe(Probe.OK) is ActiveState.HEALTHY
    assert health.is_usable(1.0) and health.ejections == 0 and health.consecutive_failures == 0
    assert health.eject(now=1.0) == 1.0 + OutlierPolicy().base_ejection_s  # the backoff starts over


def test_a_restart_keeps_an_operators_drain() -> None:
    health = UpstreamHealth()
    health.on_probe(Probe.OK)
    health.draining = True
    health.on_restart()
    health.on_probe(Probe.OK)
    assert not health.is_usable(0)


def test_ejection_backs_off_exponentially_up_to_the_cap() -> None:
    policy = OutlierPolicy(base_ejection_s=10, max_ejection_s=35)
    up = UpstreamHealth(outlier_policy=policy)
    up.on_probe(Probe.OK)
    now = 0.0
    durations = []
    for _ in range(4):
        until = up.eject(now)
        durations.append(until - now)
        assert not up.is_usable(now) and up.is_usable(until)
        now = until + 1  # back, and soon failing again
    assert durations == [10, 20, 35, 35]


def test_backoff_starts_over_after_a_quiet_period() -> None:
    policy = OutlierPolicy(base_ejection_s=10, max_ejection_s=60)
    up = UpstreamHealth(outlier_policy=policy)
    first = up.eject(0)
    second = up.eject(first)
    assert second - first == 20
    assert up.eject(second + 60) - (second + 60) == 10


def test_draining_takes_no_new_work() -> None:
    up = UpstreamHealth()
    up.on_probe(Probe.OK)
    up.draining = True
    assert not up.is_usable(0)


@pytest.mark.parametrize(
    "size, ejected, percent, allowed",
    [(4, 0, 10, True), (4, 1, 50, True), (4, 2, 50, False), (10, 4, 50, True), (10, 5, 50, False), (1, 0, 0, True)],
)
def test_max_ejection_percent(size: int, ejected: int, percent: float, allowed: bool) -> None:
    assert may_eject(size, ejected, percent) is allowed


@pytest.mark.parametrize(
    "active, retries, allowed",
    [(0, 0, True), (0, 2, True), (0, 3, False), (100, 19, True), (100, 20, False)],
)
def test_retry_budget(active: int, retries: int, allowed: bool) -> None:
    assert RetryBudget(budget_percent=20, min_retry_concurrency=3).allows(active, retries) is allowed


def test_coming_back_up_un_ejects_but_a_good_probe_alone_does_not() -> None:
    health = UpstreamHealth(health_policy=HealthPolicy(healthy_threshold=2, unhealthy_threshold=1))
    health.on_probe(Probe.OK)
    health.eject(now=0.0)
    health.on_probe(Probe.OK)  # healthy all along: /health says nothing about runs
    assert health.is_ejected(1.0)
    health.on_probe(Probe.FAILED)  # down...
    health.on_probe(Probe.OK)
    assert health.is_ejected(1.0)
    health.on_probe(Probe.OK)  # ...and back up: it restarted
    assert health.active is ActiveState.HEALTHY and not health.is_ejected(1.0) and health.is_usable(1.0)

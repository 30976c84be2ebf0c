"""Envoy's retry budget: retries in flight may be at most a share of the requests in flight.

A fixed retry count multiplies load when every upstream is struggling; a budget caps the extra
load at ``budget_percent`` of the active requests, with ``min_retry_concurrency`` always allowed
so a quiet gateway can still retry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryBudget:
    budget_percent: float = 20.0
    min_retry_concurrency: int = 3

    def allows(self, active_requests: int, active_retries: int) -> bool:
        """May one more retry start, with these many requests and retries in flight?"""
        allowed = max(self.min_retry_concurrency, int(active_requests * self.budget_percent / 100.0))
        return active_retries < allowed

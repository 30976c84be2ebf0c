"""The balancing core: pure, sans-IO. No sockets, no asyncio, no web framework; time is passed in.

``health`` holds one upstream's state (active probes, outlier ejection, drain); ``hashing`` the
weighted rendezvous hash; ``choice`` turns candidates into an order to try; ``retry_budget`` caps
retries. The pool (I/O) feeds them and acts on their answers.
"""

from gateway.balancing.choice import Affinity, AffinityMode, Candidate, Choice, choose, in_panic
from gateway.balancing.hashing import pick, rank
from gateway.balancing.health import (
    ActiveState,
    HealthPolicy,
    Outcome,
    OutlierPolicy,
    Probe,
    UPSTREAM_FAILURES,
    UpstreamHealth,
    may_eject,
)
from gateway.balancing.retry_budget import RetryBudget
from gateway.balancing.storage import StorageGroup, StorageMode, group_of_db, storage_groups

__all__ = [
    "ActiveState",
    "Affinity",
    "AffinityMode",
    "Candidate",
    "Choice",
    "HealthPolicy",
    "Outcome",
    "OutlierPolicy",
    "Probe",
    "RetryBudget",
    "StorageGroup",
    "StorageMode",
    "UPSTREAM_FAILURES",
    "UpstreamHealth",
    "choose",
    "group_of_db",
    "in_panic",
    "may_eject",
    "pick",
    "rank",
    "storage_groups",
]

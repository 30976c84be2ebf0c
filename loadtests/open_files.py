"""The open-file (socket) limit of the bench's processes: each idle stream the bench holds is one
socket in the bench's client, one in the upstream and two in the proxy, so 5,000 streams need more
than the usual soft limit of 1,024. Each process raises its own soft limit to the hard one (no
privilege needed, as ``gateway/fd_limit.py`` does for the gateway); the bench reads every
process's limit from ``/proc`` before it opens that many."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def raise_soft_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` raised to the hard one (capped at 1 << 20 when unlimited); the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft if soft != resource.RLIM_INFINITY else 1 << 30
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return soft
    return wanted


def hard_limit() -> int:
    """This process's hard open-file limit (what a child may raise its soft one to); 65,536 when
    unlimited (what nginx's ``worker_rlimit_nofile`` is given)."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 65536 if hard == resource.RLIM_INFINITY else hard


def soft_limit_of(pid: int) -> Optional[int]:
    """A running process's soft open-file limit (``/proc/<pid>/limits``); None when it cannot be read."""
    try:
        lines = Path(f"/proc/{pid}/limits").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return 1 << 30 if soft == "unlimited" else int(soft)
    return None

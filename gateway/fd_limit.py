"""The gateway's own file-descriptor limit (``RLIMIT_NOFILE``), raised at start.

Each open stream holds two sockets (the client's and the upstream's), so the common default soft
limit (1,024) caps a gateway at about 500 streams whatever ``limits.max_streams`` says. As nginx's
``worker_rlimit_nofile`` and Envoy's deployment guides do, the gateway raises its soft limit to the
hard one (no privilege needed) before it serves, and says so; when even the hard limit is below
what its limits can use, it says that too (raising the hard limit is the operator's: ``ulimit -Hn``,
systemd's ``LimitNOFILE``, Docker's ``--ulimit nofile``).
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

logger = logging.getLogger(__name__)

# Besides two per stream and one per other run: listeners, probes, the admin port, logs, imports.
FD_MARGIN = 256


def needed_fds(max_streams: int, max_concurrent_runs: int) -> int:
    """The descriptors the gateway's limits can use at once."""
    return 2 * max_streams + 2 * max(0, max_concurrent_runs - max_streams) + FD_MARGIN


def raise_fd_limit(needed: int) -> Tuple[int, int, Optional[str]]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one; (before, after, a warning or None)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return 0, 0, "the file-descriptor limit cannot be read here (no resource module)"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed, 1 << 20)
    warning = None
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            warning = f"could not raise the file-descriptor limit from {soft} to {target}: {error}"
            target = soft
    else:
        target = soft
    if warning is None and target < needed:
        warning = (
            f"the file-descriptor limit is {target}, below the {needed} the limits can use (two per stream): "
            "raise the hard limit (ulimit -Hn, LimitNOFILE, --ulimit nofile) or lower limits.max_streams"
        )
    return soft, target, warning


def apply(max_streams: int, max_concurrent_runs: int) -> None:
    """``raise_fd_limit`` for these limits, said in the log."""
    before, after, warning = raise_fd_limit(needed_fds(max_streams, max_concurrent_runs))
    if warning:
        logger.warning(warning)
    elif after != before:
        logger.info("file-descriptor limit raised from %d to %d", before, after)

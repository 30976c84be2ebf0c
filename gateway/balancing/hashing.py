"""Weighted rendezvous (highest-random-weight) hashing of session ids over upstreams.

Each (key, upstream) pair gets a score ``-weight / ln(u)`` with ``u`` uniform in (0, 1) from a
keyed BLAKE2b hash. The highest score wins, so:

* the choice depends only on the key and the membership: every gateway process, replica and
  worker agrees with no shared state (no ``hash()``: Python salts it per process);
* an upstream leaving moves only the keys it held; one joining takes only its share;
* an upstream of weight w wins a share w / sum(weights) of the keys (Schindelhauer & Schomaker's
  weighted form: the exponential-race argument).

The order of all scores is the failover order: when the winner cannot serve, the next one in
the ranking takes over, and only that winner's keys move.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable, List, Sequence, Tuple

_SCALE = float(2**64)


def _unit(key: str, member: str) -> float:
    digest = hashlib.blake2b(member.encode() + b"\x00" + key.encode(), digest_size=8).digest()
    # (n + 0.5) / 2**64 lies strictly inside (0, 1), so ln() is finite and negative.
    return (int.from_bytes(digest, "big") + 0.5) / _SCALE


def score(key: str, member: str, weight: float) -> float:
    return -weight / math.log(_unit(key, member))


def rank(key: str, members: Iterable[Tuple[str, float]]) -> List[str]:
    """Member names from best to worst for ``key``; ties (never in practice) break by name."""
    scored = [(score(key, name, weight), name) for name, weight in members if weight > 0]
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [name for _, name in scored]


def pick(key: str, members: Sequence[Tuple[str, float]]) -> str:
    """The best member for ``key`` (``ValueError`` when there is none with a weight)."""
    best = max(((score(key, name, weight), name) for name, weight in members if weight > 0), default=None)
    if best is None:
        raise ValueError("no member with a positive weight")
    return best[1]

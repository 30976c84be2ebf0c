"""Choosing upstreams for one request, from the candidates the pool gives.

* With a session id: weighted rendezvous order over every member that serves the entity, then
  filtered by usability, so failover goes to the next upstream in that session's own order.
  Affinity modes: ``hash`` (default: fail over in rendezvous order), ``bounded`` (also skip an
  upstream whose in-flight count is over ``load_factor`` times its weighted fair share, Mirrokni
  et al.'s consistent hashing with bounded loads), ``strict`` (never move a session: only its
  first choice, or nothing), ``off`` (ignore the session: as sessionless work).
* Without one (listings, config): weighted power-of-two-choices on in-flight count.
* Panic (Envoy's): when fewer than ``panic_threshold_percent`` of the candidates (draining ones
  aside) are usable, health is ignored and every candidate that is not draining takes work, in
  the same order, so ejection alone never darkens a pool. 0 turns it off; then nothing usable
  gives an empty order (the caller answers 503).

The result says whether the session stayed where its hash puts it (``hit``), had to move
(``moved``), or is new (``new``: the gateway made its id).
"""

from __future__ import annotations

import enum
import math
import random
from typing import List, NamedTuple, Optional, Sequence

from gateway.balancing.hashing import rank


class AffinityMode(enum.Enum):
    __hash__ = object.__hash__  # members are singletons: identity hashing, in C (Enum's is Python)

    HASH = "hash"
    BOUNDED = "bounded"
    STRICT = "strict"
    OFF = "off"


class Affinity(enum.Enum):
    __hash__ = object.__hash__  # members are singletons: identity hashing, in C (Enum's is Python)

    HIT = "hit"
    MOVED = "moved"
    NEW = "new"


class Candidate(NamedTuple):
    """One upstream as the chooser sees it: a snapshot, no behaviour (a tuple: one is made per
    upstream per request)."""

    name: str
    weight: float
    usable: bool
    in_flight: int = 0
    draining: bool = False  # taken out by an operator: never chosen, not even in panic


class Choice(NamedTuple):
    order: List[str]  # try these, in this order; empty: nothing can serve (503)
    affinity: Affinity
    panic: bool = False


DEFAULT_LOAD_FACTOR = 1.25
DEFAULT_PANIC_THRESHOLD_PERCENT = 50.0  # Envoy's healthy_panic_threshold


def in_panic(candidates: Sequence[Candidate], threshold_percent: float) -> bool:
    """Fewer than ``threshold_percent`` of the candidates that are not draining are usable."""
    serving = [c for c in candidates if not c.draining]
    usable = sum(1 for c in serving if c.usable)
    return bool(serving) and usable * 100.0 < threshold_percent * len(serving)


def choose(
    candidates: Sequence[Candidate],
    session_id: Optional[str],
    *,
    mode: AffinityMode = AffinityMode.HASH,
    session_is_new: bool = False,
    load_factor: float = DEFAULT_LOAD_FACTOR,
    panic_threshold_percent: float = DEFAULT_PANIC_THRESHOLD_PERCENT,
    rng: Optional[random.Random] = None,
) -> Choice:
    panic = in_panic(candidates, panic_threshold_percent)
    if session_id is None or mode is AffinityMode.OFF:
        return _sessionless(candidates, panic=panic, rng=rng or random.Random())

    by_name = {candidate.name: candidate for candidate in candidates}
    ranked = rank(session_id, ((c.name, c.weight) for c in candidates))
    preferred = ranked[0] if ranked else None
    usable = [name for name in ranked if _takes_work(by_name[name], panic)]
    if mode is AffinityMode.STRICT:
        usable = usable[:1] if usable and usable[0] == preferred else []
    elif mode is AffinityMode.BOUNDED:
        usable = _within_bound(usable, by_name, load_factor)
    first = usable[0] if usable else None
    return Choice(order=usable, affinity=_affinity(first, preferred, session_is_new), panic=panic)


def _takes_work(candidate: Candidate, panic: bool) -> bool:
    return candidate.usable or (panic and not candidate.draining)


def _affinity(first: Optional[str], preferred: Optional[str], session_is_new: bool) -> Affinity:
    if session_is_new:
        return Affinity.NEW
    return Affinity.HIT if first is not None and first == preferred else Affinity.MOVED


def _within_bound(order: List[str], by_name: dict, load_factor: float) -> List[str]:
    """The rendezvous order with over-loaded upstreams moved to the back (still failover targets).

    An upstream's bound is ``ceil(load_factor * (total + 1) * weight / total_weight)``: its weighted
    share of the in-flight requests including this one, times the slack factor.
    """
    total = sum(by_name[name].in_flight for name in order) + 1
    total_weight = sum(by_name[name].weight for name in order) or 1.0
    under, over = [], []
    for name in order:
        bound = math.ceil(load_factor * total * by_name[name].weight / total_weight)
        (under if by_name[name].in_flight + 1 <= bound else over).append(name)
    return under + over


def _sessionless(candidates: Sequence[Candidate], *, panic: bool, rng: random.Random) -> Choice:
    pool = [c for c in candidates if _takes_work(c, panic) and c.weight > 0]
    if not pool:
        return Choice(order=[], affinity=Affinity.NEW, panic=panic)
    first = _power_of_two(pool, rng)
    rest = sorted((c for c in pool if c.name != first.name), key=lambda c: (c.in_flight / c.weight, c.name))
    return Choice(order=[first.name] + [c.name for c in rest], affinity=Affinity.NEW, panic=panic)


def _power_of_two(pool: List[Candidate], rng: random.Random) -> Candidate:
    """Two picks weighted by weight; the one with less in-flight work per unit of weight wins."""
    if len(pool) == 1:
        return pool[0]
    (first,) = rng.choices(pool, weights=[c.weight for c in pool])
    others = [c for c in pool if c.name != first.name]
    (second,) = rng.choices(others, weights=[c.weight for c in others])
    # A tie keeps the first, weighted pick, so idle upstreams share work by weight.
    return second if second.in_flight / second.weight < first.in_flight / first.weight else first

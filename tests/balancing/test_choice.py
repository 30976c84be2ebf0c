"""Choosing an order of upstreams: affinity modes, usability, bounded load, panic, P2C."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.balancing import Affinity, AffinityMode, Candidate, choose, in_panic, rank

UPSTREAMS = ["a", "b", "c"]


def _candidates(unusable=(), in_flight=None, weights=None):
    return [
        Candidate(name, (weights or {}).get(name, 1.0), name not in unusable, (in_flight or {}).get(name, 0))
        for name in UPSTREAMS
    ]


def _session_preferring(name: str) -> str:
    members = [(n, 1.0) for n in UPSTREAMS]
    return next(f"s{i}" for i in range(10_000) if rank(f"s{i}", members)[0] == name)


def test_hash_mode_keeps_a_session_on_its_upstream() -> None:
    session = _session_preferring("b")
    choice = choose(_candidates(), session)
    assert choice.order[0] == "b" and choice.affinity is Affinity.HIT
    assert sorted(choice.order) == UPSTREAMS  # the rest are failover targets


def test_hash_mode_fails_over_in_the_sessions_own_order() -> None:
    session = _session_preferring("b")
    expected = [name for name in rank(session, [(n, 1.0) for n in UPSTREAMS]) if name != "b"]
    choice = choose(_candidates(unusable={"b"}), session)
    assert choice.order == expected and choice.affinity is Affinity.MOVED


def test_new_session_is_reported_new() -> None:
    assert choose(_candidates(), "fresh", session_is_new=True).affinity is Affinity.NEW


def test_strict_mode_never_moves_a_session() -> None:
    session = _session_preferring("c")
    assert choose(_candidates(), session, mode=AffinityMode.STRICT).order == ["c"]
    refused = choose(_candidates(unusable={"c"}), session, mode=AffinityMode.STRICT)
    assert refused.order == []


def test_bounded_mode_skips_an_overloaded_first_choice() -> None:
    session = _session_preferring("a")
    loaded = _candidates(in_flight={"a": 10, "b": 1, "c": 1})
    choice = choose(loaded, session, mode=AffinityMode.BOUNDED)
    assert choice.order[0] != "a" and choice.order[-1] == "a"
    assert choice.affinity is Affinity.MOVED
    balanced = _candidates(in_flight={"a": 2, "b": 2, "c": 2})
    assert choose(balanced, session, mode=AffinityMode.BOUNDED).order[0] == "a"


def test_no_usable_upstream_gives_an_empty_order_without_panic() -> None:
    everything_down = _candidates(unusable=set(UPSTREAMS))
    assert choose(everything_down, "s", panic_threshold_percent=0).order == []
    assert choose(everything_down, None, panic_threshold_percent=0).order == []


def test_panic_under_the_threshold_spreads_over_every_upstream_in_the_same_order() -> None:
    two_down = _candidates(unusable={"a", "b"})  # 1 of 3 usable: 33 % < 50 %
    panic = choose(two_down, "s")
    assert panic.panic and panic.order == rank("s", [(name, 1.0) for name in UPSTREAMS])
    assert choose(two_down, None).panic and sorted(choose(two_down, None).order) == UPSTREAMS
    one_down = _candidates(unusable={"a"})  # 2 of 3 usable: no panic, "a" is skipped
    assert not choose(one_down, "s").panic and "a" not in choose(one_down, "s").order
    assert not choose(two_down, "s", panic_threshold_percent=30).panic
    assert choose(one_down, "s", panic_threshold_percent=70).panic


def test_a_single_ejected_upstream_still_serves_in_panic() -> None:
    alone = [Candidate("only", 1.0, usable=False)]
    choice = choose(alone, "s")
    assert choice.panic and choice.order == ["only"]


def test_draining_upstreams_are_never_chosen_even_in_panic() -> None:
    drained = [Candidate("a", 1.0, usable=False, draining=True), Candidate("b", 1.0, usable=False)]
    assert choose(drained, "s").order == ["b"] and choose(drained, None).order == ["b"]
    assert in_panic([Candidate("a", 1.0, usable=False, draining=True)], 50) is False


@settings(max_examples=200, deadline=None)
@given(
    session=st.one_of(st.none(), st.text(min_size=1, max_size=40)),
    unusable=st.sets(st.sampled_from(UPSTREAMS), max_size=2),
    mode=st.sampled_from(list(AffinityMode)),
    in_flight=st.fixed_dictionaries({name: st.integers(0, 50) for name in UPSTREAMS}),
    seed=st.integers(0, 2**32),
)
def test_an_unusable_upstream_is_never_picked_while_another_exists(session, unusable, mode, in_flight, seed) -> None:
    candidates = _candidates(unusable, in_flight)
    choice = choose(candidates, session, mode=mode, panic_threshold_percent=0, rng=random.Random(seed))
    assert not set(choice.order) & unusable
    if mode is not AffinityMode.STRICT or session is None:
        assert choice.order, "a usable upstream exists, so something must be chosen"


def test_power_of_two_choices_prefers_the_less_loaded() -> None:
    rng = random.Random(3)
    candidates = _candidates(in_flight={"a": 0, "b": 20, "c": 20})
    firsts = Counter(choose(candidates, None, rng=rng).order[0] for _ in range(3_000))
    # "a" wins every pair it is in: 2 of the 3 possible pairs.
    assert firsts["a"] > 0.6 * 3_000


def test_power_of_two_choices_follows_weights_when_idle() -> None:
    rng = random.Random(5)
    candidates = _candidates(weights={"a": 1.0, "b": 1.0, "c": 8.0})
    firsts = Counter(choose(candidates, None, rng=rng).order[0] for _ in range(5_000))
    assert firsts["c"] > firsts["a"] + firsts["b"]

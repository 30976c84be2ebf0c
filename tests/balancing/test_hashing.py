"""Weighted rendezvous hashing: weights hold, minimal movement, the same answer in any process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.balancing import pick, rank

SESSIONS = 20_000

weights_strategy = st.lists(st.integers(min_value=1, max_value=10), min_size=2, max_size=6)


def _keys(seed: int, count: int = SESSIONS) -> list:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(count)]


@settings(max_examples=15, deadline=None)
@given(weights=weights_strategy, seed=st.integers(min_value=0, max_value=2**32))
def test_weights_are_honoured_within_three_percent(weights: list, seed: int) -> None:
    members = [(f"up-{i}", float(w)) for i, w in enumerate(weights)]
    counts = Counter(pick(key, members) for key in _keys(seed))
    total_weight = sum(weights)
    for name, weight in members:
        share = counts[name] / SESSIONS
        assert abs(share - weight / total_weight) <= 0.03, (name, share, weight / total_weight)


@settings(max_examples=25, deadline=None)
@given(weights=weights_strategy, seed=st.integers(min_value=0, max_value=2**32), data=st.data())
def test_removing_one_upstream_moves_only_its_sessions(weights: list, seed: int, data) -> None:
    members = [(f"up-{i}", float(w)) for i, w in enumerate(weights)]
    removed = data.draw(st.sampled_from([name for name, _ in members]))
    remaining = [member for member in members if member[0] != removed]
    for key in _keys(seed, 2_000):
        before, after = pick(key, members), pick(key, remaining)
        if before != removed:
            assert after == before
        else:  # its sessions go where their own ranking says next
            assert after == rank(key, members)[1]


@settings(max_examples=25, deadline=None)
@given(weights=weights_strategy, key=st.text(min_size=1, max_size=64))
def test_rank_is_a_permutation_led_by_pick(weights: list, key: str) -> None:
    members = [(f"up-{i}", float(w)) for i, w in enumerate(weights)]
    order = rank(key, members)
    assert sorted(order) == sorted(name for name, _ in members)
    assert order[0] == pick(key, members)


def test_zero_weight_is_never_chosen() -> None:
    members = [("a", 1.0), ("b", 0.0)]
    assert all(pick(key, members) == "a" for key in _keys(1, 500))
    assert rank("k", members) == ["a"]


_CHILD = """
import json, sys
from gateway.balancing import rank
keys, members = json.loads(sys.stdin.read())
print(json.dumps([rank(key, [tuple(m) for m in members]) for key in keys]))
"""


def test_the_same_membership_gives_the_same_choice_in_any_process() -> None:
    keys = _keys(7, 300)
    members = [["a", 1.0], ["b", 2.0], ["c", 3.0]]
    orders = []
    for hash_seed in ("1", "2"):  # Python's own hash() differs between these processes
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", _CHILD], input=json.dumps([keys, members]), capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 0, result.stderr
        orders.append(json.loads(result.stdout))
    here = [rank(key, [tuple(m) for m in members]) for key in keys]
    assert orders[0] == orders[1] == here

"""The run -> upstream record: bounded in entries and in bytes, expiring, swept."""

from __future__ import annotations

import sys

from gateway.run_owners import ENTRY_OVERHEAD_BYTES, RunOwners


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_remembers_and_expires() -> None:
    clock = Clock()
    owners = RunOwners(ttl_s=10, clock=clock)
    owners.remember("r1", "a")
    assert owners.owner("r1") == "a" and owners.owner("unknown") is None
    clock.now = 10.0
    assert owners.owner("r1") is None and len(owners) == 0 and owners.bytes == 0


def test_bounded_in_bytes_the_oldest_going_first() -> None:
    big = "x" * 10_000
    cost = sys.getsizeof(big + "0") + ENTRY_OVERHEAD_BYTES
    owners = RunOwners(ttl_s=60, max_bytes=cost * 3)
    for index in range(10):
        owners.remember(big + str(index), "a")
    assert len(owners) == 3 and owners.bytes <= cost * 3
    assert owners.owner(big + "9") == "a" and owners.owner(big + "0") is None


def test_bounded_in_entries() -> None:
    owners = RunOwners(ttl_s=60, max_entries=100)
    for index in range(1_000):
        owners.remember(f"r{index}", "a")
    assert len(owners) == 100 and owners.owner("r999") == "a" and owners.owner("r0") is None


def test_remembering_again_moves_an_entry_and_keeps_the_count_right() -> None:
    owners = RunOwners(ttl_s=60)
    owners.remember("r", "a")
    owners.remember("r", "b")
    assert owners.owner("r") == "b" and len(owners) == 1
    assert owners.bytes == sys.getsizeof("r") + ENTRY_OVERHEAD_BYTES


def test_sweep_drops_only_the_expired() -> None:
    clock = Clock()
    owners = RunOwners(ttl_s=10, clock=clock)
    owners.remember("old", "a")
    clock.now = 5.0
    owners.remember("new", "a")
    clock.now = 11.0
    assert owners.sweep() == 1
    assert len(owners) == 1 and owners.owner("new") == "a"

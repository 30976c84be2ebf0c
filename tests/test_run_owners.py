"""The run record (upstream, entity, key): bounded in entries and in bytes, expiring, swept."""

from __future__ import annotations

import sys

from gateway.run_owners import ENTRY_OVERHEAD_BYTES, RunOwners, RunRecord
from gateway.wire.kinds import EntityKind

AGENT = EntityKind.AGENT


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_remembers_and_expires() -> None:
    clock = Clock()
    owners = RunOwners(ttl_s=10, clock=clock)
    owners.remember("r1", "a", EntityKind.TEAM, "echo-team", "team-key")
    assert owners.owner("r1") == "a" and owners.owner("unknown") is None
    assert owners.record("r1") == RunRecord("a", EntityKind.TEAM, "echo-team", "team-key")
    clock.now = 10.0
    assert owners.record("r1") is None and len(owners) == 0 and owners.bytes == 0


def test_every_string_an_entry_holds_is_charged() -> None:
    """The run id, the entity id and the key's name all come with the request: each is charged,
    so the byte bound holds however long a client makes them (ids are capped at 256 bytes)."""
    clock = Clock()
    owners = RunOwners(ttl_s=60, clock=clock)
    entity, key = "e" * 200, "k" * 100
    owners.remember("r", "a", AGENT, entity, key)
    assert owners.bytes == sys.getsizeof("r") + sys.getsizeof(entity) + sys.getsizeof(key) + ENTRY_OVERHEAD_BYTES
    owners.remember("s", "a", AGENT, "echo-agent")  # no keys configured: no key charged
    assert owners.bytes == (
        sys.getsizeof("r") + sys.getsizeof(entity) + sys.getsizeof(key) + sys.getsizeof("s") + sys.getsizeof("echo-agent")
        + 2 * ENTRY_OVERHEAD_BYTES
    )  # fmt: skip
    clock.now = 60.0
    assert owners.sweep() == 2 and owners.bytes == 0


def test_bounded_in_bytes_the_oldest_going_first() -> None:
    big = "x" * 10_000
    cost = sys.getsizeof(big + "0") + sys.getsizeof(big) + ENTRY_OVERHEAD_BYTES
    owners = RunOwners(ttl_s=60, max_bytes=cost * 3)
    for index in range(10):
        owners.remember(big + str(index), "a", AGENT, big)
    assert len(owners) == 3 and owners.bytes <= cost * 3
    assert owners.owner(big + "9") == "a" and owners.owner(big + "0") is None


def test_bounded_in_entries() -> None:
    owners = RunOwners(ttl_s=60, max_entries=100)
    for index in range(1_000):
        owners.remember(f"r{index}", "a", AGENT, "echo-agent")
    assert len(owners) == 100 and owners.owner("r999") == "a" and owners.owner("r0") is None


def test_remembering_again_moves_an_entry_and_keeps_the_count_right() -> None:
    owners = RunOwners(ttl_s=60)
    owners.remember("r", "a", AGENT, "echo-agent", "k1")
    owners.remember("r", "b", EntityKind.TEAM, "echo-team")
    assert owners.record("r") == RunRecord("b", EntityKind.TEAM, "echo-team", None) and len(owners) == 1
    assert owners.bytes == sys.getsizeof("r") + sys.getsizeof("echo-team") + ENTRY_OVERHEAD_BYTES


def test_sweep_drops_only_the_expired() -> None:
    clock = Clock()
    owners = RunOwners(ttl_s=10, clock=clock)
    owners.remember("old", "a", AGENT, "echo-agent")
    clock.now = 5.0
    owners.remember("new", "a", AGENT, "echo-agent")
    clock.now = 11.0
    assert owners.sweep() == 1
    assert len(owners) == 1 and owners.owner("new") == "a"


def test_a_full_record_costs_the_garbage_collector_nothing() -> None:
    """Entries hold strings only, so the collector stops tracking them: a record of 100,000 runs
    is not walked again by every full collection (which cost a busy gateway seconds of CPU)."""
    import gc

    owners = RunOwners(ttl_s=60)
    for number in range(1000):
        owners.remember(f"r{number}", "a", EntityKind.WORKFLOW, "echo-workflow", "key" if number % 2 else None)
    gc.collect()
    gc.collect()  # an entry's outer tuple may be looked at before its inner one in a pass: the next untracks it
    tracked = [run_id for run_id, entry in owners._entries.items() if gc.is_tracked(entry) or gc.is_tracked(entry[0])]
    assert tracked == []
    assert owners.record("r7") == RunRecord("a", EntityKind.WORKFLOW, "echo-workflow", "key")

"""Storage groups from the database ids upstreams report: pure, no processes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.balancing import StorageGroup, StorageMode, group_of_db, storage_groups

AUTO, SHARED, PER_UPSTREAM = StorageMode.AUTO, StorageMode.SHARED, StorageMode.PER_UPSTREAM


def test_upstreams_on_one_database_form_one_group() -> None:
    groups = storage_groups({"a": ["db1"], "b": ["db1"], "c": ["db1"]}, AUTO)
    assert groups == (StorageGroup("db1", ("a", "b", "c"), ("db1",)),)


def test_in_memory_upstreams_are_each_their_own_group() -> None:
    groups = storage_groups({"b": ["rand-b"], "a": ["rand-a"]}, AUTO)
    assert groups == (StorageGroup("rand-a", ("a",), ("rand-a",)), StorageGroup("rand-b", ("b",), ("rand-b",)))


def test_overlapping_ids_join_groups_through_a_third_upstream() -> None:
    # a and c share nothing directly; b reports one id of each: all three see one storage.
    groups = storage_groups({"a": ["x"], "b": ["x", "y"], "c": ["y"], "d": ["z"]}, AUTO)
    assert [(g.key, g.members, g.db_ids) for g in groups] == [("x", ("a", "b", "c"), ("x", "y")), ("z", ("d",), ("z",))]


def test_upstreams_not_reported_yet_or_without_a_database_are_in_no_group() -> None:
    groups = storage_groups({"a": ["db1"], "b": None, "c": []}, AUTO)
    assert groups == (StorageGroup("db1", ("a",), ("db1",)),)
    assert storage_groups({"b": None}, AUTO) == ()


def test_the_setting_overrides_the_detection() -> None:
    reported = {"b": ["rand-b"], "a": ["rand-a"], "c": None}
    assert storage_groups(reported, SHARED) == (StorageGroup("shared", ("a", "b", "c"), ("rand-a", "rand-b")),)
    assert storage_groups({"a": ["db1"], "b": ["db1"]}, PER_UPSTREAM) == (
        StorageGroup("upstream:a", ("a",), ("db1",)),
        StorageGroup("upstream:b", ("b",), ("db1",)),
    )
    assert storage_groups({}, SHARED) == ()


def test_a_database_id_names_its_group() -> None:
    groups = storage_groups({"a": ["x"], "b": ["y"]}, AUTO)
    assert group_of_db(groups, "y") == groups[1]
    assert group_of_db(groups, "nowhere") is None


ids = st.lists(st.sampled_from([f"db{i}" for i in range(6)]), max_size=3)


@settings(max_examples=200, deadline=None)
@given(reported=st.dictionaries(st.sampled_from([f"u{i}" for i in range(6)]), st.one_of(st.none(), ids)))
def test_groups_partition_the_upstreams_with_databases_and_never_split_a_database(reported) -> None:
    groups = storage_groups(reported, AUTO)
    members = [name for group in groups for name in group.members]
    assert sorted(members) == sorted(name for name, found in reported.items() if found)
    for group in groups:  # no database id is in two groups; every member's ids are its group's
        assert all(set(reported[name] or ()) <= set(group.db_ids) for name in group.members)
    all_ids = [db_id for group in groups for db_id in group.db_ids]
    assert len(all_ids) == len(set(all_ids))
    assert storage_groups(dict(reversed(list(reported.items()))), AUTO) == groups  # order-free

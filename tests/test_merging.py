"""The merge of lists over database groups, pure: its family table against the route table, and
the cases the process tests cannot set up cheaply."""

from __future__ import annotations

from gateway.api.merging import LIST_SHAPES, MERGED_WRITES, PageRequest, group_query, merge_count, merge_daily, merge_pages, merge_rows, page_request
from gateway.api.route_table import TABLE, Rule


def test_every_merged_family_is_a_collection_read_of_the_route_table() -> None:
    for template in LIST_SHAPES:
        matched = TABLE.match("POST" if template in MERGED_WRITES else "GET", template)
        assert matched is not None and matched.route is not None and matched.route.rule is Rule.COLLECTION, template


def test_pagination_is_read_with_the_family_defaults_or_left_to_the_upstream() -> None:
    sessions, components = LIST_SHAPES["/sessions"], LIST_SHAPES["/components"]
    assert page_request(sessions, []) == PageRequest(1, 20, "created_at", "desc")
    assert page_request(sessions, [("page", "3"), ("limit", "7"), ("sort_order", "asc")]) == PageRequest(3, 7, "created_at", "asc")
    assert page_request(components, [("sort_by", "name")]) == PageRequest(1, 20, "created_at", "desc")  # takes no sort
    for bad in ([("page", "x")], [("limit", "0")], [("page", "0")], [("sort_order", "up")], [("limit", "101")]):
        assert page_request(components if bad == [("limit", "101")] else sessions, bad) is None
    assert group_query([("type", "agent"), ("page", "2"), ("limit", "5")], 1, 10) == [("type", "agent"), ("page", "1"), ("limit", "10")]


def test_a_page_of_two_groups_ties_nulls_and_the_counts() -> None:
    a = {"data": [{"id": "a1", "t": 5}, {"id": "a2", "t": 3}, {"id": "a3", "t": None}], "meta": {"total_count": 3, "search_time_ms": 2.0}}
    b = {"data": [{"id": "b1", "t": 5}, {"id": "b2", "t": 4}], "meta": {"total_count": 9, "search_time_ms": 7.0}}
    page = merge_pages([a, b], PageRequest(1, 4, "t", "desc"))
    assert [item["id"] for item in page["data"]] == ["a1", "b1", "b2", "a2"]  # a tie keeps group order
    assert page["meta"] == {"total_count": 12, "search_time_ms": 7.0, "page": 1, "limit": 4, "total_pages": 3}
    asc = merge_pages([a, b], PageRequest(1, 2, "t", "asc"))
    assert [item["id"] for item in asc["data"]] == ["a3", "a2"]  # null first ascending, as SQL orders it
    empty = merge_pages([a, b], PageRequest(9, 4, "t", "desc"), empty_page_counts_zero=True)
    assert empty["data"] == [] and empty["meta"]["total_count"] == 0


def test_rows_of_one_key_in_two_groups_become_one() -> None:
    shape = LIST_SHAPES["/user_memory_stats"]
    a = {"data": [{"user_id": "u1", "total_memories": 2, "last_memory_updated_at": "2026-01-02"}], "meta": {"total_count": 1}}
    b = {"data": [{"user_id": "u1", "total_memories": 3, "last_memory_updated_at": "2026-01-05"},
                  {"user_id": "u2", "total_memories": 1, "last_memory_updated_at": "2026-01-03"}], "meta": {"total_count": 2}}  # fmt: skip
    page = merge_rows([a, b], PageRequest(1, 20, "last_memory_updated_at", "desc"), shape)
    assert page["data"] == [
        {"user_id": "u1", "total_memories": 5, "last_memory_updated_at": "2026-01-05"},
        {"user_id": "u2", "total_memories": 1, "last_memory_updated_at": "2026-01-03"},
    ]
    assert page["meta"]["total_count"] == 2
    assert merge_count([{"count": 2}, {"count": 5}], "count") == {"count": 7}


def _day(date: str, runs: int, tokens: int, model_count: int, updated: str) -> dict:
    return {
        "id": f"{date}_daily", "date": f"{date}T00:00:00Z", "agent_runs_count": runs, "users_count": 1,
        "token_metrics": {"input_tokens": tokens, "total_tokens": tokens},
        "model_metrics": [{"model_id": "m", "model_provider": "p", "count": model_count}],
        "created_at": updated, "updated_at": updated,
    }


def test_usage_metrics_are_summed_by_day() -> None:
    one = {"metrics": [_day("2026-11-30", 2, 10, 2, "2026-11-30T10:00:00Z")], "updated_at": "2026-11-30T10:00:00Z"}
    two = {
        "metrics": [_day("2026-11-29", 1, 5, 1, "2026-11-29T09:00:00Z"), _day("2026-11-30", 3, 7, 3, "2026-11-30T11:00:00Z")],
        "updated_at": "2026-11-30T11:00:00Z",
    }
    merged = merge_daily([one, two])
    assert merged["updated_at"] == "2026-11-30T11:00:00Z"
    first, second = merged["metrics"]
    assert first == _day("2026-11-29", 1, 5, 1, "2026-11-29T09:00:00Z")
    assert (second["agent_runs_count"], second["users_count"]) == (5, 2)
    assert second["token_metrics"] == {"input_tokens": 17, "total_tokens": 17}
    assert second["model_metrics"] == [{"model_id": "m", "model_provider": "p", "count": 5}]
    assert (second["created_at"], second["updated_at"]) == ("2026-11-30T10:00:00Z", "2026-11-30T11:00:00Z")
    # a refresh answers the bare list: merged as a list
    assert [row["agent_runs_count"] for row in merge_daily([one["metrics"], two["metrics"]])] == [1, 5]


def test_a_user_with_learnings_in_two_groups_is_one_row_the_latest() -> None:
    shape = LIST_SHAPES["/learnings/users"]
    request = page_request(shape, [])
    assert request is not None
    one = {"data": [{"user_id": "u", "last_learning_updated_at": 5}, {"user_id": "v", "last_learning_updated_at": 3}],
           "meta": {"page": 1, "limit": 20, "total_count": 2, "total_pages": 1}}  # fmt: skip
    two = {"data": [{"user_id": "u", "last_learning_updated_at": 9}], "meta": {"page": 1, "limit": 20, "total_count": 1, "total_pages": 1}}
    merged = merge_rows([one, two], request, shape)
    assert merged["data"] == [{"user_id": "u", "last_learning_updated_at": 9}, {"user_id": "v", "last_learning_updated_at": 3}]
    assert merged["meta"]["total_count"] == 2

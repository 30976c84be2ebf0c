"""Lists merged over database groups: what each group is asked, and how the answers become one.

A paginated list answers ``{"data": [...], "meta": {"page", "limit", "total_pages",
"total_count", ...}}``. Page ``p`` of ``limit`` items over several databases is exact when each
group is asked for its first ``p × limit`` items (``page=1&limit=p×limit``), the union is sorted as
asked (the family's own default order when the client names none), and ``[(p-1)·limit, p·limit)``
is kept; ``total_count`` is summed and ``total_pages`` computed again. Items that tie on the sort
key keep their group's order, groups in key order (a single AgentOS leaves ties in its store's
order too). A ``sort_by`` that no item carries is not applied (AgentOS ignores an unknown field):
the groups' lists follow one another.

``LIST_SHAPES`` names each collection read (by route template) with its shape and defaults, as
agno 3.1's routers and stores declare them. Everything here is pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class ListShape:
    # "page": paginated; "rows": paginated rows that each aggregate one key (a user's stats: the same
    # user in two groups is one row, summed); "union": a JSON list, each value once; "count": {field: n};
    # "daily": usage metrics, one row per day (``{"metrics": [...]}`` or the bare list), summed by day
    kind: str
    sort_by: Optional[str] = None  # the family's default order
    sort_order: str = "desc"
    sortable: bool = True  # the route takes sort_by and sort_order
    default_limit: int = 20
    max_limit: Optional[int] = None  # the most one request may ask of an upstream (its le=)
    count_field: str = "count"
    empty_page_counts_zero: bool = False  # the store answers total_count 0 with an empty page
    key: str = ""  # "rows": the field each row aggregates
    sums: Tuple[str, ...] = ()  # "rows": fields added up over the groups (the rest: the latest row's)


def _page(sort_by: str, **details: Any) -> ListShape:
    return ListShape("page", sort_by, **details)


LIST_SHAPES: Dict[str, ListShape] = {
    "/sessions": _page("created_at"),
    "/memories": _page("updated_at", empty_page_counts_zero=True),
    "/eval-runs": _page("created_at"),
    "/knowledge/content": _page("created_at"),
    "/learnings": _page("updated_at", default_limit=100, max_limit=1000),
    # one row per user: a user with learnings in two groups is one row, the latest
    "/learnings/users": ListShape("rows", "last_learning_updated_at", max_limit=1000, key="user_id"),
    "/service-accounts": _page("created_at", max_limit=100),
    # fixed orders (no sort parameters): the stores' own
    "/traces": _page("start_time", sortable=False),
    "/trace_session_stats": _page("last_trace_at", sortable=False),
    "/user_memory_stats": ListShape(
        "rows", "last_memory_updated_at", sortable=False, key="user_id", sums=("total_memories",)
    ),
    "/approvals": _page("created_at", sortable=False, default_limit=100, max_limit=1000),
    "/schedules": _page("created_at", sortable=False, default_limit=100, max_limit=1000),
    "/components": _page("created_at", sortable=False, max_limit=100),
    "/memory_topics": ListShape("union"),
    "/approvals/count": ListShape("count"),
    "/metrics": ListShape("daily"),
    "/metrics/refresh": ListShape("daily"),  # each group refreshed; its rows, as /metrics
}


# Writes that act on every group's data and answer with it merged, as a read: a usage-metrics refresh.
MERGED_WRITES = frozenset({"/metrics/refresh"})


@dataclass(frozen=True)
class PageRequest:
    """A paginated read as the client asked it, with the family's defaults filled in."""

    page: int
    limit: int
    sort_by: Optional[str]
    sort_order: str

    @property
    def wanted(self) -> int:
        """How many items of each group the page needs: its first ``page × limit``."""
        return self.page * self.limit


def page_request(shape: ListShape, query: Sequence[Tuple[str, str]]) -> Optional[PageRequest]:
    """The client's pagination, or None when it is not one the gateway merges (not a number,
    under 1, an unknown order): then one group answers it as AgentOS does (its 422 or its own
    reading of it)."""
    values = dict(query)  # the last value wins, as FastAPI reads a repeated scalar
    try:
        page = int(values.get("page", "1"))
        limit = int(values.get("limit", str(shape.default_limit)))
    except ValueError:
        return None
    sort_by, sort_order = shape.sort_by, shape.sort_order
    if shape.sortable:
        sort_by = values.get("sort_by") or sort_by
        sort_order = values.get("sort_order", sort_order)
    if page < 1 or limit < 1 or (shape.max_limit is not None and limit > shape.max_limit):
        return None
    if sort_order not in ("asc", "desc"):
        return None
    return PageRequest(page, limit, sort_by, sort_order)


def group_query(query: Sequence[Tuple[str, str]], page: int, limit: int) -> List[Tuple[str, str]]:
    """The client's query with its pagination replaced: what one group is asked."""
    kept = [(name, value) for name, value in query if name not in ("page", "limit")]
    return [*kept, ("page", str(page)), ("limit", str(limit))]


def merge_pages(
    answers: Sequence[Dict[str, Any]], request: PageRequest, *, empty_page_counts_zero: bool = False
) -> Dict[str, Any]:
    """One page out of each group's first ``request.wanted`` items (``answers`` in group order)."""
    items: List[Any] = [item for answer in answers for item in (answer.get("data") or [])]
    key = request.sort_by
    if key is not None and any(isinstance(item, dict) and key in item for item in items):
        items.sort(key=lambda item: _sort_value(item, key), reverse=request.sort_order == "desc")
    start = (request.page - 1) * request.limit
    total = sum(_int(answer.get("meta", {}).get("total_count")) for answer in answers)
    if empty_page_counts_zero and not items[start : start + request.limit]:
        total = 0
    meta: Dict[str, Any] = {}
    for answer in answers:  # keys the families add (search_time_ms): the slowest group's
        for name, value in (answer.get("meta") or {}).items():
            if isinstance(value, (int, float)) and isinstance(meta.get(name), (int, float)):
                meta[name] = max(meta[name], value)
            else:
                meta.setdefault(name, value)
    meta.update(
        page=request.page, limit=request.limit, total_count=total, total_pages=math.ceil(total / request.limit)
    )
    return {"data": items[start : start + request.limit], "meta": meta}


def merge_rows(answers: Sequence[Dict[str, Any]], request: PageRequest, shape: ListShape) -> Dict[str, Any]:
    """A page of aggregated rows out of every group's rows (all of them: a key's total needs
    each group's row): rows of one key become one, ``shape.sums`` added, the rest from the row
    latest by the sort key."""
    rows: Dict[Any, Dict[str, Any]] = {}
    for answer in answers:
        for row in answer.get("data") or []:
            if not isinstance(row, dict):
                continue
            seen = rows.get(row.get(shape.key))
            if seen is None:
                rows[row.get(shape.key)] = dict(row)
                continue
            sums = {field: _int(seen.get(field)) + _int(row.get(field)) for field in shape.sums}
            if request.sort_by and _sort_value(row, request.sort_by) > _sort_value(seen, request.sort_by):
                seen.update(row)
            seen.update(sums)
    merged = [{"data": list(rows.values()), "meta": {**(answers[0].get("meta") or {}), "total_count": len(rows)}}]
    return merge_pages(merged, request)


def merge_union(answers: Sequence[Any]) -> List[Any]:
    """JSON lists as one, each value once, in the order first seen."""
    seen: List[Any] = []
    for answer in answers:
        for value in answer if isinstance(answer, list) else []:
            if value not in seen:
                seen.append(value)
    return seen


def merge_count(answers: Sequence[Dict[str, Any]], field: str) -> Dict[str, Any]:
    merged = dict(answers[0]) if answers else {}
    merged[field] = sum(_int(answer.get(field)) for answer in answers)
    return merged


def merge_daily(answers: Sequence[Any]) -> Any:
    """Usage metrics of several databases as one: rows of the same ``date`` become one, their
    counts added (runs and sessions exactly, each stored in one group; ``users_count`` too, so a
    user active in two groups counts twice), ``token_metrics`` added field by field,
    ``model_metrics`` added by model; the earliest ``created_at``, the latest ``updated_at``.
    ``GET /metrics`` answers ``{"metrics": [...], "updated_at"}``, a refresh the bare list."""
    days: Dict[Any, Dict[str, Any]] = {}
    for answer in answers:
        for row in (answer.get("metrics") if isinstance(answer, dict) else answer) or []:
            if isinstance(row, dict):
                day = days.get(row.get("date"))
                days[row.get("date")] = dict(row) if day is None else _add_day(day, row)
    rows = sorted(days.values(), key=lambda row: str(row.get("date")))
    if not any(isinstance(answer, dict) for answer in answers):
        return rows
    stamps = [answer.get("updated_at") for answer in answers if isinstance(answer, dict) and answer.get("updated_at")]
    return {"metrics": rows, "updated_at": max(stamps, key=str) if stamps else None}


def _add_day(day: Dict[str, Any], row: Dict[str, Any]) -> Dict[str, Any]:
    for name, value in row.items():
        if name.endswith("_count") and isinstance(value, int):
            day[name] = _int(day.get(name)) + value
        elif name == "token_metrics" and isinstance(value, dict) and isinstance(day.get(name), dict):
            day[name] = {**day[name], **{k: _int(day[name].get(k)) + _int(v) for k, v in value.items()}}
        elif name == "model_metrics" and isinstance(value, list) and isinstance(day.get(name), list):
            models = {(m.get("model_id"), m.get("model_provider")): dict(m) for m in day[name] if isinstance(m, dict)}
            for model in value:
                if isinstance(model, dict):
                    known = models.setdefault((model.get("model_id"), model.get("model_provider")), {**model, "count": 0})
                    known["count"] = _int(known.get("count")) + _int(model.get("count"))
            day[name] = list(models.values())
        elif name == "created_at" and value is not None:
            day[name] = min(day.get(name) or value, value, key=str)
        elif name == "updated_at" and value is not None:
            day[name] = max(day.get(name) or value, value, key=str)
    return day


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _sort_value(item: Any, key: str) -> Tuple[int, Any]:
    """A sort key any two items compare with: missing or null first (as SQL orders NULL in
    ascending order), then numbers, then text. ``updated_at`` falls back to ``created_at``, as
    agno's stores order it."""
    value = item.get(key) if isinstance(item, dict) else None
    if value is None and key == "updated_at" and isinstance(item, dict):
        value = item.get("created_at")
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value)
    return (2, str(value))

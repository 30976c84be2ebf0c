"""Comparing a gateway with one AgentOS holding the same data (the oracle).

* ``merge_sqlite``: one SQLite file holding every row of several agno databases, so one AgentOS
  started on it holds what a pool of upstreams with their own databases holds together.
* ``outcome``: what a call of agno's ``AgentOSClient`` answered, as plain JSON: its value, or the
  HTTP error it raised (status and body).
* ``normalize``: that answer without what legitimately differs between two servers holding the
  same data: ids and times the server makes, durations, which instance answered, the order of
  lists AgentOS gives no order to.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import sqlite3
from pathlib import Path
from typing import Any, Awaitable, Dict, Iterable, List, Optional, Sequence

import httpx

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_TOOL_CALL = re.compile(r"\bcall_[0-9a-f]{12}\b")  # the demo model's tool call ids: random
_TOOK = re.compile(r"completed in \d+(?:\.\d+)?s")  # agno's tool call summary says how long it took
_INSTANCE = re.compile(r"\[instance=\S+ history=(\d+)\]")

# Keys whose values a server makes from its clock.
TIME_KEYS = frozenset(
    {
        "created_at", "updated_at", "timestamp", "start_time", "end_time", "started_at", "completed_at",
        "first_trace_at", "last_trace_at", "last_run_at", "next_run_at", "resolved_at", "expires_at",
        "last_updated", "refreshed_at",
    }
)
# Keys naming the server itself: a gateway is an AgentOS of its own name.
IDENTITY_KEYS = frozenset({"os_id"})
# Keys whose values measure how long something took.
DURATION_KEYS = frozenset(
    {
        "duration", "time_to_first_token", "duration_ms", "avg_run_time", "min_run_time", "max_run_time",
        "std_dev_run_time", "median_run_time", "p95_run_time", "run_times", "avg_memory_usage",
        "min_memory_usage", "max_memory_usage", "std_dev_memory_usage", "median_memory_usage",
        "p95_memory_usage", "memory_usages", "timer", "memory", "runtime", "search_time_ms",
    }
)


@dataclasses.dataclass(frozen=True)
class Raised:
    """The client raised something else than an HTTP error: it could not read the answer."""

    error: str


@dataclasses.dataclass(frozen=True)
class Failed:
    """An HTTP error answer: the status and the body (JSON when it is)."""

    status: int
    body: Any


async def outcome(call: Awaitable[Any]) -> Any:
    """The call's answer as JSON-like data, or a ``Failed`` for an HTTP error answer."""
    try:
        value = await call
    except httpx.HTTPStatusError as error:
        response = error.response
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        except httpx.ResponseNotRead:  # a stream's error answer: the client closed it unread
            body = "<not read by the client>"
        return Failed(response.status_code, body)
    except Exception as error:  # the client could not take the answer (not JSON, not its schema)
        return Raised(f"{type(error).__name__}: {error}")
    return as_json(value)


def as_json(value: Any) -> Any:
    """Pydantic models, agno dataclasses, enums and containers of them as plain JSON values."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return as_json(value.value)
    if isinstance(value, dict):
        return {str(key): as_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(item) for item in value]
    if hasattr(value, "model_dump"):
        return as_json(value.model_dump(mode="json"))
    if hasattr(value, "to_dict"):
        return as_json(value.to_dict())
    if dataclasses.is_dataclass(value):
        return as_json(dataclasses.asdict(value))
    return json.loads(json.dumps(value, default=str))


class Normalizer:
    """Rewrites an answer so that two servers holding the same data answer equal.

    ``aliases`` maps strings one side uses where the other uses another for the same thing (an
    instance name, a database id, a twin object's id) to one placeholder. ``unordered`` names the
    keys whose lists AgentOS returns in no defined order; they are sorted.
    """

    def __init__(self, aliases: Optional[Dict[str, str]] = None, unordered: Iterable[str] = ()) -> None:
        # Longest first, so an alias that contains another is replaced whole.
        self.aliases = sorted((aliases or {}).items(), key=lambda item: -len(item[0]))
        self.unordered = frozenset(unordered)

    def __call__(self, value: Any, key: Optional[str] = None) -> Any:
        if isinstance(value, Failed):
            return Failed(value.status, self(value.body))
        if isinstance(value, Raised):
            return Raised(self.text(value.error))
        if key in TIME_KEYS and value is not None:
            return "<time>"
        if key in DURATION_KEYS and _measured(value):
            return "<duration>"
        if key in IDENTITY_KEYS and value is not None:
            return "<os>"
        if isinstance(value, dict):
            return {name: self(item, name) for name, item in value.items()}
        if isinstance(value, list):
            items = [self(item) for item in value]
            if key in self.unordered:
                items.sort(key=lambda item: json.dumps(item, sort_keys=True))
            return items
        if isinstance(value, str):
            return self.text(value)
        return value

    def text(self, value: str) -> str:
        value = _INSTANCE.sub(r"[instance=<instance> history=\1]", value)
        for alias, placeholder in self.aliases:
            value = value.replace(alias, placeholder)
        value = _TOOK.sub("completed in <duration>", value)
        return _TOOL_CALL.sub("call_<id>", _UUID.sub("<uuid>", value))


def _measured(value: Any) -> bool:
    """A number, or a list of them: what a duration or memory measurement is (a memory's text,
    under the same key ``memory``, is not)."""
    if isinstance(value, list):
        return bool(value) and all(isinstance(item, (int, float)) for item in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# agno's tables whose lists AgentOS sorts by time, by their id column.
TIMED_TABLES = {"agno_sessions": "session_id", "agno_memories": "memory_id", "agno_eval_runs": "run_id"}


def spread_times(paths: Sequence[Path], tables: Dict[str, str] = TIMED_TABLES) -> None:
    """Make the ``created_at`` and ``updated_at`` of these tables' rows distinct across all of
    ``paths``, keeping their order (ties broken by id): AgentOS stores whole seconds and leaves rows
    of one second in no defined order, so two servers holding the same rows could page them apart.
    Call it while nothing writes to the files."""
    connections = [sqlite3.connect(path) for path in paths]
    try:
        for table, id_column in tables.items():
            for column in ("created_at", "updated_at"):
                rows = []
                for index, db in enumerate(connections):
                    if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone():
                        continue
                    query = f'SELECT "{column}", "{id_column}" FROM "{table}" WHERE "{column}" IS NOT NULL'
                    rows += [(value, row_id, index) for value, row_id in db.execute(query)]
                previous = None
                for value, row_id, index in sorted(rows):
                    new = value if previous is None or value > previous else previous + 1
                    previous = new
                    if new != value:
                        connections[index].execute(
                            f'UPDATE "{table}" SET "{column}" = ? WHERE "{id_column}" = ?', (new, row_id)
                        )
        for db in connections:
            db.commit()
    finally:
        for db in connections:
            db.close()


def merge_sqlite(sources: Sequence[Path], target: Path) -> Dict[str, int]:
    """``target``: a new SQLite file with every table of ``sources`` and all their rows (a row
    already there, by its primary key, is kept once). Answers the row count per table."""
    if target.exists():
        raise FileExistsError(target)
    counts: Dict[str, int] = {}
    with sqlite3.connect(target) as db:
        for index, source in enumerate(sources):
            alias = f"source{index}"
            db.execute(f"ATTACH DATABASE ? AS {alias}", (str(source),))
            tables = db.execute(
                f"SELECT name, sql FROM {alias}.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            ).fetchall()
            for name, create in tables:
                if not db.execute("SELECT 1 FROM main.sqlite_master WHERE type='table' AND name=?", (name,)).fetchone():
                    db.execute(create)
                    indexes = db.execute(
                        f"SELECT sql FROM {alias}.sqlite_master WHERE type='index' AND tbl_name=? AND sql IS NOT NULL",
                        (name,),
                    ).fetchall()
                    for (index_sql,) in indexes:
                        db.execute(index_sql)
                db.execute(f'INSERT OR IGNORE INTO main."{name}" SELECT * FROM {alias}."{name}"')
            db.commit()
            db.execute(f"DETACH DATABASE {alias}")
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'").fetchall():
            counts[name] = db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]
    return counts


def table_rows(path: Path) -> Dict[str, int]:
    """Row count per table of a SQLite file."""
    with sqlite3.connect(path) as db:
        names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        return {name: db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in names}


def differences(left: Any, right: Any, path: str = "$") -> List[str]:
    """Where two normalized answers differ (the gateway's on the left), for a readable message."""
    if type(left) is not type(right):
        return [f"{path}: {shorten(left, 200)} != {shorten(right, 200)}"]
    if isinstance(left, (Failed, Raised)):
        return differences(dataclasses.asdict(left), dataclasses.asdict(right), path)
    if isinstance(left, dict):
        found: List[str] = []
        for key in sorted(set(left) | set(right)):
            if key not in left or key not in right:
                found.append(f"{path}.{key}: only {'the oracle' if key not in left else 'the gateway'} has it")
            else:
                found += differences(left[key], right[key], f"{path}.{key}")
        return found
    if isinstance(left, list):
        if len(left) != len(right):
            return [f"{path}: {len(left)} items != {len(right)} items"]
        return [found for index, (a, b) in enumerate(zip(left, right)) for found in differences(a, b, f"{path}[{index}]")]
    return [] if left == right else [f"{path}: {shorten(left, 200)} != {shorten(right, 200)}"]


def shorten(value: Any, limit: int = 1500) -> str:
    text = json.dumps(dataclasses.asdict(value) if isinstance(value, (Failed, Raised)) else value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


__all__: List[str] = ["Failed", "Raised", "spread_times", "Normalizer", "as_json", "differences", "merge_sqlite", "outcome", "table_rows"]

"""Storage groups: which upstreams share a database, decided from what each one reports.

agno derives a database's id from its URL (``uuid5``), so AgentOS servers on one database list the
same ids in ``GET /config`` ``databases``; an in-memory database gets a random id of its own. In
``auto`` mode, upstreams whose reported ids overlap (directly, or through another upstream) share
storage and form one group. An upstream that has not reported yet (its ``/config`` never came),
or that reports no database, is in no group: it holds nothing to read. Two settings override the
detection: ``shared`` (every upstream in one group) and ``per_upstream`` (each upstream alone).

A group's ``key`` is stable across gateway processes and restarts: the smallest database id its
members report (groups never share an id), ``shared``, or ``upstream:<name>``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple


class StorageMode(enum.Enum):
    AUTO = "auto"  # grouped by the database ids the upstreams report
    SHARED = "shared"  # one database behind every upstream
    PER_UPSTREAM = "per_upstream"  # each upstream has its own


@dataclass(frozen=True)
class StorageGroup:
    key: str
    members: Tuple[str, ...]  # upstream names, sorted
    db_ids: Tuple[str, ...]  # the database ids its members report, sorted


def storage_groups(reported: Mapping[str, Optional[Iterable[str]]], mode: StorageMode) -> Tuple[StorageGroup, ...]:
    """The groups of upstreams that share storage, sorted by key. ``reported`` maps each
    upstream's name to the database ids its ``/config`` lists (None: not known yet)."""
    ids = {name: tuple(sorted(set(found))) if found is not None else None for name, found in reported.items()}
    if mode is StorageMode.SHARED:
        names = tuple(sorted(ids))
        return (StorageGroup("shared", names, _all_ids(ids, names)),) if names else ()
    if mode is StorageMode.PER_UPSTREAM:
        return tuple(StorageGroup(f"upstream:{name}", (name,), ids[name] or ()) for name in sorted(ids))
    parent: Dict[str, str] = {}  # union-find over upstream names, joined through shared ids

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    owner: Dict[str, str] = {}  # database id -> the first upstream seen reporting it
    for name in sorted(ids):
        found = ids[name]
        if not found:
            continue
        parent.setdefault(name, name)
        for db_id in found:
            other = owner.setdefault(db_id, name)
            if other != name:
                parent[root(name)] = root(other)
    members: Dict[str, List[str]] = {}
    for name in sorted(parent):
        members.setdefault(root(name), []).append(name)
    groups = []
    for names in members.values():
        db_ids = _all_ids(ids, names)
        groups.append(StorageGroup(db_ids[0], tuple(names), db_ids))
    return tuple(sorted(groups, key=lambda group: group.key))


def _all_ids(ids: Mapping[str, Optional[Tuple[str, ...]]], names: Iterable[str]) -> Tuple[str, ...]:
    return tuple(sorted({db_id for name in names for db_id in ids[name] or ()}))


def group_of_db(groups: Iterable[StorageGroup], db_id: str) -> Optional[StorageGroup]:
    """The group whose members report ``db_id``, if any."""
    return next((group for group in groups if db_id in group.db_ids), None)

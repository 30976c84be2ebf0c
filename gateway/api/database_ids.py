"""Database ids as the client sees them: one per entity, whatever group serves it.

Each upstream reports its own database ids (``/config`` ``databases``, an entity's ``db_id``); an
entity served by several database groups shows a different id on each. agno's clients and UIs
read an entity's ``db_id`` and send it back (``GET /sessions?db_id=...``), and an AgentOS answers
404 for an id it does not have. So the gateway shows one id per entity:

* served by one group (or every upstream on one database): that group's real id, unchanged;
* served by several: an id the gateway makes, ``uuid5`` of its ``gateway_id`` and the sorted real
  ids behind it, so every replica and every restart shows the same one. Entities whose real ids
  overlap share it (the ids connected through entities are one set).

A request naming a made id touches the groups behind it, each sent its own real id (query
``db_id`` and a JSON body's ``db_id``); one naming a group's real id goes to that group. Pure.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from gateway.balancing import StorageGroup

# The namespace of the ids the gateway makes (a fixed, random uuid: never change it).
NAMESPACE = uuid.UUID("5f0c7a52-3c8e-4d61-9a0e-4b1f6f2c9d17")
ENTITY_KEYS = ("agents", "teams", "workflows")


@dataclass(frozen=True)
class DatabaseIds:
    shown: Dict[str, str] = field(default_factory=dict)  # a real id -> the id the client sees
    behind: Dict[str, Dict[str, str]] = field(default_factory=dict)  # a made id -> {group key: real id}

    def show(self, db_id: Any) -> Any:
        return self.shown.get(db_id, db_id) if isinstance(db_id, str) else db_id

    def show_entity(self, entry: Any) -> Any:
        """An entity's summary or detail with its ``db_id`` as the client sees it."""
        if isinstance(entry, dict) and isinstance(entry.get("db_id"), str) and entry["db_id"] in self.shown:
            return {**entry, "db_id": self.shown[entry["db_id"]]}
        return entry

    def show_config(self, config: Dict[str, Any], domains: Sequence[str]) -> Dict[str, Any]:
        """A merged ``/config`` with every database id as the client sees it, each once."""
        if not self.shown:
            return config
        config = dict(config)
        if isinstance(config.get("databases"), list):
            config["databases"] = list(dict.fromkeys(self.show(db_id) for db_id in config["databases"]))
        if "os_database" in config:
            config["os_database"] = self.show(config["os_database"])
        for key in ENTITY_KEYS:
            if isinstance(config.get(key), list):
                config[key] = [self.show_entity(entry) for entry in config[key]]
        for domain in domains:
            section = config.get(domain)
            if isinstance(section, dict) and isinstance(section.get("dbs"), list):
                dbs, seen = [], set()
                for db in section["dbs"]:
                    if isinstance(db, dict) and "db_id" in db:
                        db = {**db, "db_id": self.show(db["db_id"])}
                        if db["db_id"] in seen:
                            continue
                        seen.add(db["db_id"])
                    dbs.append(db)
                config[domain] = {**section, "dbs": dbs}
        return config


def database_ids(
    gateway_id: str, groups: Sequence[StorageGroup], catalogs: Mapping[str, Optional[Dict[str, Any]]]
) -> DatabaseIds:
    """The ids to show, from each upstream's ``/config`` (``catalogs`` by upstream name)."""
    group_of = {name: group for group in groups for name in group.members}
    parent: Dict[str, str] = {}  # union-find over real ids, joined through an entity that spans them

    def root(db_id: str) -> str:
        parent.setdefault(db_id, db_id)
        while parent[db_id] != db_id:
            parent[db_id] = parent[parent[db_id]]
            db_id = parent[db_id]
        return db_id

    spans: Dict[Tuple[str, str], Set[str]] = {}  # (kind, entity id) -> its real ids
    located: Dict[str, str] = {}  # real id -> the key of the group that reports it
    for name, catalog in sorted(catalogs.items()):
        group = group_of.get(name)
        if group is None or not isinstance(catalog, dict):
            continue
        for key in ENTITY_KEYS:
            for entry in catalog.get(key) or []:
                if isinstance(entry, dict) and isinstance(entry.get("id"), str) and isinstance(entry.get("db_id"), str):
                    spans.setdefault((key, entry["id"]), set()).add(entry["db_id"])
                    located.setdefault(entry["db_id"], group.key)
    for real_ids in spans.values():
        first, *others = sorted(real_ids)
        for other in others:
            parent[root(other)] = root(first)
    sets: Dict[str, List[str]] = {}
    for db_id in sorted(located):
        sets.setdefault(root(db_id), []).append(db_id)
    shown: Dict[str, str] = {}
    behind: Dict[str, Dict[str, str]] = {}
    for real_ids in sets.values():
        by_group: Dict[str, str] = {}
        for db_id in real_ids:  # sorted: a group with two of them is sent the first
            by_group.setdefault(located[db_id], db_id)
        if len(by_group) < 2:
            continue
        made = str(uuid.uuid5(NAMESPACE, "\n".join([gateway_id, *real_ids])))
        behind[made] = by_group
        shown.update({db_id: made for db_id in real_ids})
    return DatabaseIds(shown, behind)


def with_db_id(pairs: Iterable[Tuple[str, str]], real_id: str) -> List[Tuple[str, str]]:
    """A query with its ``db_id`` replaced by ``real_id``."""
    return [(name, real_id if name == "db_id" else value) for name, value in pairs]

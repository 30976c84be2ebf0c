"""The database ids the gateway shows, pure: one per entity, stable, translated back per group."""

from __future__ import annotations

from gateway.api.database_ids import DatabaseIds, database_ids
from gateway.balancing import StorageMode, storage_groups


def _catalog(db_id: str, *agents: str) -> dict:
    return {"databases": [db_id], "agents": [{"id": agent, "db_id": db_id} for agent in agents], "teams": [], "workflows": []}


def test_one_group_keeps_its_real_id() -> None:
    catalogs = {"a": _catalog("db1", "echo"), "b": _catalog("db1", "echo")}
    groups = storage_groups({"a": ["db1"], "b": ["db1"]}, StorageMode.AUTO)
    ids = database_ids("gw", groups, catalogs)
    assert ids == DatabaseIds() and ids.show("db1") == "db1"


def test_an_entity_over_two_groups_gets_one_made_id_stable_and_translated_back() -> None:
    catalogs = {"a": _catalog("ra", "echo"), "b": _catalog("rb", "echo"), "c": _catalog("rc", "other")}
    groups = storage_groups({name: catalog["databases"] for name, catalog in catalogs.items()}, StorageMode.AUTO)
    ids = database_ids("gw", groups, catalogs)
    made = ids.show("ra")
    assert made == ids.show("rb") != "ra" and ids.show("rc") == "rc"  # "other" lives in one group only
    assert ids.behind == {made: {"ra": "ra", "rb": "rb"}}
    assert database_ids("gw", groups, dict(reversed(list(catalogs.items())))) == ids  # any process, any order
    assert database_ids("other-gateway", groups, catalogs).show("ra") != made
    config = {"databases": ["ra", "rb", "rc"], "os_database": "ra", "agents": catalogs["a"]["agents"],
              "session": {"dbs": [{"db_id": "ra"}, {"db_id": "rb"}, {"db_id": "rc"}]}}  # fmt: skip
    shown = ids.show_config(config, ("session",))
    assert shown["databases"] == [made, "rc"] and shown["os_database"] == made
    assert shown["agents"] == [{"id": "echo", "db_id": made}]
    assert shown["session"]["dbs"] == [{"db_id": made}, {"db_id": "rc"}]

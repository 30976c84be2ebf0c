"""Routing by storage: a request that touches stored data goes to the database groups holding it.

Upstreams that report the same database ids share storage (``Pool.storage_groups``). Then:

* a collection read (``GET /sessions``, ``/memories``, ...) goes to one usable upstream of each
  group, and the answers are merged (``api/merging.py``: exact pagination and order);
* an item (``/memories/{id}``, ...) is asked of each group in turn, in the rendezvous order of
  its id over the groups, until one does not answer 404;
* a delete by id, or a bulk delete, goes to every group: 404 only when every group said 404, an
  error when one failed, else the first success (AgentOS answers 204 for ids it does not have);
* a write that names a ``db_id`` goes to that database's group; one that does not goes to the
  group its ``user_id`` ranks first (rendezvous hashing over the group keys; no user id ranks
  as the empty one), the next one when that group has no usable upstream.

A request naming a ``db_id`` touches only that database's group. With one group (every upstream
on one database) each of these is a plain forward to one upstream, as before; with no group yet
(no upstream has said what it stores) it goes to any usable upstream, which answers as AgentOS.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.forwarding import UPSTREAM_HEADER, Fetched, Forwarder, segment
from gateway.api.merging import (
    LIST_SHAPES, ListShape, PageRequest, group_query, merge_count, merge_daily, merge_pages, merge_rows, merge_union,
    page_request,
)  # fmt: skip
from gateway.api.database_ids import DatabaseIds, database_ids, with_db_id
from gateway.balancing import Choice, StorageGroup, group_of_db, rank
from gateway.disconnect import until_disconnected
from gateway.errors import BadRequest
from gateway.pool import Upstream
from gateway.sender import Outgoing

class StorageRouter:
    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self._ids: Tuple[Any, DatabaseIds] = ((), DatabaseIds())  # (what they were made from, the ids)

    # -- which groups ------------------------------------------------------------------------------

    def groups(self) -> Tuple[StorageGroup, ...]:
        return self.forwarder.pool.storage_groups()

    def database_ids(self) -> DatabaseIds:
        """The database ids the client sees (``api/database_ids.py``), made again when the
        groups or an upstream's ``/config`` changed."""
        groups = self.groups()
        upstreams = self.forwarder.pool.upstreams
        source = (self.forwarder.settings.gateway_id, groups, tuple((n, u.catalog) for n, u in upstreams.items()))
        made_from, ids = self._ids
        same = len(made_from) == 3 and made_from[:2] == source[:2] and len(made_from[2]) == len(source[2])
        if not same or any(a[0] != b[0] or a[1] is not b[1] for a, b in zip(made_from[2], source[2])):
            ids = database_ids(source[0], groups, {name: u.catalog for name, u in upstreams.items()})
            self._ids = (source, ids)
        return ids

    def targets(self, db_id: Optional[str]) -> Tuple[StorageGroup, ...]:
        """The groups a request touches: those behind ``db_id`` when it names one (a group's
        own id, or one the gateway made; none when no group has it: an upstream then answers
        AgentOS's 404), else all of them."""
        groups = self.groups()
        if not db_id:
            return groups
        behind = self.database_ids().behind.get(db_id)
        if behind is not None:
            return tuple(group for group in groups if group.key in behind)
        group = group_of_db(groups, db_id)
        return (group,) if group is not None else ()

    def _sent_db_id(self, group: Optional[StorageGroup], db_id: Optional[str]) -> Optional[str]:
        """The real id ``group`` is sent for a ``db_id`` the gateway made; None to keep it."""
        if group is None or not db_id:
            return None
        return self.database_ids().behind.get(db_id, {}).get(group.key)

    def ranked(self, groups: Sequence[StorageGroup], key: str) -> List[StorageGroup]:
        """``groups`` in the rendezvous order of ``key`` over their keys."""
        by_key = {group.key: group for group in groups}
        return [by_key[name] for name in rank(key, [(group.key, 1.0) for group in groups])]

    def _members(self, group: StorageGroup) -> List[Upstream]:
        upstreams = self.forwarder.pool.upstreams
        return [upstreams[name] for name in group.members if name in upstreams]

    def choice(self, group: Optional[StorageGroup], key: Optional[str] = None) -> Choice:
        """Upstreams of ``group`` to try, in order (any upstream of the pool for no group)."""
        members = self._members(group) if group is not None else list(self.forwarder.pool.upstreams.values())
        return self.forwarder.choose(members, key)

    def _has_usable(self, group: StorageGroup) -> bool:
        return any(self.forwarder.pool.is_usable(upstream) for upstream in self._members(group))

    # -- the rules ---------------------------------------------------------------------------------

    async def forward_one(
        self, request: Request, outgoing: Outgoing, group: Optional[StorageGroup], db_id: Optional[str] = None
    ) -> Response:
        """``outgoing`` to one upstream of ``group``, its ``db_id`` translated to the group's own."""
        real_id = self._sent_db_id(group, db_id)
        if real_id is not None:
            outgoing = translated(outgoing, db_id, real_id)  # type: ignore[arg-type]
        return await self.forwarder.forward(request, self.choice(group), outgoing, with_affinity=False)

    async def read(self, request: Request, template: str, outgoing: Outgoing, db_id: Optional[str]) -> Response:
        """A collection read (or a usage-metrics refresh, every group's): one group's answer, or
        every group's merged."""
        groups = self.targets(db_id)
        shape = LIST_SHAPES.get(template)
        if len(groups) < 2 or shape is None:
            return await self.forward_one(request, outgoing, groups[0] if groups else None, db_id)
        path, _, raw_query = outgoing.path.partition("?")
        pairs = _pairs(raw_query)
        wanted: Optional[PageRequest] = None  # the client's page
        each = 0  # how many items each group is asked for (0: its whole answer, not paginated)
        cap = self.forwarder.settings.storage.merge_max_items
        if shape.kind in ("page", "rows"):
            wanted = page_request(shape, pairs)
            if wanted is None:  # not a pagination the gateway merges: AgentOS's own answer
                return await self.forward_one(request, outgoing, groups[0], db_id)
            if wanted.wanted > cap:
                raise BadRequest(
                    f"page × limit is {wanted.wanted}: a list merged over {len(groups)} databases reads at most "
                    f"{cap} items of each (storage.merge_max_items)"
                )
            each = wanted.wanted if shape.kind == "page" else cap  # rows: all (a key may be in several)
        seen: List[str] = []  # the upstreams that answered, for the answer's header
        work = asyncio.gather(
            *(
                self._group_list(request, group, path, self._group_pairs(pairs, group, db_id), shape, each, seen, outgoing.method)
                for group in groups
            )
        )
        results = await until_disconnected(request, work)
        failed = next((result for result in results if isinstance(result, Fetched)), None)
        if failed is not None:  # a group's error is the answer (its 422, its 503, ...)
            return Response(failed.body, status_code=failed.status, headers=failed.headers)
        if shape.kind == "rows" and any(_int_total(answer) > cap for answer in results):
            raise BadRequest(f"more than {cap} rows in one database cannot be merged (storage.merge_max_items)")
        if shape.kind == "page":
            assert wanted is not None
            merged: Any = merge_pages(results, wanted, empty_page_counts_zero=shape.empty_page_counts_zero)
        elif shape.kind == "rows":
            assert wanted is not None
            merged = merge_rows(results, wanted, shape)
        elif shape.kind == "union":
            merged = merge_union(results)
        elif shape.kind == "daily":
            merged = merge_daily(results)
        else:
            merged = merge_count(results, shape.count_field)
        headers = {}
        if self.forwarder.settings.affinity.headers:
            headers[UPSTREAM_HEADER] = ", ".join(sorted(set(seen)))
        return JSONResponse(merged, headers=headers)

    async def _group_list(
        self, request: Request, group: StorageGroup, path: str, pairs: List[Tuple[str, str]], shape: ListShape,
        each: int, seen: List[str], method: str = "GET",
    ) -> Any:  # fmt: skip
        """One group's first ``each`` items (several requests when the family caps its ``limit``
        lower), its parsed answer (its whole answer for ``each`` 0); or its answer as it came when
        that is not a 200."""
        budget = self.forwarder.settings.storage.merge_max_bytes
        if not each:
            fetched = await self._fetch(request, group, path, pairs, budget, seen, method)
            return _parsed(fetched, list if shape.kind == "union" else (dict, list) if shape.kind == "daily" else dict)
        chunk = min(each, shape.max_limit or each)
        items: List[Any] = []
        first: Optional[Dict[str, Any]] = None
        for page in range(1, math.ceil(each / chunk) + 1):
            fetched = await self._fetch(request, group, path, group_query(pairs, page, chunk), budget, seen)
            budget -= len(fetched.body)
            answer = _parsed(fetched, dict)
            if isinstance(answer, Fetched):
                return answer
            data = answer.get("data") if isinstance(answer.get("data"), list) else []
            first = first or answer
            items.extend(data)
            if len(data) < chunk or budget <= 0:
                break
        assert first is not None
        return {**first, "data": items[:each]}

    async def _fetch(
        self, request: Request, group: StorageGroup, path: str, pairs: List[Tuple[str, str]], budget: int,
        seen: List[str], method: str = "GET",
    ) -> Fetched:  # fmt: skip
        outgoing = Outgoing(method, path + ("?" + urlencode(pairs) if pairs else ""))
        fetched = await self.forwarder.fetch(request, self.choice(group), outgoing, max_bytes=max(budget, 1))
        seen.append(fetched.upstream)
        return fetched

    async def lookup(
        self, request: Request, outgoing: Outgoing, db_id: Optional[str], key: str, ids: Sequence[str] = ()
    ) -> Response:
        """An item: each group in turn (the rendezvous order of ``key``) until one has it. When
        none has: the 404 of the group that got furthest, the one whose detail names the most of
        the path's ``ids`` ("Run ... not found in session S" from the group holding session S,
        rather than another group's "Session S not found"), the first in order on a tie."""
        groups = self.targets(db_id)
        if len(groups) < 2:
            return await self.forward_one(request, outgoing, groups[0] if groups else None, db_id)
        missing: List[Response] = []
        for group in self.ranked(groups, key):
            answer = await self.forward_one(request, _copy(outgoing), group, db_id)
            if answer.status_code != 404:
                return answer
            missing.append(answer)
        return max(missing, key=lambda answer: _ids_named(answer, ids))

    async def everywhere(self, request: Request, outgoing: Outgoing, db_id: Optional[str]) -> Response:
        """A delete: every group (an id may be stored in any). 404 only when every group said
        so; a failure (not 2xx, not 404) is told, since the delete may be incomplete."""
        groups = self.targets(db_id)
        if len(groups) < 2:
            return await self.forward_one(request, outgoing, groups[0] if groups else None, db_id)
        answers = [await self.forward_one(request, _copy(outgoing), group, db_id) for group in groups]
        failed = next((a for a in answers if a.status_code >= 300 and a.status_code != 404), None)
        done = next((a for a in answers if 200 <= a.status_code < 300), None)
        return failed or done or answers[-1]

    async def write(self, request: Request, outgoing: Outgoing, db_id: Optional[str], user_id: Optional[str]) -> Response:
        """A write: the named database's group, else the group the user id ranks first."""
        groups = self.targets(db_id)
        if len(groups) < 2:
            return await self.forward_one(request, outgoing, groups[0] if groups else None, db_id)
        ranked = self.ranked(groups, user_id or "")
        group = next((group for group in ranked if self._has_usable(group)), ranked[0])
        return await self.forward_one(request, outgoing, group, db_id)

    async def by_session(
        self, request: Request, upstreams: List[Upstream], session_id: Optional[str], outgoing: Outgoing,
        db_id: Optional[str],
    ) -> Response:  # fmt: skip
        """A session's request to its entity's upstreams, in the session's order; a ``db_id``
        the gateway made is sent as the first upstream's group's own (a retry elsewhere may then
        meet AgentOS's 404 for it)."""
        choice = self.forwarder.choose(upstreams, session_id)
        if db_id and choice.order:
            group = next((g for g in self.groups() if choice.order[0] in g.members), None)
            real_id = self._sent_db_id(group, db_id)
            if real_id is not None:
                outgoing = translated(outgoing, db_id, real_id)
        return await self.forwarder.forward(request, choice, outgoing, with_affinity=False)

    def _group_pairs(self, pairs: List[Tuple[str, str]], group: StorageGroup, db_id: Optional[str]) -> List[Tuple[str, str]]:
        real_id = self._sent_db_id(group, db_id)
        return with_db_id(pairs, real_id) if real_id is not None else pairs


def _int_total(answer: Any) -> int:
    total = (answer.get("meta") or {}).get("total_count") if isinstance(answer, dict) else None
    return total if isinstance(total, int) else 0


def translated(outgoing: Outgoing, made_id: str, real_id: str) -> Outgoing:
    """``outgoing`` with a ``db_id`` the gateway made replaced by a group's own: in the path
    (``/databases/{db_id}/migrate``), in the query, and in a JSON body that carries it."""
    path, _, raw_query = outgoing.path.partition("?")
    made, real = segment(made_id), segment(real_id)
    path = "/".join(real if part == made else part for part in path.split("/"))
    pairs = with_db_id(_pairs(raw_query), real_id)
    body = outgoing.body
    if body and outgoing.headers.get("Content-Type", "").split(";")[0].strip().lower() == "application/json":
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("db_id") == made_id:
            body = json.dumps({**data, "db_id": real_id}).encode()
    return Outgoing(
        outgoing.method, path + ("?" + urlencode(pairs) if pairs else ""), dict(outgoing.headers), body,
        outgoing.expects_stream,
    )  # fmt: skip


def _ids_named(answer: Response, ids: Sequence[str]) -> int:
    """How many of ``ids`` a (small, whole) 404 answer's body names."""
    body = bytes(answer.body) if isinstance(getattr(answer, "body", None), (bytes, memoryview)) else b""
    return sum(1 for value in ids if value and value.encode() in body)


def _copy(outgoing: Outgoing) -> Outgoing:
    return Outgoing(outgoing.method, outgoing.path, dict(outgoing.headers), outgoing.body, outgoing.expects_stream)


def _pairs(raw_query: str) -> List[Tuple[str, str]]:
    return parse_qsl(raw_query, keep_blank_values=True)


def _parsed(fetched: Fetched, expected: Any) -> Any:
    """A group's 200 answer as JSON of the ``expected`` type; anything else as it came."""
    if fetched.status != 200:
        return fetched
    try:
        answer = json.loads(fetched.body)
    except ValueError:
        answer = None
    if not isinstance(answer, expected):
        detail = json.dumps({"detail": f"Upstream {fetched.upstream}: not the list AgentOS answers"}).encode()
        return Fetched(fetched.upstream, 502, {"content-type": "application/json"}, detail)
    return answer


def named_value(request_query: Sequence[Tuple[str, str]], body: Optional[bytes], content_type: str, name: str) -> Optional[str]:
    """A field a request names in its query, else in its JSON body (``db_id``, ``user_id``)."""
    for key, value in reversed(list(request_query)):
        if key == name and value:
            return value
    if body and content_type.split(";")[0].strip().lower() == "application/json":
        try:
            data = json.loads(body)
        except ValueError:
            return None
        value = data.get(name) if isinstance(data, dict) else None
        return value if isinstance(value, str) and value else None
    return None

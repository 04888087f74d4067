"""Which upstream created each Responses API object, and for which account.

A stored response lives in the upstream that created it, under the operator's
upstream key: ``GET``/``DELETE /v1/responses/{id}`` must go to that provider, and
only for the account that created it (a key's own id when it has no account). A
request that continues one (``previous_response_id``) reads its whole context, so
the same rule holds there (``check_continued``): an id another account created, or
one the gateway never saw, is answered as OpenAI answers an id it does not know
(400 ``previous_response_not_found``), before any upstream is called. Kept in
memory (bounded: the newest are kept) and in the store (table ``tollway_responses``),
so a restarted gateway, or another instance on the same PostgreSQL, still finds them.
The row is written as soon as the answer's usage is read; on a shared store
(PostgreSQL) the answer's end waits for it (``stored``), so a client that continues
at once on another instance is never told the id is unknown (it was, for the ~1 ms
the write took, when the write ran behind). A single-instance store is written behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ProxyError
from .logs import throttled
from .provider import RESPONSE_ID
from .store import Migration, migrate

if TYPE_CHECKING:
    from .call import Call, Principal, Route
    from .store import Store

log = logging.getLogger("tollway")

#: How many created responses the gateway keeps in memory (the oldest are forgotten first).
MAX_REMEMBERED = 100_000
#: The longest an answer waits for its owner's row (a store that slow only delays it; past
#: that, the row still lands, and only a continuation on another instance meanwhile misses it).
WRITE_WAIT_S = 2.0
MIGRATIONS = (Migration(1, "stored responses: their provider and account", (
    "create table if not exists tollway_responses (id text primary key, provider text not null, "
    "account_id text, created_at double precision not null)",)),)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    provider: str
    account_id: str | None  # None: created without a key (auth off)
    created: float


class StoredResponses:
    """Which provider created each Responses API object, and for which account."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._limit = limit
        self._store: Store | None = None
        self._writes: set[asyncio.Task] = set()

    async def open(self, store: Store) -> None:
        await migrate(store, "responses", MIGRATIONS)
        self._store = store

    async def close(self) -> None:
        """Wait for the writes in flight (the store closes next)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        self._store = None

    def _keep(self, response_id: str, item: StoredResponse) -> None:
        self._items[response_id] = item
        self._items.move_to_end(response_id)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def remember_call(self, call: Call) -> asyncio.Task | None:
        """Remember the response a Responses API call created (``RESPONSE_ID``), once: as soon
        as its usage is read, before the client has the whole answer (so that it can continue
        it at once, here or on another instance), and at the end (a stream cut before its usage).
        The first to remember an id owns it. Returns the store's write when other instances
        read that store: ``await stored(write)`` before the answer's end."""
        response_id = call.state.get(RESPONSE_ID)
        if response_id is not None and call.route is not None and response_id not in self._items:
            write = self.remember(response_id, call.route, call.principal)
            if self._store is not None and self._store.shared:
                return write
        return None

    def remember(self, response_id: str, route: Route, principal: Principal | None) -> asyncio.Task | None:
        item = StoredResponse(route.provider.name, principal.account_id if principal is not None else None,
                              time.time())
        self._keep(response_id, item)
        return self._write("insert into tollway_responses (id, provider, account_id, created_at) "
                           "values (?, ?, ?, ?) on conflict (id) do nothing",
                           (response_id, item.provider, item.account_id, item.created))

    @staticmethod
    async def stored(write: asyncio.Task) -> None:
        """Wait until ``write`` is in the store (at most ``WRITE_WAIT_S``; it is never cancelled)."""
        await asyncio.wait((write,), timeout=WRITE_WAIT_S)

    async def owned(self, response_id: str, principal: Principal | None) -> StoredResponse | None:
        item = self._items.get(response_id)
        if item is None and self._store is not None:
            row = await self._store.fetchone("select provider, account_id, created_at from tollway_responses "
                                             "where id = ?", (response_id,))
            if row is not None:
                item = StoredResponse(row[0], row[1], row[2])
                self._keep(response_id, item)
        if item is None:
            return None
        if item.account_id is not None and (principal is None or principal.account_id != item.account_id):
            return None
        return item

    async def check_continued(self, call: Call) -> None:
        """400 unless the response a Responses request continues (``previous_response_id``)
        was created through the gateway for the caller's account: the same answer for one
        another account made and for one that does not exist, so neither is told apart."""
        response_id = call.body.get("previous_response_id")
        if response_id is None:
            return
        if not isinstance(response_id, str) or await self.owned(response_id, call.principal) is None:
            raise ProxyError(400, f"Previous response with id {response_id!r} not found.",
                             param="previous_response_id", code="previous_response_not_found")

    def forget(self, response_id: str) -> None:
        self._items.pop(response_id, None)
        self._write("delete from tollway_responses where id = ?", (response_id,))

    def _write(self, sql: str, params: tuple) -> asyncio.Task | None:
        if self._store is None:
            return None
        task = asyncio.get_running_loop().create_task(self._run(self._store, sql, params))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return task

    @staticmethod
    async def _run(store: Store, sql: str, params: tuple) -> None:
        try:
            await store.execute(sql, params)
        except Exception:  # memory still has it; only a restart would forget it
            throttled(log, logging.WARNING, "stored_responses", "could not write a stored response's owner",
                      exc_info=True)

"""Which upstream created each Responses API object, and for which account.

A stored response lives in the upstream that created it, under the operator's
upstream key: ``GET``/``DELETE /v1/responses/{id}`` must go to that provider, and
only for the account that created it. Kept in memory, bounded (the oldest are
forgotten first); a restarted gateway answers 404 for older ids.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .call import Principal, Route

#: How many created responses the gateway remembers (the oldest are forgotten first).
MAX_REMEMBERED = 100_000


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

    def remember(self, response_id: str, route: Route, principal: Principal | None) -> None:
        self._items[response_id] = StoredResponse(route.provider.name,
                                                  principal.account_id if principal is not None else None,
                                                  time.time())
        self._items.move_to_end(response_id)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def owned(self, response_id: str, principal: Principal | None) -> StoredResponse | None:
        item = self._items.get(response_id)
        if item is None:
            return None
        if item.account_id is not None and (principal is None or principal.account_id != item.account_id):
            return None
        return item

    def forget(self, response_id: str) -> None:
        self._items.pop(response_id, None)

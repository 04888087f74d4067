"""Usage rollups for the APIs: per day, key and model, from the ledger."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

from proxy import bad_request

from . import db
from .http import check_query
from .views import usage_view

if TYPE_CHECKING:
    from aiohttp import web

    from .book import Accounts


def day_of(value: str, where: str) -> str:
    """``2025-01-31`` (or an ISO time on that day) -> ``2025-01-31``."""
    try:
        return date.fromisoformat(value.strip()[:10]).isoformat()
    except ValueError:
        raise bad_request(f"{where}: expected a day like 2025-01-31, got {value!r}", param=where,
                          code="invalid_field") from None


async def rollups(accounts: Accounts, *, key_id: str | None = None, model: str | None = None,
                  since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
    """Flush what is queued first, so a caller reads its own requests."""
    await accounts.writer.flush()
    return await db.usage_rollups(accounts.store, key_id=key_id, model=model, since=since, until=until)


async def query_rollups(accounts: Accounts, request: web.Request, allowed: tuple[str, ...],
                        key_id: str | None = None) -> dict[str, Any]:
    q = check_query(request, allowed)
    since = day_of(q["since"], "since") if "since" in q else None
    until = day_of(q["until"], "until") if "until" in q else None
    rows = await rollups(accounts, key_id=key_id if key_id is not None else q.get("key"), model=q.get("model"),
                         since=since, until=until)
    data = [usage_view(r) for r in rows]
    if key_id is not None:
        for r in data:
            r.pop("key_id", None)
    total = sum(r["cost_micro_usd"] for r in rows)
    return {"data": data, "total": {"requests": sum(r["requests"] for r in rows), "cost": total / 1_000_000,
                                    "cost_micro_usd": total}}

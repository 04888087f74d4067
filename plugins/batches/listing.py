"""``GET /v1/files``: the caller's uploaded files, in OpenAI's list shape.

Query (as OpenAI's): ``purpose`` (only files of it), ``limit`` (1 to 10,000, default
10,000), ``order`` (``asc`` or ``desc`` by creation, default ``desc``), ``after`` (a file
id of an earlier page: the files after it in that order). A value that is none of
these is a 400 naming the parameter, as is one given twice.

Only uploads are listed (purpose ``batch``). A batch's output and error files are not
stored: they are made from the batch's lines when read, so listing them would read
every finished batch's lines to size them; they are reached through the batch's
``output_file_id`` and ``error_file_id``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy import ProxyError, bad_request
from proxy.store import Store

MAX_LIMIT = 10_000
PURPOSES = ("assistants", "assistants_output", "batch", "batch_output", "evals", "fine-tune", "fine-tune-results",
            "user_data", "vision")
_COLUMNS = "id, filename, bytes, created_at, purpose"


def query_value(request: web.Request, name: str) -> str | None:
    """Query parameter ``name``, or None; a 400 when it is given more than once."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise bad_request(f"'{name}' is given {len(values)} times: send it once", name)
    return values[0] if values else None


def page_limit(request: web.Request, default: int, most: int) -> int:
    """The ``limit`` query parameter: ``default`` when absent; a 400 unless an integer from 1 to ``most``."""
    text = query_value(request, "limit")
    if text is None:
        return default
    limit = int(text) if text.isascii() and text.isdigit() else 0  # (int() also reads "1_0", " +5", "٣")
    if not 1 <= limit <= most:
        raise bad_request(f"'limit' must be an integer between 1 and {most}, got {text[:40]!r}", "limit")
    return limit


async def list_files(request: web.Request, store: Store, account_id: str | None,
                     view: Any) -> dict:
    """The page of files ``request`` asks for, of ``account_id`` (None: every file, a gateway
    without keys); ``view(id, filename, bytes, created_at, purpose)`` makes each file object."""
    limit = page_limit(request, MAX_LIMIT, MAX_LIMIT)
    order = query_value(request, "order") or "desc"
    if order not in ("asc", "desc"):
        raise bad_request(f"'order' must be asc or desc, got {order[:40]!r}", "order")
    purpose = query_value(request, "purpose")
    if purpose is not None and purpose not in PURPOSES:
        raise bad_request(f"'purpose' must be one of {', '.join(PURPOSES)}, got {purpose[:40]!r}", "purpose")
    after = query_value(request, "after")
    where, params = ["1 = 1"], []
    if account_id is not None:
        where.append("account_id = ?")
        params.append(account_id)
    if purpose is not None:
        where.append("purpose = ?")
        params.append(purpose)
    if after is not None:
        row = await store.fetchone(f"select created_at from tollway_files where id = ? and "
                                   f"{' and '.join(where)}", (after, *params))
        if row is None:  # (another account's file is no cursor either)
            raise ProxyError(400, f"'after' must be the id of a file of this key's account, got {after[:60]!r}",
                             param="after", code="invalid_request")
        ahead = ">" if order == "asc" else "<"
        where.append(f"(created_at {ahead} ? or (created_at = ? and id {ahead} ?))")
        params += [row[0], row[0], after]
    rows = await store.fetchall(f"select {_COLUMNS} from tollway_files where {' and '.join(where)} "
                                f"order by created_at {order}, id {order} limit ?", (*params, limit + 1))
    data = [view(*r) for r in rows[:limit]]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}

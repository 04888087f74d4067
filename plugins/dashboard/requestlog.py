"""The request log: the ledger's own rows, newest first, filtered, one query per page.

Pages are cut by keyset (the last row's time and id), so page 500 costs what
page 1 does; the (time, id) and (key_id, time, id) ledger indexes serve it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugins.accounts.options import parse_time

PAGE = 50
COLUMNS = ("id", "time", "key_id", "model", "served_model", "provider", "status", "error_code", "stream",
           "cache_hit", "prompt_tokens", "completion_tokens", "cost_micro_usd", "latency_ms", "ttfb_ms", "byok")
STATUS_CLASSES = {"ok": ("status < 400", ()), "errors": ("status >= 400", ()),
                  "4xx": ("status >= 400 and status < 500", ()), "5xx": ("status >= 500", ())}


class FilterError(ValueError):
    """A filter value that cannot be read; the message names it."""


@dataclass(frozen=True)
class LogFilter:
    key_id: str | None = None
    model: str | None = None
    status: str | None = None  # a number, or ok / errors / 4xx / 5xx
    since: float | None = None
    until: float | None = None

    @classmethod
    def parse(cls, query, key_id: str | None = None) -> LogFilter:
        """From the query string; a customer's ``key_id`` overrides any ``key`` given."""
        def text(name: str) -> str | None:
            value = (query.get(name) or "").strip()
            return value or None

        status = text("status")
        if status is not None and status not in STATUS_CLASSES and not (status.isdigit() and len(status) == 3):
            raise FilterError("status: give a status like 429, or ok, errors, 4xx, 5xx")
        times = {}
        for name in ("since", "until"):
            try:
                times[name] = parse_time(text(name), name)
            except ValueError as exc:
                raise FilterError(str(exc)) from None
        return cls(key_id if key_id is not None else text("key"), text("model"), status, times["since"],
                   times["until"])

    def where(self) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.key_id is not None:
            clauses.append("key_id = ?")
            params.append(self.key_id)
        if self.model is not None:
            clauses.append("model = ?")
            params.append(self.model)
        if self.status is not None:
            if self.status in STATUS_CLASSES:
                clauses.append(STATUS_CLASSES[self.status][0])
            else:
                clauses.append("status = ?")
                params.append(int(self.status))
        if self.since is not None:
            clauses.append("time >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("time < ?")
            params.append(self.until)
        return clauses, params


def parse_cursor(text: str | None) -> tuple[float, str] | None:
    """``"<time>~<id>"`` (the last row of the previous page) -> (time, id)."""
    if not text:
        return None
    t, sep, rid = text.partition("~")
    try:
        return (float(t), rid) if sep and rid else None
    except ValueError:
        return None


async def page(store, flt: LogFilter, cursor: tuple[float, str] | None = None,
               size: int = PAGE) -> tuple[list[dict[str, Any]], str | None]:
    """(rows, cursor of the next page or None)."""
    clauses, params = flt.where()
    if cursor is not None:
        clauses.append("(time < ? or (time = ? and id < ?))")
        params.extend((cursor[0], cursor[0], cursor[1]))
    where = (" where " + " and ".join(clauses)) if clauses else ""
    rows = await store.fetchall(f"select {', '.join(COLUMNS)} from tollway_ledger{where} "
                                f"order by time desc, id desc limit {size + 1}", params)
    more = len(rows) > size
    out = [dict(zip(COLUMNS, r, strict=True)) for r in rows[:size]]
    nxt = f"{out[-1]['time']!r}~{out[-1]['id']}" if more else None
    return out, nxt

"""Optional persistence of cache entries in the gateway's SQL store (write-behind).

Requests never wait for the database: stores and evictions are queued and
written by a background task every ``interval`` seconds and at shutdown. At
start-up the newest live entries (up to ``max_entries``) are loaded back.
Vectors are kept with the name of the embedder that made them; rows made by
another embedder come back as exact-only entries (their vectors would live in
a different space).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from proxy.background import stop_task
from proxy.store import Store

from .store import CacheStore, Entry

log = logging.getLogger("tollway.cache")

TABLE = "tollway_cache"
_COLUMNS = ("key", "scope", "exact", "bucket", "created", "expires", "body", "usage", "query", "context",
            "guard_text", "embedder", "qvec", "cvec")


def _vec(v: np.ndarray | None) -> str | None:
    return None if v is None else base64.b64encode(v.astype(np.float32).tobytes()).decode()


def _unvec(s: str | None) -> np.ndarray | None:
    return None if not s else np.frombuffer(base64.b64decode(s), dtype=np.float32).copy()


class Persistence:
    def __init__(self, db: Store, cache: CacheStore, embedder: str, interval: float = 1.0,
                 describe: Callable[[str], Any] = lambda text: None) -> None:
        self.describe = describe  # the second stage's view of an entry's text (recomputed, not stored)
        self.db = db
        self.cache = cache
        self.embedder = embedder
        self.interval = interval
        self.pending: dict[str, Entry] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> int:
        """Create the table, load live entries, start the writer; returns how many were loaded."""
        await self.db.execute(
            f"create table if not exists {TABLE} (key text primary key, scope text not null, exact text not null, "
            "bucket text not null, created double precision not null, expires double precision not null, "
            "body text not null, usage text, query text, context text, guard_text text, embedder text, "
            "qvec text, cvec text)")
        now = self.cache.clock()
        await self.db.execute(f"delete from {TABLE} where expires <= ?", (now,))
        rows = await self.db.fetchall(
            f"select {', '.join(_COLUMNS)} from {TABLE} where expires > ? order by created desc limit ?",
            (now, self.cache.max_entries))
        for row in reversed(rows):
            r = dict(zip(_COLUMNS, row, strict=True))
            same_space = r["embedder"] == self.embedder
            entry = Entry(r["scope"], r["exact"], r["bucket"], orjson.loads(r["body"]),
                          orjson.loads(r["usage"]) if r["usage"] else None, r["created"], r["expires"],
                          r["query"] or "", r["context"] or "", r["guard_text"] or "",
                          _unvec(r["qvec"]) if same_space else None,
                          _unvec(r["cvec"]) if same_space else None)
            if entry.query_vec is not None:
                entry.features = self.describe(entry.guard_text)
            self.cache.put(entry)
        self.cache.drain_removed()
        self._task = asyncio.create_task(self._run())
        return len(rows)

    def saved(self, entry: Entry) -> None:
        self.pending[entry.key] = entry

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:
                log.exception("cache: writing entries to the store failed")

    async def flush(self) -> None:
        live = self.cache.entries
        removed = [k for k in dict.fromkeys(self.cache.drain_removed()) if k not in live]
        pending = {k: e for k, e in self.pending.items() if live.get(k) is e}
        self.pending = {}
        if removed:
            await self.db.executemany(f"delete from {TABLE} where key = ?", [(k,) for k in removed])
        if pending:
            rows = [(e.key, e.scope, e.exact, e.bucket, e.created, e.expires, orjson.dumps(e.body).decode(),
                     orjson.dumps(e.usage).decode() if e.usage else None, e.query, e.context, e.guard_text,
                     self.embedder, _vec(e.query_vec), _vec(e.context_vec)) for e in pending.values()]
            updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
            await self.db.executemany(
                f"insert into {TABLE} ({', '.join(_COLUMNS)}) values ({', '.join('?' * len(_COLUMNS))}) "
                f"on conflict (key) do update set {updates}", rows)

    async def close(self) -> None:
        await stop_task(self._task)
        self._task = None
        await self.flush()

"""The in-memory cache: entries in LRU order with a TTL, and per-bucket vector matrices.

One ``Entry`` per (scope, exact key). Entries that have vectors are also in the
``Bucket`` of their (scope, bucket key): a contiguous float32 matrix searched
with one matrix-vector product per lookup (a bucket holds requests that differ
only in their text, so buckets stay small; at 10k entries of 384 floats the
product is well under a millisecond). Removal swaps the last row in, so the
matrix never has holes.

Expired entries are dropped when met (lookup) and by a sweep every
``sweep_every`` insertions; the LRU bound (``max_entries``) is exact.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class Entry:
    scope: str
    exact: str
    bucket: str
    body: dict  # the OpenAI chat.completion served on a hit
    usage: dict | None  # OpenAI usage object of the original answer
    created: float
    expires: float
    query: str = ""
    context: str = ""
    guard_text: str = ""
    query_vec: np.ndarray | None = None
    context_vec: np.ndarray | None = None
    features: Any = None  # what the second stage compares (matcher.SecondStage.describe)
    hits: int = 0

    @property
    def key(self) -> str:
        return f"{self.scope}|{self.exact}"  # exact is 64 hex digits: unambiguous


@dataclass(slots=True)
class Bucket:
    keys: list[str] = field(default_factory=list)
    q: np.ndarray | None = None
    c: np.ndarray | None = None  # None when the bucket's conversations have one turn

    def add(self, key: str, q: np.ndarray, c: np.ndarray | None) -> None:
        n = len(self.keys)
        if self.q is None:
            self.q = np.empty((4, q.shape[0]), dtype=np.float32)
            if c is not None:
                self.c = np.empty((4, c.shape[0]), dtype=np.float32)
        elif n == self.q.shape[0]:
            self.q = np.concatenate([self.q, np.empty_like(self.q)])
            if self.c is not None:
                self.c = np.concatenate([self.c, np.empty_like(self.c)])
        self.q[n] = q
        if self.c is not None:
            self.c[n] = c
        self.keys.append(key)

    def compatible(self, c: np.ndarray | None) -> bool:
        """Every row of a bucket has a context vector, or none has."""
        return self.q is None or (self.c is None) == (c is None)

    def remove(self, key: str) -> None:
        """Drop ``key``'s row; a key the bucket does not hold is a no-op (an entry stored first
        without vectors, then again once embedded, is removed before it joins)."""
        try:
            i = self.keys.index(key)
        except ValueError:
            return
        last = len(self.keys) - 1
        if i != last:
            self.keys[i] = self.keys[last]
            self.q[i] = self.q[last]
            if self.c is not None:
                self.c[i] = self.c[last]
        self.keys.pop()

    def similarities(self, q: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        n = len(self.keys)
        sims = self.q[:n] @ q
        if self.c is not None and c is not None:
            sims = np.minimum(sims, self.c[:n] @ c)
        return sims


class CacheStore:
    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.time,
                 sweep_every: int = 256) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self.sweep_every = sweep_every
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.buckets: dict[tuple[str, str], Bucket] = {}
        self._inserts = 0
        self.removed: list[str] = []  # keys dropped since the last drain (for persistence)

    def __len__(self) -> int:
        return len(self.entries)

    def get_exact(self, scope: str, exact: str) -> Entry | None:
        key = f"{scope}|{exact}"
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            self.remove(key)
            return None
        self.entries.move_to_end(key)
        return entry

    def has_neighbours(self, scope: str, bucket: str) -> bool:
        """Does the (scope, bucket) hold any entry with vectors (anything a semantic lookup could find)?"""
        b = self.buckets.get((scope, bucket))
        return b is not None and bool(b.keys)

    def candidates(self, scope: str, bucket: str, q: np.ndarray, c: np.ndarray | None, threshold: float,
                   limit: int = 4) -> tuple[list[tuple[Entry, float]], float]:
        """Up to ``limit`` live entries at or above ``threshold``, most similar first; and the best similarity."""
        b = self.buckets.get((scope, bucket))
        if b is None or not b.keys or not b.compatible(c):
            return [], 0.0
        sims = b.similarities(q, c)
        best = float(sims.max())
        if best < threshold:
            return [], best
        if len(sims) > limit:
            part = np.argpartition(-sims, limit)[:limit]
            order = part[np.argsort(-sims[part])]
        else:
            order = np.argsort(-sims)
        now = self.clock()
        out = []
        for i in order:
            sim = float(sims[i])
            if sim < threshold:
                break
            entry = self.entries[b.keys[i]]
            if entry.expires > now:  # an expired one is dropped by the next sweep
                out.append((entry, sim))
        return out, best

    def touch(self, entry: Entry) -> bool:
        """Mark a served entry as recently used; False when it is gone (evicted or expired meanwhile)."""
        if self.entries.get(entry.key) is not entry or entry.expires <= self.clock():
            return False
        self.entries.move_to_end(entry.key)
        return True

    def put(self, entry: Entry) -> None:
        key = entry.key
        if key in self.entries:
            self.remove(key)
        self.entries[key] = entry
        if entry.query_vec is not None:
            b = self.buckets.setdefault((entry.scope, entry.bucket), Bucket())
            if b.compatible(entry.context_vec):
                b.add(key, entry.query_vec, entry.context_vec)
            else:
                entry.query_vec = entry.context_vec = None  # exact-only: never compared without its context
        while len(self.entries) > self.max_entries:
            oldest = next(iter(self.entries))
            self.remove(oldest)
        self._inserts += 1
        if self._inserts % self.sweep_every == 0:
            self.sweep()

    def remove(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        self.removed.append(key)
        if entry.query_vec is not None:
            bkey = (entry.scope, entry.bucket)
            b = self.buckets.get(bkey)
            if b is not None:
                b.remove(key)
                if not b.keys:
                    del self.buckets[bkey]

    def sweep(self) -> int:
        """Drop every expired entry; returns how many."""
        now = self.clock()
        dead = [k for k, e in self.entries.items() if e.expires <= now]
        for k in dead:
            self.remove(k)
        return len(dead)

    def clear(self) -> None:
        self.removed.extend(self.entries)
        self.entries.clear()
        self.buckets.clear()

    def drain_removed(self) -> list[str]:
        out, self.removed = self.removed, []
        return out

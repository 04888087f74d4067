"""Helpers for the tests of shared counters and fleets: every kind of counters
(memory, Redis), each test with its own Redis key prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from plugins.accounts.counters import Counters, MemoryCounters

COUNTER_KINDS = ("memory",)


@asynccontextmanager
async def counters_of(kind: str) -> AsyncIterator[Counters]:
    """Fresh counters of this kind."""
    counters = MemoryCounters()
    try:
        yield counters
    finally:
        await counters.close()

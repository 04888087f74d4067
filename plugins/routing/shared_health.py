"""Breakers shared by a fleet: with ``storage.counters`` on Redis, a breaker that opens or
closes on one instance opens or closes on every other within a second.

Each instance still counts its own answers (a per-request round trip to Redis would cost
more than the breaker saves); what is shared is the outcome. A change is written to one
Redis hash (``<prefix>routing:health``: deployment -> its state, the wall-clock time its
cooldown ends, why) and announced with a change notice (the counters' pub/sub channel),
both sent behind the request that caused it. On a notice, and once at start-up, every
other instance reads the hash and takes each deployment's state into its own
``HealthBoard`` (``HealthBoard.take``). A closed breaker's request path reads only memory.

After the cooldown the fleet as a whole sends at most ``half_open_probes`` probes at a
time: a request that would probe first takes one of the fleet's probe slots in Redis (a
concurrency slot of the counters, ``claim_probe``: one round trip, in half-open only;
the slot of an instance that dies expires with the counters' ``hold_ttl``). Refused, it
goes to another deployment as if this one were open. The first probe to succeed closes
the breaker everywhere; one that fails opens it everywhere again and keeps its slot for
the new cooldown, so no other instance probes the dead deployment before it has heard.
With Redis down, each instance keeps to its own cap, as without Redis.

Failure counts stay per instance: sharing them would cost a round trip per answer (or a
fleet that opens later than one process would). With traffic spread over N instances,
the fleet sends about N x ``min_requests`` answers to a failing deployment before the
first instance opens it for all.

A key of a provider's pool that an upstream answered 429 rests on every instance the
same way (``KeyPool.on_rest``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import orjson

from proxy import ProxyError
from proxy.logs import throttled

from .health import CLOSED, OPEN, HealthBoard, HealthEvent

if TYPE_CHECKING:
    from proxy import Provider

    from ..accounts.redis_counters import RedisCounters

__all__ = ["SharedHealth"]

log = logging.getLogger("tollway.routing")
TOPIC = "routing.health"
POOL, REST = "key-pool:", "rest"  # a pool key's entry: "key-pool:<provider>#<index>", state "rest"
PROBES = "routing.probe\x1f"  # + deployment: the counters' concurrency scope of its half-open probes


class SharedHealth:
    """Publishes this instance's breaker changes and takes the other instances'."""

    def __init__(self, counters: RedisCounters, board: Callable[[], HealthBoard], clock: Callable[[], float],
                 providers: Callable[[], Mapping[str, Provider]]) -> None:
        self.counters = counters
        self.board = board  # the router's current board (a reload may replace it)
        self.clock = clock
        self.providers = providers  # the gateway's current providers (their key pools)
        self.key = counters.prefix + "routing:health"
        self.seen: dict[str, bytes] = {}  # each deployment's entry as last written or taken here
        self.wrote: dict[str, bytes] = {}  # each deployment's entry as last written here
        counters.on(TOPIC, self.load)

    def publish(self, event: HealthEvent) -> None:
        """This instance's breaker opened or closed: tell the others (behind, never awaited)."""
        if event.remote or event.state not in (OPEN, CLOSED):
            return
        entry = orjson.dumps({"state": event.state, "until": time.time() + event.retry_in, "reason": event.reason})
        self.seen[event.deployment] = self.wrote[event.deployment] = entry
        self.counters.behind(self._send(event.deployment, entry))

    async def claim_probe(self, deployment: str, cap: int) -> bool:
        """One of the fleet's ``cap`` probe slots of a half-open deployment (False: all taken)."""
        try:
            return await self.counters.enter(PROBES + deployment, cap)
        except ProxyError:  # Redis down: this instance's own cap only, as without Redis
            throttled(log, logging.WARNING, "shared_probes", "routing: cannot take a fleet-wide probe slot in Redis; "
                      "this instance probes within its own half_open_probes until it can")
            return True

    def end_probe(self, deployment: str, keep_for: float) -> None:
        """The probe is over: its slot is given back now, or after ``keep_for`` seconds (the
        cooldown of a breaker it opened again: no other instance probes before then)."""
        if keep_for > 0:
            asyncio.get_running_loop().call_later(keep_for, self.counters.leave, PROBES + deployment)
        else:
            self.counters.leave(PROBES + deployment)

    def watch_pools(self, providers: Mapping[str, Provider]) -> None:
        """Tell the others when one of these providers' pool keys is answered 429 (its rest)."""
        for name, provider in providers.items():
            if provider.key_pool is not None:
                provider.key_pool.on_rest = functools.partial(self._rested, name)

    def _rested(self, provider: str, index: int, seconds: float) -> None:
        entry = orjson.dumps({"state": REST, "until": time.time() + seconds, "reason": "429"})
        name = f"{POOL}{provider}#{index}"
        self.seen[name] = self.wrote[name] = entry
        self.counters.behind(self._send(name, entry))

    async def _send(self, deployment: str, entry: bytes) -> None:
        link = self.counters.link
        await link.call(lambda: link.redis.hset(self.key, deployment, entry))
        self.counters.notify(TOPIC)

    async def load(self) -> None:
        """Take every deployment's shared state (a notice came, or the instance starts)."""
        link = self.counters.link
        wrote = dict(self.wrote)
        try:
            entries = await link.call(lambda: link.redis.hgetall(self.key))
        except Exception as exc:  # (Redis down: one line, no traceback; the counters said why)
            throttled(log, logging.WARNING, "shared_health", "routing: cannot read the shared breakers from Redis; "
                      "this instance keeps its own until it can", exc_info=not isinstance(exc, ProxyError))
            return
        board, now, wall = self.board(), self.clock(), time.time()
        for key, raw in entries.items():
            name = key.decode() if isinstance(key, bytes) else key
            if self.seen.get(name) == raw:
                continue  # nothing new: an entry is taken once
            if self.wrote.get(name) is not wrote.get(name):
                # Written here while the read was on its way: what was read is older (another
                # instance's entry newer than this one comes with its own notice).
                continue
            self.seen[name] = raw
            try:
                entry = orjson.loads(raw)
                state, until, reason = entry["state"], float(entry["until"]), str(entry["reason"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if state == REST:
                self._take_rest(name, until - wall)
            else:
                board.take(name, state, until - wall, now, reason)

    def _take_rest(self, name: str, seconds: float) -> None:
        provider, _, index = name[len(POOL):].rpartition("#")
        found = self.providers().get(provider)
        if seconds > 0 and found is not None and found.key_pool is not None and index.isdigit():
            found.key_pool.rest_for(int(index), seconds)

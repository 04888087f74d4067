"""The garbage collector's settings for a serving process (``tollway serve``, each worker).

Measured under load (64 connections, tollway-full, `gc.callbacks` timing every
collection): with CPython's defaults the cyclic collector took ~9 us of every
request's ~175 us of CPU, and found nothing to free (the request path makes no
reference cycles: "Item 12, third pass" in benchmarks/RESULTS.md). Two causes:

- A young collection runs every 700 net allocations of tracked objects. With 64
  requests in flight, each holding a few dozen live containers (its call, state,
  headers, coroutines), the young generation passes 700 every few dozen requests,
  and every collection traverses the in-flight requests' objects and promotes them
  (still alive) to the older generations, where they are later freed by reference
  counting. Past ~10,000 that count is rarely reached under load: the net
  allocations rise and fall with the requests in flight.
- The promoted objects then trigger full collections (the oldest generation grows by
  a quarter), each of which traversed the ~65,000 objects made at start-up
  (configuration, modules, tables): ~17 ms each, a few a second.

So once the gateway has started: one full collection, then the objects alive then
are moved out of the collector's sight (``gc.freeze()``: never traversed again,
still freed by reference counting when they go), and the young threshold is raised.
Cyclic garbage is still collected, later (at most ``YOUNG_THRESHOLD`` more
allocations). What is frozen is never traversed again, so a frozen object that later
becomes part of unreachable cycles is not freed: that can only be start-up's own objects
(e.g. the first config's snapshot, dropped at a reload), once in the process's life, and
no more than start-up made; what is made after (later reloads included) is collected as
usual. Only the serving process's entry point calls this: a process that builds gateways
(the tests) keeps the defaults.
"""

from __future__ import annotations

import gc

#: Net allocations of tracked objects between two young collections (CPython's default: 700).
YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """After start-up: collect once, freeze what is alive, raise the young threshold."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)

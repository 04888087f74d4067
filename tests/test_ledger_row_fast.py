"""The ledger row's times are ``round(us) / 1000`` without ``round()``'s call.

``Plugin.row`` rounds a request's latency and time to first byte, in microseconds, to a
whole number by adding and taking away 1.5 * 2**52 (``plugins/ledger.py``'s ``_ROUNDER``):
the float addition rounds half to even, as ``round()`` does. Held here against the
definition it replaced (``round((t - started) * 1000.0 * 1000) / 1000``) through the row
itself, on exact halves, their neighbours, whole numbers and random times, from a
microsecond to far past any process's life (where ``round()`` is used again)."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

from plugins.accounts.db import LEDGER_COLUMNS
from plugins.ledger import Plugin
from proxy.call import Call

LATENCY, TTFB = LEDGER_COLUMNS.index("latency_ms"), LEDGER_COLUMNS.index("ttfb_ms")


def _old(us: float) -> float:
    return round(us) / 1000


def _row_times(plugin: Plugin, started: float, ended: float, first_byte: float | None) -> tuple:
    call = Call(None, "chat", {"model": "m", "messages": []}, b"{}")
    call.principal = SimpleNamespace(id="k1", account_id="a1")
    call.response.status = 200
    call.timing.started, call.timing.ended_at, call.timing.first_byte_at = started, ended, first_byte
    row = plugin.row(call, None)
    return row[LATENCY], row[TTFB]


def _microseconds(rng: random.Random) -> float:
    """Exact half microseconds and their neighbours, whole ones, random ones, huge ones."""
    kind = rng.random()
    if kind < 0.3:
        return rng.randrange(-10**7, 10**7) + 0.5
    if kind < 0.45:
        return float(rng.randrange(0, 10**7))
    if kind < 0.6:
        return math.nextafter(rng.randrange(0, 10**7) + 0.5, rng.choice((-math.inf, math.inf)))
    if kind < 0.97:
        return rng.random() * 10 ** rng.randrange(0, 12)
    return rng.choice((2.0**51 - 0.5, 2.0**51 - 1.5, math.nextafter(2.0**51, 0.0), 2.0**51, 2.0**51 + 2,
                       2.0**52 + 1, 2.0**60, -(2.0**51) + 0.5, -(2.0**51)))


def _elapsed(rng: random.Random) -> tuple[float, float]:
    """(started, ended): a time after ``started`` whose microseconds, as the row computes them,
    are one of ``_microseconds`` exactly (retried until the arithmetic lands on it)."""
    while True:
        us = _microseconds(rng)
        started = rng.choice((0.0, 0.0, 1.0, 12345.678))
        ended = started + us / 1e6
        if (ended - started) * 1000.0 * 1000 == us:
            return started, ended


def test_row_times_are_rounds() -> None:
    rng = random.Random(21)
    plugin = Plugin()
    halves = 0
    for _ in range(20_000):
        started, ended = _elapsed(rng)
        first_byte = None
        if rng.random() < 0.8:
            first_byte = started + rng.choice((ended - started, rng.random()))
        latency, ttfb = _row_times(plugin, started, ended, first_byte)
        us = (ended - started) * 1000.0 * 1000
        halves += us % 1 == 0.5
        assert latency == _old(us) and type(latency) is float, (started, ended, latency, _old(us))
        if first_byte is None:
            assert ttfb is None
        else:
            want = _old((first_byte - started) * 1000.0 * 1000)
            assert ttfb == want and type(ttfb) is float, (started, first_byte, ttfb, want)
    assert halves > 2000  # the ties (half to even) are tried, not only the easy cases

"""The request path's shortcuts answer what the general code they skip answers.

``PriceTable.cost`` prices the usual answer (no prompt cache, list price) without its
clamps; ``requested_output`` reads a JSON integer cap without two ``isinstance`` calls
and skips ``choices`` for a body without ``n``. Each is held against the general
definition it shortcuts, on inputs built from the edge cases."""

from __future__ import annotations

import random
from types import SimpleNamespace

from plugins.accounts.estimate import OUTPUT_CAPS, choices, requested_output
from plugins.accounts.money import FEMTO_PER_MICRO, MICRO, PriceTable


def _general_cost(table: PriceTable, prompt: int, completion: int, cached: int = 0, multiplier_ppm: int = MICRO,
                  cache_write: int = 0) -> int:
    """``PriceTable.cost`` before its shortcut."""
    prompt, completion, cached, cache_write = max(prompt, 0), max(completion, 0), max(cached, 0), max(cache_write, 0)
    cached = min(cached, prompt)
    cache_write = min(cache_write, prompt - cached)
    femto = ((prompt - cached - cache_write) * table.input + cached * table.cached_input
             + cache_write * table.cache_write + completion * table.output)
    if multiplier_ppm != MICRO:
        return -(-femto * multiplier_ppm // (table.divisor * MICRO))
    return -(-femto // table.divisor)


def test_cost_shortcut_matches_the_general_sum() -> None:
    rng = random.Random(12)
    counts = [-5, -1, 0, 1, 2, 7, 999, 128_000, 10**9]
    for _ in range(20_000):
        table = PriceTable(input=rng.choice([0, 1, 150_000, 3_000_000_000]), output=rng.choice([0, 7, 600_000]),
                           cached_input=rng.choice([0, 75_000]), cache_write=rng.choice([0, 187_500, 300_000]),
                           divisor=rng.choice([FEMTO_PER_MICRO, FEMTO_PER_MICRO * 83]))
        args = (rng.choice(counts), rng.choice(counts), rng.choice(counts + [0] * 8),
                rng.choice([MICRO] * 4 + [0, 1, 500_000, 1_250_000]), rng.choice(counts + [0] * 8))
        assert table.cost(*args) == _general_cost(table, *args), (table, args)


def _general_requested_output(body: dict) -> int | None:
    """``requested_output`` before its shortcut."""
    for name in OUTPUT_CAPS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value * choices(body)
    return None


class _Flag(int):
    """An int subclass (not what JSON gives, but a plugin may set one): still a cap."""


def test_requested_output_shortcut_matches_the_general_reading() -> None:
    rng = random.Random(7)
    values = [None, 0, -3, 1, 256, 4096, True, False, 2.5, "64", _Flag(9), [1]]
    ns = [None, 0, 1, 2, 3, 128, 129, True, "2", 1.5]
    for _ in range(20_000):
        body: dict = {"model": "m"}
        for name in rng.sample(OUTPUT_CAPS, rng.randrange(len(OUTPUT_CAPS) + 1)):
            body[name] = rng.choice(values)
        if rng.random() < 0.5:
            body["n"] = rng.choice(ns)
        assert requested_output(SimpleNamespace(body=body)) == _general_requested_output(body), body

"""The ledger flush's due time: half of ``flush_ms`` after the oldest row waiting, sooner when
recent flushes ended late, so that the oldest row's wait + its flush stays within ``flush_ms``
(README, "What a crash can lose"). A fake clock: no timed assertions."""

from __future__ import annotations

import random

import openai
import pytest
from business import DEMO, biz_config

from plugins.accounts import ACCOUNTS
from plugins.accounts import writer as writer_mod
from plugins.accounts.writer import LATE_DECAY, due_after


def test_due_after_keeps_due_plus_lateness_within_flush():
    rng = random.Random(7)
    for _ in range(20_000):
        flush_s = rng.choice([0.001, 0.05, 0.2, 1.0, 600.0]) * rng.uniform(0.5, 2)
        late_s = rng.choice([0.0, rng.uniform(-1, 2) * flush_s, rng.uniform(0, 0.4) * flush_s])
        due = due_after(flush_s, late_s)
        assert flush_s / 20 <= due <= flush_s / 2
        if late_s <= 0.3 * flush_s:
            assert due == flush_s / 2  # not late: as before (the c=1 path, a quiet server)
        if late_s <= 0.75 * flush_s:
            assert due + late_s <= 0.8 * flush_s * (1 + 1e-12)  # a fifth of flush_ms in hand


class FakeTime:
    """``time`` for the writer's module: a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        import time
        return time.time()


class RecordingLoop:
    """The running loop, with each ``call_later`` delay the writer asks for recorded."""

    def __init__(self, loop) -> None:
        self.loop, self.delays = loop, []

    def call_later(self, delay, callback, *args):
        self.delays.append(delay)
        return self.loop.call_later(delay, callback, *args)


async def test_a_late_flush_brings_the_next_due_time_forward(start_gateway, monkeypatch):
    flush_ms = 600_000  # (the writer's own timer never fires during the test)
    flush_s = flush_ms / 1000
    running = await start_gateway(biz_config(ledger={"flush_ms": flush_ms}))
    writer = running.gw.services[ACCOUNTS].writer
    clock = FakeTime()
    monkeypatch.setattr(writer_mod, "time", clock)
    loop = RecordingLoop(writer._loop)
    writer._loop = loop
    slow = [0.0]
    store_batch = writer_mod.db.store_batch

    async def timed_store_batch(*args, **kwargs):
        clock.now += slow[0]  # the commit took this long (waiting for the core under load)
        return await store_batch(*args, **kwargs)

    monkeypatch.setattr(writer_mod.db, "store_batch", timed_store_batch)
    client = openai.AsyncOpenAI(base_url=running.url, api_key=DEMO)
    try:
        async def one_request() -> None:
            await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])

        async def flush() -> None:  # as the writer's task does: the due timer disarmed, then a flush
            writer._disarm()
            await writer.flush()

        await flush()  # (anything queued at start)
        loop.delays.clear()
        await one_request()
        assert loop.delays == [flush_s / 2]  # a quiet server: half of flush_ms, as before
        slow[0] = 1.2 * flush_s  # this flush's commit ends 0.7 flush_ms past its due time
        await flush()
        assert writer.late_s == pytest.approx(0.7 * flush_s)
        await one_request()
        assert loop.delays[-1] == pytest.approx(0.1 * flush_s)  # 0.1 + 0.7 = 0.8 of flush_ms
        slow[0] = 0.0
        await flush()  # on time: the lateness fades
        assert writer.late_s == pytest.approx(0.7 * flush_s * LATE_DECAY)
        for _ in range(100):
            await one_request()
            await flush()
        await one_request()
        assert loop.delays[-1] == flush_s / 2  # back to half once flushes keep time again
        assert writer.flushes >= 102
    finally:
        await client.close()

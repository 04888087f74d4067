"""What a metered, rate-limited request writes to Redis, through the real server: its ``ADMIT``,
then its ``SETTLE`` with the token correction (``ADJUST``) in the same write, before the
answer's end. Each write to Redis is a system call and a wake-up of Redis, the largest
part of what shared counters add per request (``benchmarks/RESULTS.md``, issue 11's
fourth round); before, the correction was a third write after the answer, with a reply
of its own.

Redis at 127.0.0.1:6379 (its own key prefix) and a PostgreSQL schema of its own."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import pytest
from business import DEMO, biz_config, chat
from fleet import redis_url
from stores import fresh_database

from plugins.accounts import ACCOUNTS, redis_lease_scripts
from plugins.accounts import redis_scripts as lua
from plugins.accounts.counters import COUNTERS

pytestmark = pytest.mark.fleet

SCRIPTS = {name: source for module in (lua, redis_lease_scripts) for name, source in vars(module).items()
           if name.isupper() and not name.startswith("_") and isinstance(source, str) and "redis.call" in source}


@contextmanager
def writes_to_redis(link) -> Iterator[list[bytes]]:
    """Every write on the scripts' connection while inside, as bytes."""
    transport = link.pipe.transport
    sent: list[bytes] = []
    write = transport.write

    def counted(data: bytes) -> None:
        sent.append(bytes(data))
        write(data)

    transport.write = counted
    try:
        yield sent
    finally:
        transport.write = write


def having(link, script: str, writes: list[bytes]) -> list[bytes]:
    """The writes that name ``script`` (by its SHA: EVALSHA)."""
    sha = link._sha(script).encode()
    return [w for w in writes if sha in w]


def scripts_in(link, writes: list[bytes]) -> list[list[str]]:
    """Each write's scripts by name, in order (for a failure's message: what went with what)."""
    names = {link._sha(source).encode(): name for name, source in SCRIPTS.items()}
    return [[names.get(sha, sha.decode()[:8]) for sha in re.findall(rb"[0-9a-f]{40}", w)] for w in writes]


async def writes_of_paid_requests(s: aiohttp.ClientSession, running, count: int = 5
                                  ) -> tuple[object, list[list[bytes]], list[bytes]]:
    """Paid requests one at a time, each with a ``max_tokens`` far above what the answer uses
    (its estimate is corrected: ``ADJUST``), after the scripts are known to Redis (one it had
    not seen answers NOSCRIPT and is sent again, after the answer): the scripts' link, what
    was written to Redis during each request, and everything written until all settled."""
    counters = await running.gw.services.open(COUNTERS)
    await (await running.gw.services.open(ACCOUNTS)).settles_done()
    link = counters.link
    each = []
    with writes_to_redis(link) as sent:
        for _ in range(count):
            before = len(sent)
            status, headers, body = await chat(s, running, DEMO, max_tokens=500)
            assert status == 200, body
            assert float(headers["x-tollway-cost"]) > 0
            each.append(sent[before:])
        await counters.settled()
    return link, each, sent


@pytest.fixture
async def pg_url(tmp_path):
    async with fresh_database("postgres", tmp_path) as url:
        yield url


async def test_one_request_at_a_time_writes_its_admit_then_its_charge_with_its_correction(pg_url, start_gateway):
    config = biz_config(keys=[{"name": "demo", "key": DEMO, "credits": 5.0, "limits": {"tpm": 1_000_000}}])
    # The exact path's writes (with leases, the admission writes nothing: tests/test_leases.py)
    config["storage"] = {"url": pg_url, "counters": redis_url() + "&leases=off"}
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, _, body = await chat(s, running, DEMO, max_tokens=500)  # seeds the account in Redis
        assert status == 200, body
        link, each, sent = await writes_of_paid_requests(s, running)
    for mine in each:  # (a keep-alive of the holds could be among them: not counted)
        admits, charges = having(link, lua.ADMIT, mine), having(link, lua.SETTLE, mine)
        assert len(admits) == 1 and len(charges) == 1, scripts_in(link, mine)
        assert mine.index(admits[0]) < mine.index(charges[0])
        # the correction is in the charge's write
        assert having(link, lua.ADJUST, mine) == charges, scripts_in(link, mine)
    # and none was written on its own after
    assert having(link, lua.ADJUST, sent) == having(link, lua.SETTLE, sent), scripts_in(link, sent)


async def test_a_request_with_a_budget_settles_its_charge_and_its_budget_in_one_script(pg_url, start_gateway):
    """A key with a daily budget: each request's ``SETTLE`` also settles the budget (its hold
    freed, its charge counted), so Redis runs two scripts per request, as for a key without
    budgets; before, the budget's settle was a third script (``SETTLE_TOTALS``), a write and a
    reply of its own after the answer. Counted in the writes and in Redis's total."""
    config = biz_config(keys=[{"name": "demo", "key": DEMO, "credits": 5.0, "budgets": {"daily": 4.0}}])
    config["storage"] = {"url": pg_url, "counters": redis_url()}
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, headers, body = await chat(s, running, DEMO, max_tokens=500)  # seeds the account and the total
        assert status == 200, body
        spent = round(float(headers["x-tollway-cost"]) * 1e6)
        counters = await running.gw.services.open(COUNTERS)
        book = await running.gw.services.open(ACCOUNTS)
        await book.settles_done()  # (a script Redis had not seen answers NOSCRIPT and is sent again)
        await counters.settled()
        link = counters.link
        with writes_to_redis(link) as sent:
            for _ in range(5):
                status, headers, body = await chat(s, running, DEMO, max_tokens=500)
                assert status == 200, body
                spent += round(float(headers["x-tollway-cost"]) * 1e6)
            await counters.settled()
            await book.settles_done()
        assert len(having(link, lua.ADMIT, sent)) == 5 and len(having(link, lua.SETTLE, sent)) == 5, \
            [w[:60] for w in sent]
        assert having(link, lua.SETTLE_TOTALS, sent) == []
        # the budget rides in the charge's script
        assert all(b"total:budget:" in w for w in having(link, lua.SETTLE, sent))
        name, = [n for n in counters.totals if n.startswith("budget:k:")]
        hashed = await link.redis.hgetall(counters.total_keys(name)[0])
        assert {k.decode(): int(v) for k, v in hashed.items()} == {"used": spent, "held": 0}
        assert await link.redis.zcard(counters.total_keys(name)[1]) == 0
        assert counters.used_total(name) == spent

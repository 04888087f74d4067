"""Scripts sent behind without a task (``RedisCounters.send_behind``; the charges of
``Accounts.settle_shared_behind``): what they change happens once, even when Redis
forgot its scripts meanwhile (``SCRIPT FLUSH``, a restart): the NOSCRIPT reply sends
the script again, loaded. A Redis of the test's own (a script flush would disturb
every other test on the shared one)."""

from __future__ import annotations

import time
import types

from fleet import private_redis

from plugins.accounts.claims import Admission, CreditClaim, RateClaim
from plugins.accounts.gcra import Rule
from plugins.accounts.redis_counters import RedisCounters
from plugins.accounts.redis_credit import SharedCredit
from plugins.accounts.redis_link import RedisLink

TPM = Rule(tokens=True, label="tokens per minute", scope="", limit=6000, period=60.0, interval=0.01,
           state=("k1", "", "tpm"), limit_text="6000")


async def open_counters(port: int) -> RedisCounters:
    link = RedisLink(f"redis://127.0.0.1:{port}/0?prefix=behind:")
    await link.redis.ping()
    await link.connect_pipe()
    counters = RedisCounters(link)
    counters.start()
    return counters


async def test_corrections_and_releases_sent_behind_apply_once_after_a_script_flush(tmp_path):
    with private_redis(tmp_path) as redis_server:
        counters = await open_counters(redis_server.port)
        try:
            async def seed(_account: str) -> tuple[int, int]:
                return 1000, 1

            credit = SharedCredit(counters, seed)
            account = types.SimpleNamespace(id="acme", unlimited=False)
            admission = Admission()
            admission.add(RateClaim((TPM,), 100, time.time()))
            claim = admission.add(CreditClaim(account, 300, shared=True))
            await counters.admit(admission)
            assert admission.refused is None and claim.hold
            assert await credit.live("acme") == (1000, 300)
            at, debt = (await counters.link.redis.get("behind:rl2:k1\x1f\x1ftpm")).split()

            await counters.link.redis.script_flush()
            counters.adjust((TPM,), -40)  # the answer used 40 tokens fewer than estimated
            credit.release(account, claim.hold, 300)
            await counters.settled()

            assert await credit.live("acme") == (1000, 0)
            after = (await counters.link.redis.get("behind:rl2:k1\x1f\x1ftpm")).split()
            assert after[0] == at and float(after[1]) == float(debt) - 40 * TPM.interval
        finally:
            await counters.close()

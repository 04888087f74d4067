"""A batch line on its way upstream when its instance loses the claim to run batches.

The instance that ran the batches (the holder of a PostgreSQL session advisory lock) had its
session killed while its lines waited upstream; the next holder found them pending and ran
them again. Both answers came back and both were charged: the ledger kept one row per line
(its id is the line's, the second copy skipped, charge and all), so the stored balance paid
once while Redis, what the fleet lets the account spend, paid twice. Now the answer stored
first is the line's and only its run is charged; the other run gives its hold back and writes
no row. The upstream is called twice (a request cannot be unsent).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from business import DEMO, biz_config, credits
from fleet import TcpProxy, redis_url, until
from stores import fresh_database
from test_batches import wait_done
from test_fleet_batches import LINES, Upstream, agree, end_claim, runner_of, submit

from plugins.accounts import ACCOUNTS

pytestmark = pytest.mark.fleet


class TwoRuns:
    """The upstream of two runs of the same LINES lines: the first LINES calls are the first
    run's, the next LINES the second's; each run's answers wait for its own ``release``."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.count = 0
        self.arrived = (asyncio.Event(), asyncio.Event())  # every line of that run is upstream
        self.release = (asyncio.Event(), asyncio.Event())

    async def completions(self, request: web.Request) -> web.Response:
        said = (await request.json())["messages"][0]["content"]
        self.calls[said] = self.calls.get(said, 0) + 1
        run = min(self.count // LINES, 1)
        self.count += 1
        if self.count % LINES == 0:
            self.arrived[run].set()
        await self.release[run].wait()
        return web.json_response({"id": "c1", "object": "chat.completion", "created": int(time.time()),
                                  "model": "upstream-model",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": said},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})


async def idle(runner) -> None:
    """Until the runner has no line in flight (each settled: stored, charged or dropped)."""
    for _ in range(2000):
        if not runner.running:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{runner.running} batch lines still in flight")


@pytest.mark.parametrize("answers_first", ["old holder", "new holder"])
async def test_a_line_upstream_when_its_holder_loses_the_claim_is_stored_and_charged_once(
        start_gateway, serve_upstream, tmp_path, answers_first):
    upstream = TwoRuns()
    served = await serve_upstream({"POST /v1/chat/completions": upstream.completions})
    config = biz_config(served.url, enabled=["auth", "quotas", "pricing", "ledger", "batches"],
                        batches={"concurrency": LINES, "poll_seconds": 3600})
    async with fresh_database("postgres", tmp_path) as url:
        config["storage"] = {"url": url, "counters": redis_url()}
        old = await start_gateway(config)
        new = await start_gateway(config)
        async with openai.AsyncOpenAI(base_url=old.url, api_key=DEMO, max_retries=0) as client, \
                aiohttp.ClientSession() as s:
            start = (await credits(s, old, DEMO))["balance_micro_usd"]
            batch_id = await submit(client)  # the old holder runs every line; each waits upstream
            await upstream.arrived[0].wait()
            await end_claim(old.gw.store)  # its session killed (a PostgreSQL restart, a cut connection)
            taking = asyncio.ensure_future(runner_of(new).step())  # takes the claim, runs the lines again
            await asyncio.wait({taking, asyncio.ensure_future(upstream.arrived[1].wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            assert upstream.arrived[1].is_set() and runner_of(new).leading
            first, second = (0, 1) if answers_first == "old holder" else (1, 0)
            upstream.release[first].set()
            await (idle(runner_of(old)) if first == 0 else taking)
            upstream.release[second].set()
            await (idle(runner_of(old)) if second == 0 else taking)
            assert await runner_of(new).step() is True  # (no line pending: the batch completes)
            batch = await wait_done(client, batch_id)
            assert batch.request_counts.completed == LINES and batch.request_counts.failed == 0
            out = [orjson.loads(x) for x in (await client.files.content(batch.output_file_id)).text.splitlines()]
            rows = await agree(s, [old, new], start)  # Redis, the stored balance and the ledger say the same
        for running in (new, old):
            await running.server.close()
    assert upstream.calls == {f"line {i}": 2 for i in range(LINES)}  # (the upstream was asked twice)
    assert sorted(o["custom_id"] for o in out) == [f"req-{i}" for i in range(LINES)]
    assert len(rows) == LINES and all(r[2] is None and r[3] == 10 and r[1] > 0 for r in rows)


async def test_a_takeover_and_its_old_holder_charge_a_line_once(start_gateway, serve_upstream, tmp_path):
    """The old holder stored a line's answer and its charge had not reached Redis yet (here:
    Redis out of its reach, the charge kept until Redis is back) when the next holder took
    over: the takeover found the line answered and its charge nowhere, and charged it; the
    old holder's charge then came too, a second one in Redis (the store skipped its row, the
    line's id stored already). Redis charges a ledger row's id once now (the ``SETTLE``
    script's done marker is the row's id): the second charge changes nothing."""
    upstream = Upstream(hold=True)
    served = await serve_upstream({"POST /v1/chat/completions": upstream.completions})
    config = biz_config(served.url, enabled=["auth", "quotas", "pricing", "ledger", "batches"],
                        batches={"concurrency": LINES, "poll_seconds": 3600})
    proxy = TcpProxy(6379)
    await proxy.start()
    counters = redis_url()
    async with fresh_database("postgres", tmp_path) as url:
        config["storage"] = {"url": url, "counters": counters.replace("6379", str(proxy.port))}
        old = await start_gateway(config)
        config["storage"]["counters"] = counters
        new = await start_gateway(config)
        held_back = old.gw.services[ACCOUNTS].pending_settles
        async with openai.AsyncOpenAI(base_url=old.url, api_key=DEMO, max_retries=0) as client, \
                aiohttp.ClientSession() as s:
            start = (await credits(s, new, DEMO))["balance_micro_usd"]
            batch_id = await submit(client)
            await upstream.arrived.wait()
            await proxy.cut()  # the old holder's answers are stored; their charges wait for Redis
            upstream.release.set()
            await until(lambda: len(held_back) == LINES, 30, "the old holder's charges kept for Redis")
            await end_claim(old.gw.store)
            await runner_of(new).step()  # takes over: charges the lines answered and charged nowhere
            assert runner_of(new).leading
            await proxy.start()  # the old holder's charges reach Redis now

            async def sent() -> bool:
                await old.gw.services[ACCOUNTS].push_settles()
                return not held_back

            await until(sent, 30, "the old holder's charges sent")
            assert (await wait_done(client, batch_id)).request_counts.completed == LINES
            rows = await agree(s, [old, new], start)
        for running in (new, old):
            await running.server.close()
    await proxy.close()
    assert upstream.calls == {f"line {i}": 1 for i in range(LINES)}
    assert len(rows) == LINES and all(r[1] > 0 and r[2] == "batch_recovered" for r in rows)

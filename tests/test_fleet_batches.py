"""Batches in a fleet (PostgreSQL and Redis shared by two gateways): each line runs once.

Every instance's batch runner read the oldest batch's pending lines and ran them: a line
still running on one instance was pending for the other, so both sent it upstream and
both charged it. The ledger kept one row (its id is the line's), so the stored balance
paid once while Redis, what the fleet lets the account spend, was charged twice (and the
operator paid the upstream twice). One instance of the fleet runs batches at a time now
(the store's claim ``batches``, dropped when its process dies).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import time

import aiohttp
import openai
import pytest
from aiohttp import web
from business import DEMO, biz_config, credits
from fleet import redis_url
from stores import PG, fresh_database
from test_batches import jsonl, wait_done

from plugins.accounts import ACCOUNTS
from plugins.batches.runner import Runner

pytestmark = pytest.mark.fleet

LINES = 4


async def test_a_line_runs_once_in_a_fleet_of_two(start_gateway, serve_upstream, tmp_path):
    calls: dict[str, int] = {}
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def completions(request):
        body = await request.json()
        said = body["messages"][0]["content"]
        calls[said] = calls.get(said, 0) + 1
        if sum(calls.values()) in (LINES, 2 * LINES):
            arrived.set()
        await release.wait()
        return web.json_response({"id": "c1", "object": "chat.completion", "created": int(time.time()),
                                  "model": "upstream-model",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

    upstream = await serve_upstream({"POST /v1/chat/completions": completions})
    config = biz_config(upstream.url, enabled=["auth", "quotas", "pricing", "ledger", "batches"],
                        batches={"concurrency": LINES, "poll_seconds": 3600})
    async with fresh_database("postgres", tmp_path) as url:
        config["storage"] = {"url": url, "counters": redis_url()}
        first = await start_gateway(config)
        second = await start_gateway(config)
        lines = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "up", "max_tokens": 20, "messages": [{"role": "user", "content": f"line {i}"}]}}
                 for i in range(LINES)]
        async with openai.AsyncOpenAI(base_url=first.url, api_key=DEMO, max_retries=0) as client, \
                aiohttp.ClientSession() as s:
            start = (await credits(s, first, DEMO))["balance_micro_usd"]
            f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
            batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
            await arrived.wait()  # the first instance runs every line, each waiting upstream
            arrived.clear()
            # The second instance's runner looks now, while they are still pending.
            other = asyncio.ensure_future(second.gw.pm.get_plugin("builtin:batches").runner.step())
            await asyncio.wait({other, asyncio.ensure_future(arrived.wait())}, return_when=asyncio.FIRST_COMPLETED)
            release.set()
            await other
            assert (await wait_done(client, batch.id)).request_counts.completed == LINES
            for running in (first, second):
                await running.gw.services[ACCOUNTS].writer.drain_shared()
            fleet = (await credits(s, first, DEMO))["balance_micro_usd"]
        rows = await first.gw.store.fetchall("select id, cost_micro_usd from tollway_ledger where id like 'batch-%'")
        stored = await first.gw.store.fetchone("select balance_micro_usd from tollway_accounts where id = 'cfg_demo'")
        for running in (second, first):
            await running.server.close()  # (before their schema goes)
    assert calls == {f"line {i}": 1 for i in range(LINES)}
    assert len(rows) == LINES
    charged = sum(cost for _, cost in rows)
    assert charged > 0
    assert fleet == stored[0] == start - charged  # Redis, the store and the ledger agree


class Upstream:
    """Counts each line's calls; holds every answer until ``release`` (set from the start:
    answers at once)."""

    def __init__(self, hold: bool) -> None:
        self.calls: dict[str, int] = {}
        self.arrived = asyncio.Event()  # LINES calls (and again at 2 x LINES)
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        said = body["messages"][0]["content"]
        self.calls[said] = self.calls.get(said, 0) + 1
        if sum(self.calls.values()) in (LINES, 2 * LINES):
            self.arrived.set()
        await self.release.wait()
        return web.json_response({"id": "c1", "object": "chat.completion", "created": int(time.time()),
                                  "model": "upstream-model",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})


async def submit(client: openai.AsyncOpenAI) -> str:
    lines = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "up", "max_tokens": 20, "messages": [{"role": "user", "content": f"line {i}"}]}}
             for i in range(LINES)]
    f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return (await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                        completion_window="24h")).id


def runner_of(running) -> Runner:
    return running.gw.pm.get_plugin("builtin:batches").runner


async def end_claim(store) -> None:
    """End the PostgreSQL session that holds the claim 'batches' of this schema, as a
    PostgreSQL restart or a connection killed by the network or an idle timeout would."""
    key = (await store.fetchone("select hashtextextended('tollway:batches:' || current_schema(), 0)"))[0]
    pids = await store.fetchall("select pid from pg_locks where locktype = 'advisory' and granted and "
                                "classid = ?::bigint::oid and objid = ?::bigint::oid and objsubid = 1",
                                ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF))
    assert len(pids) == 1
    assert (await store.fetchone("select pg_terminate_backend(?, 60000)", (pids[0][0],)))[0]


async def pg_now() -> datetime.datetime:
    import asyncpg

    conn = await asyncpg.connect(PG)
    try:
        return await conn.fetchval("select now()")
    finally:
        await conn.close()


async def agree(s: aiohttp.ClientSession, gateways: list, start: int) -> list[tuple]:
    """Store every charge queued in Redis; the ledger's batch rows, after checking that Redis,
    the stored balance and the ledger say the same."""
    for running in gateways:
        await running.gw.services[ACCOUNTS].writer.drain_shared()
    fleet = (await credits(s, gateways[0], DEMO))["balance_micro_usd"]
    store = gateways[0].gw.store
    rows = await store.fetchall("select id, cost_micro_usd, error_code, prompt_tokens from tollway_ledger "
                                "where id like 'batch-%' order by id")
    stored = (await store.fetchone("select balance_micro_usd from tollway_accounts where id = 'cfg_demo'"))[0]
    assert (fleet, stored) == (start - sum(r[1] for r in rows),) * 2
    return rows


async def test_a_holder_whose_session_ended_stops_running_lines(start_gateway, serve_upstream, tmp_path):
    """The claim is a PostgreSQL session's. Its holder kept running batches after that session
    ended (PostgreSQL restarted, the connection cut or killed for idling) while another instance
    took the claim: two instances ran the batches, every line called and charged twice. The
    holder asks now, before each line, and stops when its session is gone."""
    upstream = Upstream(hold=True)
    served = await serve_upstream({"POST /v1/chat/completions": upstream.completions})
    config = biz_config(served.url, enabled=["auth", "quotas", "pricing", "ledger", "batches"],
                        batches={"concurrency": LINES, "poll_seconds": 3600})
    async with fresh_database("postgres", tmp_path) as url:
        config["storage"] = {"url": url, "counters": redis_url()}
        first = await start_gateway(config)
        second = await start_gateway(config)
        assert runner_of(first).leading and not runner_of(second).leading
        await end_claim(first.gw.store)
        async with openai.AsyncOpenAI(base_url=second.url, api_key=DEMO, max_retries=0) as client, \
                aiohttp.ClientSession() as s:
            start = (await credits(s, first, DEMO))["balance_micro_usd"]
            batch_id = await submit(client)  # the second's runner wakes, takes the claim, runs the lines
            await upstream.arrived.wait()
            upstream.arrived.clear()
            # The first instance's runner looks now, while the lines wait upstream.
            other = asyncio.ensure_future(runner_of(first).step())
            await asyncio.wait({other, asyncio.ensure_future(upstream.arrived.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            upstream.release.set()
            assert await other is False
            assert (await wait_done(client, batch_id)).request_counts.completed == LINES
            rows = await agree(s, [first, second], start)
        assert runner_of(second).leading and not runner_of(first).leading
        for running in (second, first):
            await running.server.close()
    assert upstream.calls == {f"line {i}": 1 for i in range(LINES)}
    assert len(rows) == LINES and all(r[2] is None and r[3] == 10 for r in rows)


async def test_a_takeover_charges_once_what_redis_has_not_handed_to_the_store_yet(start_gateway, serve_upstream,
                                                                               tmp_path):
    """With Redis, a line's charge and its ledger row are in Redis (the balance, the ledger
    stream) until a writer stores the row. A takeover in that time found no row in the store
    and charged the line again, with a row of its own (the writers then skipped the line's real
    one, its tokens lost, or failed on the duplicate id if they stored both at once). It reads
    the stream first now. A line whose charge is nowhere (lost in a crash between its answer and
    its charge) was charged in the store only, so Redis, what the fleet may spend, had the
    money still: it is charged through Redis now, as a request is."""
    upstream = Upstream(hold=False)
    served = await serve_upstream({"POST /v1/chat/completions": upstream.completions})
    config = biz_config(served.url, enabled=["auth", "quotas", "pricing", "ledger", "batches"],
                        batches={"concurrency": LINES, "poll_seconds": 3600}, ledger={"flush_ms": 3_600_000})
    async with fresh_database("postgres", tmp_path) as url:
        config["storage"] = {"url": url, "counters": redis_url()}
        first = await start_gateway(config)
        second = await start_gateway(config)
        async with openai.AsyncOpenAI(base_url=first.url, api_key=DEMO, max_retries=0) as client, \
                aiohttp.ClientSession() as s:
            start = (await credits(s, first, DEMO))["balance_micro_usd"]
            batch_id = await submit(client)
            assert (await wait_done(client, batch_id)).request_counts.completed == LINES
            store = first.gw.store
            assert await store.fetchall("select id from tollway_ledger") == []  # (the writers wait an hour)
            # One more line answered whose charge a crash lost (before it reached Redis).
            await store.execute("insert into tollway_batch_lines (batch_id, line, custom_id, body, status, "
                                "status_code, cost_micro_usd) select batch_id, ?, 'lost', body, 'done', 200, 7 "
                                "from tollway_batch_lines where batch_id = ? and line = 0", (LINES, batch_id))
            await end_claim(store)
            assert await runner_of(second).step() is False  # took over: nothing pending
            assert runner_of(second).leading
            rows = await agree(s, [first, second], start)
        for running in (second, first):
            await running.server.close()
    assert upstream.calls == {f"line {i}": 1 for i in range(LINES)}
    assert [r[2:] for r in rows] == [(None, 10)] * LINES + [("batch_recovered", 0)]
    assert rows[-1][1] == 7


async def test_an_instance_waiting_for_the_claim_keeps_one_connection(start_gateway, tmp_path):
    """An instance that does not hold the claim tries to take it at each poll: it opened a
    PostgreSQL connection for each try (and closed it), one a second per instance at the
    default poll. It keeps one now."""
    config = biz_config(enabled=["auth", "quotas", "pricing", "ledger", "batches"], batches={"poll_seconds": 3600})
    async with fresh_database("postgres", tmp_path) as url:
        config["storage"] = {"url": url, "counters": redis_url()}
        since = await pg_now()
        first = await start_gateway(config)
        second = await start_gateway(config)
        # (Sessions of this process's name started since its gateways did: another process with
        # the same id elsewhere on this PostgreSQL, in another container, is not this one.)
        name = f"tollway batches: process {os.getpid()} on {socket.gethostname()}"[:63]
        seen = []
        for _ in range(3):
            assert await runner_of(second).step() is False
            seen.append(await first.gw.store.fetchall(
                "select a.pid, a.backend_start from pg_stat_activity a where a.application_name = ? and "
                "a.backend_start >= ? and not exists (select 1 from pg_locks l where l.pid = a.pid and "
                "l.locktype = 'advisory')", (name, since)))
        for running in (second, first):
            await running.server.close()
    assert len(seen[0]) == 1 and seen == [seen[0]] * 3

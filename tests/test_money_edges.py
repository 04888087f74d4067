"""Money at the edges of wave 2, through the real server: requests in flight across
a budget's midnight, a budget and the credits both limiting, a batch cancelled
mid-way. After each: the balance is >= 0 and the ledger == the money taken ==
what the clients were told."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from business import DEMO, add_claude, admin, bearer, biz_config, credits, ledger_rows
from test_budgets import KEY_A, KEY_B, PRICE, Clock, next_year, paid_config, use_clock

from plugins.accounts import ACCOUNTS


async def told_cost(r: aiohttp.ClientResponse, stream: bool) -> tuple[int, int | None]:
    """(status, the cost the client was told in micro-units, or None)."""
    body = await r.read()
    if r.status != 200:
        return r.status, None
    if stream:
        usage = [orjson.loads(line[6:]) for line in body.splitlines() if line.startswith(b'data: {"')][-1]
        return 200, round(usage["usage"]["cost"] * 1e6)
    return 200, round(float(r.headers["x-tollway-cost"]) * 1e6)


async def ask(s, running, key: str, i: int, stream: bool, mock: dict | None = None) -> tuple[int, int | None]:
    payload = {"model": "up", "max_tokens": 8, "stream": stream, "messages": [{"role": "user", "content": f"q{i}"}],
               **({"stream_options": {"include_usage": True}} if stream else {}), **({"mock": mock} if mock else {})}
    async with s.post(running.url + "/chat/completions", json=payload, headers=bearer(key)) as r:
        return await told_cost(r, stream)


async def settled(running, account: str) -> None:
    acc = running.gw.services[ACCOUNTS].accounts[account]
    for _ in range(600):
        if acc.reserved == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"account {account} still holds {acc.reserved}")


async def books_balance(running, account: str, opening: int, told: list[int]) -> None:
    """balance >= 0; ledger sum == money taken == the sum told to clients."""
    await settled(running, account)
    book = running.gw.services[ACCOUNTS]
    acc = book.accounts[account]
    rows = await ledger_rows(running, "cost", "status")
    ledger = sum(r["cost"] for r in rows)
    assert acc.balance >= 0 and acc.reserved == 0
    assert ledger == opening - acc.balance == acc.spent == sum(told), (ledger, opening - acc.balance, sum(told))


async def test_requests_in_flight_across_midnight_count_in_the_day_they_were_admitted(start_gateway, mock_upstream):
    """A daily budget of 3 requests, in Paris. At 23:59:59 a burst of streams is admitted
    (3 of them) and still running when midnight passes; then the new day's burst. The
    old day's streams settle into the old day: the new day has its own 3, no more."""
    config = paid_config(mock_upstream.url, [{"name": "a", "key": KEY_A, "credits": 1.0,
                                              "budgets": {"daily": 3 * PRICE / 1e6}}])
    config["providers"]["up"]["max_connections"] = 100
    running = await start_gateway(config)
    clock = Clock(next_year(3, 10, 23, 59, 59))
    use_clock(running, clock)
    slow = {"chunk_delay": 0.2}  # each stream runs well past the clock's move
    async with aiohttp.ClientSession() as s:
        old_day = [asyncio.ensure_future(ask(s, running, KEY_A, i, True, slow)) for i in range(10)]
        book = running.gw.services[ACCOUNTS]
        for _ in range(600):  # the burst is admitted (3) or refused (7)
            if book.accounts["cfg_a"].reserved == 3 * PRICE:
                break
            await asyncio.sleep(0.01)
        assert book.accounts["cfg_a"].reserved == 3 * PRICE
        clock.now += 2  # midnight passes while 3 streams hold the old day's budget
        new_day = await asyncio.gather(*(ask(s, running, KEY_A, 100 + i, i % 2 == 0) for i in range(10)))
        old = await asyncio.gather(*old_day)
        late = [await ask(s, running, KEY_A, 200 + i, False) for i in range(2)]  # after the old day settled
    assert [st for st, _ in old].count(200) == 3 and [st for st, _ in old].count(429) == 7
    assert [st for st, _ in new_day].count(200) == 3 and [st for st, _ in new_day].count(429) == 7
    assert [st for st, _ in late] == [429, 429]  # the old day's settling gave the new day nothing
    told = [c for _, c in old + new_day if c is not None]
    await books_balance(running, "cfg_a", 1_000_000, told)
    [status] = await book.budget_status(book.by_id["cfg_a"])
    assert status["spent_micro_usd"] == 3 * PRICE and status["remaining_micro_usd"] == 0


async def test_a_budget_and_the_credits_both_limiting(start_gateway, mock_upstream):
    """Credits for 2.5 requests under a daily budget of 4 (shared by two keys): a burst
    takes 2 (402 for the rest: the wallet, not the budget); a top-up then lets the
    budget speak (429) after 2 more. Never a request past either."""
    keys = [{"name": "a", "key": KEY_A, "account": "acme"}, {"name": "b", "key": KEY_B, "account": "acme"}]
    config = paid_config(mock_upstream.url, keys, accounts={"acme": {"credits": 2.5 * PRICE / 1e6,
                                                                     "budgets": {"daily": 4 * PRICE / 1e6}}})
    config["providers"]["up"]["max_connections"] = 100
    running = await start_gateway(config)
    use_clock(running, Clock(next_year(5, 5, 12, 0)))
    mock = {"chunk_delay": 0.01}
    async with aiohttp.ClientSession() as s:
        first = await asyncio.gather(*(ask(s, running, (KEY_A, KEY_B)[i % 2], i, i % 3 == 0, mock)
                                       for i in range(20)))
        assert sorted(st for st, _ in first) == [200] * 2 + [402] * 18
        await settled(running, "acme")
        # The budget's 2 left; the wallet gets 10 requests' worth.
        status, _ = await admin(s, running, "POST", "/admin/accounts/acme/credits", {"amount": 10 * PRICE / 1e6})
        assert status == 200
        second = await asyncio.gather(*(ask(s, running, (KEY_A, KEY_B)[i % 2], i, i % 3 == 0, mock)
                                        for i in range(20)))
        assert sorted(st for st, _ in second) == [200] * 2 + [429] * 18
    told = [c for _, c in first + second if c is not None]
    await books_balance(running, "acme", round(12.5 * PRICE), told)


def greedy_upstream(completion_tokens: int):
    """An OpenAI-shaped upstream that ignores max_tokens: it reports ``completion_tokens``."""

    async def answer(request: web.Request) -> web.Response:
        body = await request.json()
        usage = {"prompt_tokens": 5, "completion_tokens": completion_tokens,
                 "total_tokens": 5 + completion_tokens}
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": "many words"}, "finish_reason": "stop"}]})
                + b"\n\n")
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            return resp
        return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                                  "usage": usage, "choices": [{"index": 0, "finish_reason": "stop",
                                                               "message": {"role": "assistant",
                                                                           "content": "many words"}}]})

    return answer


async def test_an_upstream_that_reports_more_than_was_reserved(start_gateway, serve_upstream):
    """max_tokens 8 reserved 8 tokens' worth; the upstream says it made 100. While the
    balance covers them the 100 are held and charged; once it does not, the request costs its
    reservation. Either way what the client is told is what is taken and what the ledger says
    (before: told the 100 tokens' price, charged what the hold or balance covered)."""
    upstream = await serve_upstream({"POST /v1/chat/completions": greedy_upstream(100)})
    config = paid_config(upstream.url, [{"name": "a", "key": KEY_A, "credits": 250 * PRICE / 8 / 1e6}])
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        answers = [await ask(s, running, KEY_A, i, i % 2 == 0) for i in range(4)]
    assert [st for st, _ in answers][:2] == [200, 200]
    told = [c for _, c in answers if c is not None]
    await books_balance(running, "cfg_a", 250 * PRICE // 8, told)


async def test_a_budget_caps_an_upstream_that_reports_more_than_was_reserved(start_gateway, serve_upstream):
    upstream = await serve_upstream({"POST /v1/chat/completions": greedy_upstream(100)})
    config = paid_config(upstream.url, [{"name": "a", "key": KEY_A, "credits": 1.0,
                                         "budgets": {"daily": 50 * PRICE / 1e6}}])
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        answers = [await ask(s, running, KEY_A, i, i % 2 == 0) for i in range(4)]
    told = [c for _, c in answers if c is not None]
    await books_balance(running, "cfg_a", 1_000_000, told)


async def test_a_batch_cancelled_mid_way_charges_what_ran_and_nothing_else(start_gateway, mock_upstream):
    config = biz_config(mock_upstream.url, enabled=["auth", "ratelimit", "quotas", "pricing", "ledger", "batches"])
    config["plugins"]["batches"] = {"concurrency": 2}
    running = await start_gateway(config)
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "up", "max_tokens": 20, "messages": [{"role": "user", "content": f"hello {i}"}],
                       "mock": {"delay": 0.2}}} for i in range(200)]
    data = b"".join(orjson.dumps(x) + b"\n" for x in lines)
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        f = await client.files.create(file=("in.jsonl", data), purpose="batch")
        batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")
        for _ in range(600):
            got = await client.batches.retrieve(batch.id)
            if got.request_counts.completed >= 3:
                break
            await asyncio.sleep(0.05)
        await client.batches.cancel(batch.id)
        for _ in range(600):
            got = await client.batches.retrieve(batch.id)
            if got.status == "cancelled":
                break
            await asyncio.sleep(0.05)
        assert got.status == "cancelled"  # said once the lines that were running have finished
        out = (await client.files.content(got.output_file_id)).text.splitlines() if got.output_file_id else []
    answered = [orjson.loads(x) for x in out]
    assert 3 <= len(answered) < 200
    told = [round(a["response"]["body"]["usage"]["cost"] * 1e6) for a in answered]
    async with aiohttp.ClientSession() as s:
        view = await credits(s, running, DEMO)
    rows = await ledger_rows(running, "cost", "status")
    assert view["reserved_micro_usd"] == 0 and view["balance_micro_usd"] >= 0
    assert len(rows) == len(answered) == got.request_counts.completed
    assert sum(r["cost"] for r in rows) == view["spent_micro_usd"] == sum(told)


def many_answers_upstream(per_answer: int, prompt_tokens: int = 10):
    """Chat: ``n`` answers of ``per_answer`` tokens each; Responses: a prompt of
    ``prompt_tokens`` (the upstream's stored part of it included)."""

    async def answer(request: web.Request) -> web.Response:
        body = await request.json()
        if request.path.endswith("/responses"):
            usage = {"input_tokens": prompt_tokens, "output_tokens": 1, "total_tokens": prompt_tokens + 1}
            return web.json_response({"id": "resp_y", "object": "response", "status": "completed", "model": "m",
                                      "usage": usage, "output": [{"type": "message", "role": "assistant",
                                                                  "content": [{"type": "output_text", "text": "ok"}]}]})
        n = body.get("n", 1)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": per_answer * n,
                 "total_tokens": prompt_tokens + per_answer * n}
        return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "usage": usage,
                                  "choices": [{"index": i, "finish_reason": "stop", "message": {
                                      "role": "assistant", "content": "word " * per_answer}} for i in range(n)]})

    return answer


async def budgeted(start_gateway, serve_upstream, prompt_tokens: int = 10):
    handler = many_answers_upstream(900, prompt_tokens)
    upstream = await serve_upstream({"POST /v1/chat/completions": handler, "POST /v1/responses": handler})
    config = biz_config(upstream.url, keys=[{"name": "demo", "key": DEMO, "credits": 5.0, "budgets": {"daily": 1.0}}])
    config["models"]["up"]["context_window"] = 128_000
    return await start_gateway(config)


async def told_and_taken(running, s, path: str, body: dict) -> tuple[int, int]:
    """What one request was told it cost, and what its ledger row says (the key's spend grew by both)."""
    before = (await credits(s, running, DEMO))["spent_micro_usd"]
    async with s.post(running.url + path, json=body, headers=bearer(DEMO)) as r:
        assert r.status == 200, await r.text()
        told = round(float(r.headers["x-tollway-cost"]) * 1e6)
    await settled(running, "cfg_demo")
    row = (await ledger_rows(running, "cost"))[-1]
    assert (await credits(s, running, DEMO))["spent_micro_usd"] - before == row["cost"] == told
    return told, row["cost"]


async def test_n_answers_hold_n_output_caps(start_gateway, serve_upstream):
    """n=100 without max_tokens: each answer may use the whole output cap, so the hold is n
    caps (it was one: 90,000 tokens made were charged as the 4,096 held, under a budget)."""
    running = await budgeted(start_gateway, serve_upstream)
    async with aiohttp.ClientSession() as s:
        told, _ = await told_and_taken(running, s, "/chat/completions",
                                       {"model": "up", "n": 100, "messages": [{"role": "user", "content": "hi"}]})
    assert told == 10 * 1 + 90_000 * 2  # $1 and $2 per 1M tokens


@pytest.mark.parametrize("upstream_part", [
    {"previous_response_id": "resp_y"}, {"prompt": {"id": "pmpt_x"}},
    {"tools": [{"type": "web_search"}]},
    {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-x"}]}]}])
async def test_a_prompt_partly_upstream_is_held_at_the_context_window(start_gateway, serve_upstream, upstream_part):
    """A stored response continued, a stored prompt, a file by id, a search the upstream runs: the
    prompt is not in the body, so its bytes do not bound it (100,000 prompt tokens were
    charged as the few dozen the body held, under a budget); the context window does."""
    running = await budgeted(start_gateway, serve_upstream, prompt_tokens=100_000)
    async with aiohttp.ClientSession() as s:
        if "previous_response_id" in upstream_part:  # (the key's own: made through the gateway first)
            await told_and_taken(running, s, "/responses", {"model": "up", "input": "hi", "max_output_tokens": 16})
        told, _ = await told_and_taken(running, s, "/responses",
                                       {"model": "up", "input": "go on", "max_output_tokens": 16, **upstream_part})
    assert told == 100_000 * 1 + 1 * 2


async def test_a_background_response_is_refused(start_gateway, serve_upstream):
    """``background: true`` is answered later, out of the gateway's sight: it could only be billed
    at a guess (it was billed its reservation, then fetched free however long it grew)."""
    running = await budgeted(start_gateway, serve_upstream)
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/responses", headers=bearer(DEMO),
                          json={"model": "up", "input": "write a book", "background": True}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "background"
        assert (await credits(s, running, DEMO))["spent_micro_usd"] == 0


async def test_a_prompt_that_may_all_be_cache_writes_holds_their_price(start_gateway, serve_upstream):
    """cache_write dearer than input (Anthropic's 1.25x, 2x for an hour): a prompt capped by the
    context window may all be written to the cache, so the hold prices it so (it priced it as
    input: under a budget the writes past that were given away)."""
    async def messages(request: web.Request) -> web.Response:
        return web.json_response({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                  "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                                  "usage": {"input_tokens": 0, "cache_creation_input_tokens": 1000,
                                            "output_tokens": 10}})

    upstream = await serve_upstream({"POST /v1/messages": messages})
    config = biz_config(keys=[{"name": "demo", "key": DEMO, "credits": 5.0, "budgets": {"daily": 1.0}}])
    add_claude(config, upstream.root, price={"input": 3.0, "output": 15.0, "cache_write": 6.0})
    config["models"]["claude"]["context_window"] = 1000
    running = await start_gateway(config)
    big = [{"type": "text", "text": "word " * 1000, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    async with aiohttp.ClientSession() as s:
        told, _ = await told_and_taken(running, s, "/messages", {"model": "claude", "max_tokens": 10, "messages": [
            {"role": "user", "content": big}]})
    assert told == 1000 * 6 + 10 * 15

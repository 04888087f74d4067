"""Batches through the official openai SDK: files up, a batch run by the gateway
against its providers at half price, every line a ledger row, output and error
files; a batch the balance cannot cover refused at creation; a batch killed
(SIGKILL) halfway and resumed, each line in the ledger exactly once."""

from __future__ import annotations

import asyncio
import signal
import sqlite3

import aiohttp
import openai
import orjson
import pytest
import yaml
from aiohttp import web
from business import DEMO, bearer, biz_config, credits, ledger_rows
from stores import ENGINES, fresh_database
from test_lifecycle import Server

from benchmarks.mock_upstream import MockSettings
from benchmarks.mock_upstream import make_app as make_mock_app
from plugins.accounts import ACCOUNTS


def jsonl(items: list) -> bytes:
    return b"".join((item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n" for item in items)


def chat_line(i: int, model: str = "echo", **extra) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": f"hello {i}"}],
                     **extra}}


def half(cost: int) -> int:
    return -(-cost // 2)


async def wait_done(client: openai.AsyncOpenAI, batch_id: str, timeout: float = 30) -> object:
    for _ in range(int(timeout / 0.05)):
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "cancelled", "failed"):
            return batch
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish: {batch}")


@pytest.fixture(params=ENGINES)
async def running(request, start_gateway, tmp_path):
    config = biz_config(enabled=["auth", "ratelimit", "quotas", "pricing", "ledger", "batches"])
    async with fresh_database(request.param, tmp_path) as url:
        config["storage"] = {"url": url}
        yield await start_gateway(config)


async def test_a_batch_runs_every_line_once_at_half_price(running):
    lines = [chat_line(i) for i in range(10)]
    lines += [b"{not json", {**chat_line(10), "url": "/v1/embeddings"}, chat_line(11, model="nope")]
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        assert f.purpose == "batch" and f.bytes == len(jsonl(lines))
        batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h", metadata={"job": "t1"})
        assert batch.request_counts.total == 13 and batch.metadata == {"job": "t1"}
        batch = await wait_done(client, batch.id)
        assert batch.status == "completed" and batch.request_counts.completed == 10
        assert batch.request_counts.failed == 3
        out = [orjson.loads(x) for x in (await client.files.content(batch.output_file_id)).text.splitlines()]
        errors = [orjson.loads(x) for x in (await client.files.content(batch.error_file_id)).text.splitlines()]
        # The same request answered interactively: the batch line costs half of it (rounded up).
        direct = await client.chat.completions.create(**chat_line(3)["body"])
        listed = await client.batches.list()
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(10))
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in out)
    assert out[3]["response"]["body"]["choices"][0]["message"]["content"] == "hello 3"
    assert [e["error"]["code"] for e in errors] == ["invalid_line"] * 3
    assert "not JSON" in errors[0]["error"]["message"] and "url" in errors[1]["error"]["message"]
    assert "nope" in errors[2]["error"]["message"] and errors[2]["custom_id"] == "req-11"
    assert [b.id for b in listed.data] == [batch.id]
    told = round(direct.usage.model_extra["cost"] * 1e6)
    await running.gw.services[ACCOUNTS].writer.flush()
    rows = await running.gw.store.fetchall("select id, cost_micro_usd, status from tollway_ledger "
                                           "where id like 'batch-%' order by id")
    assert len(rows) == 10 and all(status == 200 for _, _, status in rows)
    assert dict((r[0], r[1]) for r in rows)[f"batch-{batch.id}-3"] == half(told)
    # each answer names its ledger row: the line's request_id is the row's id
    assert sorted(o["response"]["request_id"] for o in out) == [r[0] for r in rows]
    async with aiohttp.ClientSession() as s:
        got = await credits(s, running, DEMO)
    assert got["spent_micro_usd"] == sum(r[1] for r in rows) + told and got["reserved_micro_usd"] == 0


async def test_a_batch_the_balance_cannot_cover_is_refused_at_creation(start_gateway):
    config = biz_config(keys=[{"name": "poor", "key": DEMO, "credits": 0.01}],
                        enabled=["auth", "quotas", "pricing", "ledger", "batches"])
    running = await start_gateway(config)
    lines = [chat_line(i, max_tokens=5000) for i in range(5)]  # 5 x 5000 x $2/1M / 2 = $0.025 > $0.01
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        with pytest.raises(openai.APIStatusError) as exc:
            await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert exc.value.status_code == 402 and "insufficient credits" in exc.value.message
        ok = await client.batches.create(input_file_id=(await client.files.create(
            file=("small.jsonl", jsonl(lines[:1])), purpose="batch")).id, endpoint="/v1/chat/completions",
            completion_window="24h")
        assert (await wait_done(client, ok.id)).request_counts.completed == 1


async def test_a_line_whose_usage_nobody_can_count_pays_its_hold_at_the_batch_share_once(start_gateway,
                                                                                          serve_upstream):
    """An embeddings answer without usage costs the request's worst case (here its prompt
    bound: the body's bytes, at $1 per 1M tokens, so one micro-USD a byte). A batch line's
    hold is already at the batch share: it costs half of that, rounded up, as the same
    request answered interactively. (The share was applied twice: a quarter was charged.)"""

    async def embeddings(request):
        await request.read()
        return web.json_response({"object": "list", "model": "m",
                                  "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]})

    upstream = await serve_upstream({"POST /v1/embeddings": embeddings})
    running = await start_gateway(biz_config(upstream.url, enabled=["auth", "quotas", "pricing", "ledger",
                                                                     "batches"]))
    body = {"model": "up", "input": "a sentence with no usage reported for it"}
    raw = orjson.dumps(body)
    assert len(raw) % 2 == 1  # (the half is rounded up: an odd worst case shows it)
    headers = {**bearer(DEMO), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(running.url + "/embeddings", data=raw, headers=headers) as r:
        assert r.status == 200
        told = round(float(r.headers["x-tollway-cost"]) * 1e6)
    assert told == len(raw)
    line = {"custom_id": "e1", "method": "POST", "url": "/v1/embeddings", "body": body}
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        f = await client.files.create(file=("in.jsonl", jsonl([line])), purpose="batch")
        batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
        assert (await wait_done(client, batch.id)).request_counts.completed == 1
    await running.gw.services[ACCOUNTS].writer.flush()
    rows = dict(await running.gw.store.fetchall("select id, cost_micro_usd from tollway_ledger"))
    assert len(rows) == 2 and rows[f"batch-{batch.id}-0"] == half(len(raw))
    async with aiohttp.ClientSession() as s:
        got = await credits(s, running, DEMO)
    assert got["spent_micro_usd"] == told + half(len(raw)) and got["reserved_micro_usd"] == 0


async def test_the_worst_case_at_creation_is_in_the_billing_currency(start_gateway):
    """With prices converted at billing.usd_rate, the batch's worst case is too (it was
    compared in USD with a balance in INR: a batch 100 times too large was accepted)."""
    config = biz_config(keys=[{"name": "poor", "key": DEMO, "credits": 1.0}],
                        enabled=["auth", "quotas", "pricing", "ledger", "batches"])
    config["billing"] = {"currency": "INR", "usd_rate": 100}
    running = await start_gateway(config)
    lines = [chat_line(i, max_tokens=5000) for i in range(5)]  # 5 x 5000 x $2/1M / 2 x 100 = 2.5 INR > 1 INR
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        with pytest.raises(openai.APIStatusError) as exc:
            await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert exc.value.status_code == 402 and "insufficient credits" in exc.value.message


async def test_a_line_may_name_a_group_or_auto_and_pays_the_batch_share_of_the_model_that_served(start_gateway):
    """Groups and auto in a batch (they were a 500 at creation, and a line that ran one
    crashed the runner): each line is billed at the batch multiplier of the model that served."""
    config = biz_config(enabled=["auth", "ratelimit", "quotas", "pricing", "ledger", "batches"])
    config["models"].update({"fifth": {"provider": "local", "price": {"input": 0.5, "output": 1.0,
                                                                      "batch_multiplier": 0.2}},
                             "grp": {"group": ["fifth"]}, "pick": {"auto": "cheapest"}})
    running = await start_gateway(config)
    lines = [chat_line(0, model="grp"), chat_line(1, model="pick"), {**chat_line(2), "url": 5}]
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")
        batch = await wait_done(client, batch.id)
        with pytest.raises(openai.BadRequestError) as exc:  # (an endpoint that is a list was a 500)
            await client.batches.create(input_file_id=f.id, endpoint=["/v1/chat/completions"],
                                        completion_window="24h")
        assert exc.value.body["param"] == "endpoint"
    assert (batch.status, batch.request_counts.completed, batch.request_counts.failed) == ("completed", 2, 1)
    rows = await ledger_rows(running, "model", "served_model", "prompt", "completion", "cost")
    assert [(r["model"], r["served_model"]) for r in rows] == [("grp", "fifth"), ("pick", "fifth")]
    for r in rows:  # $0.5 and $1 per 1M tokens, times 0.2, rounded up to the micro-USD
        assert r["cost"] == -(-(r["prompt"] + 2 * r["completion"]) // 10) > 0
    async with aiohttp.ClientSession() as s:
        assert (await credits(s, running, DEMO))["spent_micro_usd"] == sum(r["cost"] for r in rows)


async def test_bad_batch_input_names_the_field(running):
    async with aiohttp.ClientSession() as s:
        async def post(path: str, **kw) -> tuple[int, dict]:
            async with s.post(running.url + path, headers=bearer(DEMO), **kw) as r:
                return r.status, await r.json()

        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("purpose", "fine-tune")
        form.add_field("file", b"{}\n", filename="x.jsonl")
        status, body = await post("/files", data=form)
        assert status == 400 and body["error"]["param"] == "purpose"
        status, body = await post("/batches", json={"input_file_id": "file-nope", "endpoint": "/v1/chat/completions"})
        assert status == 404 and body["error"]["param"] == "input_file_id"
        status, body = await post("/batches", json={"input_file_id": "x", "endpoint": "/v1/moderations"})
        assert status == 400 and body["error"]["param"] == "endpoint"
        async with s.get(running.url + "/batches/batch_nope", headers=bearer(DEMO)) as r:
            assert r.status == 404
        async with s.get(running.url + "/batches") as r:
            assert r.status == 401


async def test_a_batch_killed_halfway_resumes_and_bills_each_line_once(tmp_path, aiohttp_server):
    mock = await aiohttp_server(make_mock_app(MockSettings()))
    config = biz_config(str(mock.make_url("/v1")), enabled=["auth", "quotas", "pricing", "ledger", "batches"],
                        ledger={"flush_ms": 200}, batches={"concurrency": 4, "poll_seconds": 0.1})
    config["server"].update(host="127.0.0.1", access_log="off")
    config["storage"] = {"url": "sqlite:///tollway.db"}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    n = 300
    lines = [chat_line(i, model="up", mock={"delay": 0.01, "chunks": 1 + i % 7}) for i in range(n)]
    server = Server(path)
    try:
        await server.wait_ready()
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=DEMO, max_retries=0) as client:
            f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
            batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
            while (await client.batches.retrieve(batch.id)).request_counts.completed < n // 2:
                await asyncio.sleep(0.02)
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            server = Server(path)
            await server.wait_ready()
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=DEMO, max_retries=0) as client:
            done = await wait_done(client, batch.id, timeout=60)
            out = [orjson.loads(x) for x in (await client.files.content(done.output_file_id)).text.splitlines()]
    finally:
        server.stop()
    assert done.status == "completed" and done.request_counts.completed == n and done.request_counts.failed == 0
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(n))
    db = sqlite3.connect(tmp_path / "tollway.db")
    rows = db.execute("select id, cost_micro_usd from tollway_ledger where id like 'batch-%'").fetchall()
    assert len(rows) == len({r[0] for r in rows}) == n  # each line once
    by_line = {int(r[0].rsplit("-", 1)[1]): r[1] for r in rows}
    for o in out:  # each at half its price: prompt x $1 + completion x $2 per 1M, halved, rounded up
        usage = o["response"]["body"]["usage"]
        line = int(o["custom_id"].split("-")[1])
        assert by_line[line] == half(usage["prompt_tokens"] + 2 * usage["completion_tokens"]), line
    # Lines in flight at the kill ran again (not stored, so never charged); none ran more than twice.
    from benchmarks.mock_upstream import STATS_KEY
    assert n <= mock.app[STATS_KEY]["requests"] <= n + 4
    print("upstream calls", mock.app[STATS_KEY]["requests"], "charged at restart",
          db.execute("select count(*) from tollway_ledger where error_code = 'batch_recovered'").fetchone()[0])
    balance, spent = db.execute("select balance_micro_usd, spent_micro_usd from tollway_accounts").fetchone()
    assert spent == sum(by_line.values()) and balance == 5_000_000 - spent >= 0


async def test_batches_listed_before_quotas_is_a_config_error(start_gateway):
    from proxy import ConfigError

    with pytest.raises(ConfigError, match="batches after quotas"):
        await start_gateway(biz_config(enabled=["auth", "batches", "quotas", "pricing", "ledger"]))


async def test_a_batch_past_its_24_hours_expires_its_pending_lines(running):
    from proxy.background import stop_task

    plugin = running.gw.pm.get_plugin("builtin:batches")
    await stop_task(plugin.task)  # the lines must not run before the clock is moved
    lines = [chat_line(i) for i in range(3)]
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")
        await running.gw.store.execute("update tollway_batches set created_at = created_at - 86401 where id = ?",
                                       (batch.id,))
        assert await plugin.runner.step()
        done = await client.batches.retrieve(batch.id)
        errors = [orjson.loads(e) for e in (await client.files.content(done.error_file_id)).text.splitlines()]
    assert done.status == "expired" and done.expired_at is not None and done.output_file_id is None
    assert done.request_counts.failed == 3 and [e["error"]["code"] for e in errors] == ["batch_expired"] * 3
    async with aiohttp.ClientSession() as s:
        assert (await credits(s, running, DEMO))["spent_micro_usd"] == 0

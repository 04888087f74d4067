"""``GET /v1/files`` through the real server with the official openai SDK, on SQLite and
PostgreSQL: the calling key's account's uploads only, newest first, paged by ``limit`` and
``after``, filtered by ``purpose``, in ``order``; a bad ``limit``, ``order``, ``purpose`` or
``after`` (or one given twice) is a 400 naming it. Before: ``GET /v1/files`` was not served
(404 "unknown endpoint GET /v1/files"), though batches upload through ``POST /v1/files`` and the SDK's
``files.list()`` is how a client finds its uploads again."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from business import DEMO, bearer, biz_config
from stores import ENGINES, fresh_database
from test_batches import chat_line, jsonl

OTHER = "sk-test-other-key-0002"


@pytest.fixture(params=ENGINES)
async def running(request, start_gateway, tmp_path):
    config = biz_config(enabled=["auth", "ratelimit", "quotas", "pricing", "ledger", "batches"],
                        keys=[{"name": "demo", "key": DEMO, "credits": 5.0}, {"name": "other", "key": OTHER,
                                                                               "credits": 5.0}])
    async with fresh_database(request.param, tmp_path) as url:
        config["storage"] = {"url": url}
        yield await start_gateway(config)


async def test_the_files_list_is_the_callers_own_paged(running):
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client, \
            openai.AsyncOpenAI(base_url=running.url, api_key=OTHER, max_retries=0) as other:
        mine = [await client.files.create(file=(f"in{i}.jsonl", jsonl([chat_line(i)])), purpose="batch")
                for i in range(3)]
        theirs = await other.files.create(file=("theirs.jsonl", jsonl([chat_line(9)])), purpose="batch")

        page = await client.files.list()
        listed = [f.id for f in page.data]
        assert sorted(listed) == sorted(f.id for f in mine) and theirs.id not in listed
        assert all(f.purpose == "batch" and f.object == "file" and f.bytes > 0 for f in page.data)
        assert [f.id for f in (await other.files.list()).data] == [theirs.id]

        walked = [f.id async for f in client.files.list(limit=1)]  # the SDK follows has_more / after
        assert walked == listed
        ascending = await client.files.list(order="asc", limit=2)
        assert [f.id for f in ascending.data] == listed[::-1][:2] and ascending.has_more
        assert (await client.files.list(purpose="batch_output")).data == []

        for query, param in [({"limit": 0}, "limit"), ({"limit": 10001}, "limit"), ({"limit": "x"}, "limit"),
                             ({"order": "sideways"}, "order"), ({"purpose": "nonsense"}, "purpose"),
                             ({"after": theirs.id}, "after"), ({"after": "file-nope"}, "after")]:
            with pytest.raises(openai.BadRequestError) as refused:
                await client.files.list(**query)
            assert refused.value.body["param"] == param, (query, refused.value.body)
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/files?limit=1&limit=2", headers=bearer(DEMO)) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "limit"
        async with s.get(running.url + "/files") as r:
            assert r.status == 401


async def test_the_batches_list_refuses_what_it_cannot_page_by(running):
    """Before: ``limit`` 0 or 1000 was quietly 1 or 100, and an ``after`` that is no batch of the
    caller's was ignored (the first page again: a client paging by it looped)."""
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client, \
            openai.AsyncOpenAI(base_url=running.url, api_key=OTHER, max_retries=0) as other:
        f = await other.files.create(file=("in.jsonl", jsonl([chat_line(0)])), purpose="batch")
        theirs = await other.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")
        assert [b.id for b in (await other.batches.list(limit=100)).data] == [theirs.id]
        assert (await client.batches.list()).data == []
        for query, param in [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"after": theirs.id}, "after"),
                             ({"after": "batch_nope"}, "after")]:
            with pytest.raises(openai.BadRequestError) as refused:
                await client.batches.list(**query)
            assert refused.value.body["param"] == param, (query, refused.value.body)

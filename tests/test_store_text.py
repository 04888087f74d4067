"""A NUL character (``\\u0000``) where the gateway looks up or stores text: PostgreSQL refuses such
text in any statement's parameter (SQLite keeps it). Through the real server on PostgreSQL, each of
these answered a bare 500 ``internal_error`` and logged a traceback: an id in the path, a query
parameter, a field of a body, a line of an uploaded batch file. Now a 400 that says what to remove,
and nothing is charged or held; on SQLite the same requests find nothing (404) or are refused for
another reason (or, for a batch line's custom_id, keep it), never 500."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from business import ADMIN_HEADERS, DEMO, bearer, biz_config, chat, credits
from stores import ENGINES, fresh_database

NUL = "\u0000"


@pytest.fixture(params=ENGINES)
async def running(request, start_gateway, mock_upstream, tmp_path):
    config = biz_config(mock_upstream.url, enabled=["auth", "ratelimit", "quotas", "pricing", "ledger", "batches"])
    async with fresh_database(request.param, tmp_path) as url:
        config["storage"] = {"url": url}
        running = await start_gateway(config)
        running.engine = request.param
        yield running
        await running.server.close()  # before its schema is dropped


async def upload(s: aiohttp.ClientSession, running, content: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", content, filename="in.jsonl", content_type="application/jsonl")
    async with s.post(running.url + "/files", data=form, headers=bearer(DEMO)) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["id"]


async def test_nul_in_ids_queries_and_bodies_is_a_400_not_a_500(running, caplog):
    line = {"custom_id": NUL, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "up", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}}
    async with aiohttp.ClientSession() as s:
        before = await credits(s, running, DEMO)
        file_id = await upload(s, running, orjson.dumps(line) + b"\n")
        user = bearer(DEMO)
        calls = [
            ("GET", "/v1/files/%00", None, user),
            ("GET", "/v1/files/%00/content", None, user),
            ("GET", "/v1/batches/%00", None, user),
            ("GET", "/v1/batches?after=%00", None, user),
            ("POST", "/v1/batches/%00/cancel", None, user),
            ("POST", "/v1/batches", {"input_file_id": NUL, "endpoint": "/v1/chat/completions",
                                     "completion_window": "24h"}, user),
            ("POST", "/v1/batches", {"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                     "completion_window": "24h"}, user),
            ("GET", "/v1/responses/%00", None, user),
            ("DELETE", "/v1/responses/%00", None, user),
            ("POST", "/v1/responses", {"model": "up", "input": "hi", "previous_response_id": "resp_" + NUL}, user),
            ("GET", "/admin/usage?key=%00", None, ADMIN_HEADERS),
        ]
        answers = []
        for method, path, body, headers in calls:
            async with s.request(method, running.root + path, json=body, headers=headers) as r:
                answers.append((method, path, r.status, await r.json()))

        for method, path, status, body in answers:
            assert status < 500, (method, path, status, body)
            assert status == 200 or (set(body) == {"error"} and body["error"]["message"]), (method, path, body)
        if running.engine == "postgres":
            assert [(m, p, s, b["error"]["code"]) for m, p, s, b in answers] == [
                (m, p, 400, "invalid_text") for m, p, _, _ in answers]
            assert "NUL character" in answers[0][3]["error"]["message"]
        assert "Traceback" not in caplog.text

        if running.engine == "postgres":  # (SQLite keeps the NUL custom_id: that batch runs and is charged)
            assert await credits(s, running, DEMO) == before  # nothing charged, nothing left held
        status, _, _ = await chat(s, running, DEMO, model="up")
        assert status == 200

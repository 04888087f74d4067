"""Hostile batch input files through the real server, on SQLite and PostgreSQL: an
upload the batch could only guess at (two files, an empty one, a NUL byte, a file
part without a filename) is a 400 saying what to fix, never a 500; lines JSON allows
(U+2028 and U+0085 inside strings, a BOM before the first) run; a line nested past
the gateway's depth limit is an error line, and the others run."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
import test_batches
from business import DEMO, bearer
from test_hostile_uploads import BOUNDARY, answer, part, request

from plugins.accounts import ACCOUNTS

running = test_batches.running  # the fixture: a batches gateway on each engine


def line(i: int, content: str = "hi", **body) -> bytes:
    return orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "echo", "max_tokens": 5,
                                  "messages": [{"role": "user", "content": content}], **body}})


def files_form(*parts: bytes) -> bytes:
    return part(b"purpose", b"batch") + b"".join(parts) + b"--%s--\r\n" % BOUNDARY


@pytest.mark.parametrize(("form", "code", "says"), [
    (files_form(part(b"file", line(1), b"a.jsonl"), part(b"file", line(2), b"b.jsonl")), "invalid_request",
     "'file' is given twice"),
    (files_form(part(b"file", b"", b"a.jsonl")), "empty_file", "'file' is empty"),
    (files_form(part(b"file", line(1) + b"\n\0\n" + line(2), b"a.jsonl")), "invalid_request",
     "NUL byte (line 2)"),
    (files_form(part(b"file", line(1), b"a\0.jsonl")), "invalid_request", "filename of the part 'file' holds a NUL"),
    (files_form(part(b"file", line(1))), "missing_file", "has no filename, so it is read as a text field"),
], ids=["two files", "empty", "NUL byte", "NUL in the filename", "no filename"])
async def test_an_input_file_the_batch_could_only_guess_at_is_a_400(running, form, code, says):
    status, body = await answer(running, request("/v1/files", form))
    assert status == 400, body
    assert body["error"]["code"] == code and says in body["error"]["message"], body
    assert await running.gw.store.fetchall("select id from tollway_files") == []


async def run_batch(running, content: bytes) -> tuple[dict, list[dict]]:
    """Upload ``content``, run it as a chat batch: the finished batch and its error lines."""
    async with aiohttp.ClientSession(headers=bearer(DEMO)) as s:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename="in.jsonl")
        async with s.post(running.url + "/files", data=form) as r:
            assert r.status == 200, await r.text()
            file_id = (await r.json())["id"]
        async with s.post(running.url + "/batches", json={"endpoint": "/v1/chat/completions",
                                                          "input_file_id": file_id}) as r:
            assert r.status == 200, await r.text()
            batch = await r.json()
        for _ in range(1200):  # up to a minute on a loaded machine
            async with s.get(running.url + f"/batches/{batch['id']}") as r:
                batch = await r.json()
            if batch["status"] == "completed":
                break
            await asyncio.sleep(0.05)
        assert batch["status"] == "completed", batch
        errors = []
        if batch["error_file_id"]:
            async with s.get(running.url + f"/files/{batch['error_file_id']}/content") as r:
                errors = [orjson.loads(x) for x in (await r.read()).split(b"\n") if x]
    await running.gw.services[ACCOUNTS].writer.flush()  # the ledger written before the schema is dropped
    return batch, errors


async def test_lines_json_allows_run_as_written(running):
    """U+2028 and U+0085 inside a string are JSON (str.splitlines cut the line there),
    and a BOM before the first line is an editor's, not the line's."""
    content = b"\xef\xbb\xbf" + line(1) + b"\r\n" + line(2, "a\u2028b\u0085c") + b"\n"
    batch, errors = await run_batch(running, content)
    assert errors == [] and batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}


async def test_a_line_nested_too_deep_is_an_error_line_and_the_others_run(running):
    # orjson reads 1024 levels but writes 254: a line between the two was a 500 at creation
    deep = line(2, metadata="X").replace(b'"X"', b'{"a":' * 300 + b"1" + b"}" * 300)
    batch, errors = await run_batch(running, line(1) + b"\n" + deep + b"\n" + line(3) + b"\n")
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    [error] = errors
    assert error["custom_id"] == "r2" and error["error"]["code"] == "invalid_line"
    assert "line 2" in error["error"]["message"] and "levels deep" in error["error"]["message"]

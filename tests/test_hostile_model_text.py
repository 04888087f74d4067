"""A ``model`` holding a control character (NUL, CR, LF, ESC, DEL, a C1) is refused when the
request is read: 400 naming ``model``, in the route's own dialect (Anthropic's shape on
/v1/messages), on every route that takes a model, and a batch line with one is an invalid line
that says so. Before, such a request went on to 404 model_not_found and its ledger row carried
the name: PostgreSQL refuses a NUL, so every such request logged an ERROR (a client could fill
the operator's log), and SQLite stored the control characters (CR LF in a ledger export).
A lone surrogate (``"\\ud800"``) is not JSON orjson reads: 400 invalid_json, as before."""

from __future__ import annotations

import json
import logging

import aiohttp
import openai
import pytest
from business import DEMO, bearer, credits, ledger_rows, wav
from test_batches import wait_done
from test_store_text import running  # noqa: F401  (the fixture: the business plugins on each store engine)

CONTROL = [pytest.param("up\u0000", id="NUL"), pytest.param("up\r\nX-Injected: 1", id="CRLF"),
           pytest.param("\u001b[31mup", id="ESC"), pytest.param("up\u007f", id="DEL"),
           pytest.param("up\u0085", id="C1-NEL")]
SURROGATE = "up\ud800"
BOUNDARY = "tollway-test-boundary"


def json_body(payload: dict) -> bytes:
    """``payload`` as JSON with every non-ASCII character escaped (a lone surrogate as ``\\ud800``)."""
    return json.dumps(payload).encode()


def multipart(model: str, file: bytes, **fields: str) -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode() + v.encode() + b"\r\n"
             for k, v in {"model": model, **fields}.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + file + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def json_routes(model: str) -> list[tuple[str, dict]]:
    messages = [{"role": "user", "content": "hi"}]
    return [
        ("/v1/chat/completions", {"model": model, "messages": messages}),
        ("/v1/completions", {"model": model, "prompt": "hi"}),
        ("/v1/embeddings", {"model": model, "input": "hi"}),
        ("/v1/responses", {"model": model, "input": "hi"}),
        ("/v1/messages", {"model": model, "max_tokens": 5, "messages": messages}),
        ("/v1/messages/count_tokens", {"model": model, "messages": messages}),
        ("/v1/images/generations", {"model": model, "prompt": "a cat"}),
        ("/v1/audio/speech", {"model": model, "input": "hi", "voice": "alloy"}),
    ]


@pytest.mark.parametrize("model", [*CONTROL, pytest.param(SURROGATE, id="lone-surrogate")])
async def test_a_model_with_control_characters_is_a_400_on_every_route(running, model, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING)
    answers = []
    async with aiohttp.ClientSession() as s:
        before = await credits(s, running, DEMO)
        json_headers = {**bearer(DEMO), "Content-Type": "application/json"}
        for path, payload in json_routes(model):
            async with s.post(running.root + path, data=json_body(payload), headers=json_headers) as r:
                answers.append((path, r.status, await r.json()))
        if model != SURROGATE:  # (no UTF-8 carries a lone surrogate: a multipart field cannot hold one)
            form_headers = {**bearer(DEMO), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
            for path, fields in (("/v1/audio/transcriptions", {}), ("/v1/audio/translations", {}),
                                 ("/v1/images/edits", {"prompt": "a hat"})):
                body = multipart(model, wav(1.0), **fields)
                if path.endswith("edits"):
                    body = body.replace(b'name="file"', b'name="image"')
                async with s.post(running.root + path, data=body, headers=form_headers) as r:
                    answers.append((path, r.status, await r.json()))
        after = await credits(s, running, DEMO)

    for path, status, body in answers:
        if path.startswith("/v1/messages"):
            assert (status, body["type"], body["error"]["type"]) == (400, "error", "invalid_request_error"), (
                path, body)
            if model != SURROGATE:
                assert body["error"]["message"].startswith("model: holds a control character (U+"), (path, body)
        elif model == SURROGATE:
            assert (status, body["error"]["code"]) == (400, "invalid_json"), (path, body)
        else:
            assert (status, body["error"]["param"], body["error"]["code"]) == (400, "model", "invalid_request"), (
                path, body)
            assert "'model' holds a " in body["error"]["message"], (path, body)
    assert after == before
    rows = await ledger_rows(running, "model", "status")
    assert {(r["model"], r["status"]) for r in rows} == {("", 400)}  # refused as read: no model to record
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("model", CONTROL)
async def test_a_batch_line_with_control_characters_in_its_model_is_an_invalid_line(running, model):  # noqa: F811
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]}}
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        f = await client.files.create(file=("in.jsonl", json_body(line) + b"\n"), purpose="batch")
        batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")
        batch = await wait_done(client, batch.id)
        [error] = [json.loads(x) for x in (await client.files.content(batch.error_file_id)).text.splitlines()]
    assert (batch.request_counts.failed, error["error"]["code"]) == (1, "invalid_line"), error
    assert "'model' holds a control character (U+" in error["error"]["message"], error


async def test_a_model_name_with_a_no_break_space_is_looked_up_as_before(running):  # noqa: F811
    """Only control characters are refused: a name that merely does not print
    (U+00A0) is a model that does not exist, as before."""
    payload = {"model": "up\u00a0", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s, s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                                                    json=payload) as r:
        assert r.status == 404, await r.text()
        assert (await r.json())["error"]["code"] == "model_not_found"


async def test_a_request_without_a_model_and_no_default_is_recorded_without_one(running):  # noqa: F811
    """Before, the ledger row (and /v1/usage, the dashboard) named the gateway's placeholder
    "(default model)", a name the client never sent and no model has."""
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                          json={"messages": [{"role": "user", "content": "hi"}]}) as r:
            assert (r.status, (await r.json())["error"]["code"]) == (400, "missing_model")
        [row] = await ledger_rows(running, "model", "status", "key")
        async with s.get(running.url + "/usage", headers=bearer(DEMO)) as r:
            usage = await r.json()
    assert (row["model"], row["status"], row["key"]) == ("", 400, "cfg_demo")
    assert [d["model"] for d in usage["data"]] == [""], usage

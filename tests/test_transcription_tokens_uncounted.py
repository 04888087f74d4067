"""A transcription model priced per token (gpt-4o-transcribe: ``price.input``/``output``, no
``audio_minute``) whose upstream answers without ``usage``: the text that went to the client
is never free. Through the real server, with the quotas plugin (prepaid) and without it
(postpaid: auth, pricing, ledger), told == ledger, marked estimated."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from business import ALL, DEMO, bearer, biz_config, credits, ledger_rows, wav

from plugins.accounts.tokens import count_tokens

BOUNDARY = "tollway-test-boundary"
TEXT = "the quick brown fox jumps over the lazy dog " * 20
PER_TOKEN = {"input": 2.5, "output": 10.0}  # USD per 1M tokens (gpt-4o-transcribe)


def multipart(file: bytes, **fields: str) -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="talk.wav"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + file + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def transcribe(request: web.Request) -> web.Response:
    """Some OpenAI-compatible servers answer json without ``usage``."""
    await request.post()
    return web.json_response({"text": TEXT})


@pytest.mark.parametrize("enabled", [ALL, ["auth", "pricing", "ledger"]], ids=["prepaid", "postpaid"])
async def test_a_token_priced_transcription_without_usage_is_billed_on_its_text(start_gateway, serve_upstream,
                                                                              enabled):
    upstream = await serve_upstream({"POST /v1/audio/transcriptions": transcribe})
    config = biz_config(upstream.url, enabled=enabled)
    config["models"]["4o-transcribe"] = {"provider": "up", "model": "gpt-4o-transcribe", "price": PER_TOKEN}
    running = await start_gateway(config)
    body = multipart(wav(2.0), model="4o-transcribe", response_format="json")
    headers = {**bearer(DEMO), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/audio/transcriptions", data=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["text"] == TEXT
            told = r.headers.get("x-tollway-cost")
        spent = (await credits(s, running, DEMO))["spent_micro_usd"] if "quotas" in enabled else None
    [row] = await ledger_rows(running, "cost", "prompt", "completion", "estimated")
    # The input's bound, as quotas reserves it (a token a byte of the upload), and the text counted.
    text = await count_tokens(TEXT)
    assert (row["prompt"], row["completion"], row["estimated"]) == (len(body), text, 1)
    cost = -(-(len(body) * 25 + text * 100) // 10)  # micro-USD: 2.5 and 10 a token, rounded up
    assert told is not None and round(float(told) * 1e6) == row["cost"] == cost
    assert spent in (None, cost)

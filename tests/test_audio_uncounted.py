"""Transcriptions in json and verbose_json of an upload the gateway cannot count (Ogg
Speex, whose length only its header gives, the client's word; webm, with none): billed
the larger of the upstream's reported length and the header's, and with no report
what the upload can hold (a millisecond a byte) -- never on the header alone (a header
of 10 s in front of more audio was billed 10 s). Every answer tells its cost in
``x-tollway-cost``, with the quotas plugin or without it (postpaid: auth, pricing,
ledger): a webm answered in json without a length went out without the header and
cost 0 there. Through the real server; told == ledger == spent, ``audio_ms`` the
length billed."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from audio_files import ogg_speex
from business import ALL, DEMO, bearer, biz_config, credits, ledger_rows

SPEEX = ogg_speex(10)  # its header says 10 s; 33 kB: it can hold 33 s
WEBM = b"\x1aE\xdf\xa3" + bytes(i & 0x7F for i in range(30_000))  # an EBML header: no length anywhere
CENTS_A_SECOND = {"input": 0, "output": 0, "audio_minute": 0.6}  # 10 micro-USD a millisecond
BOUNDARY = "tollway-test-boundary"


def multipart(file: bytes, filename: str, **fields: str) -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + file + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def transcribe(request: web.Request) -> web.Response:
    """An OpenAI-like upstream: the length it heard is the form's ``report`` field ("" for none:
    some OpenAI-compatible servers answer json without ``usage``)."""
    form = await request.post()
    report = float(form["report"]) if form["report"] else None
    if form["response_format"] == "verbose_json":
        return web.json_response({"task": "transcribe", "text": "hi", **({"duration": report} if report else {})})
    usage = {"usage": {"type": "duration", "seconds": report}} if report is not None else {}
    return web.json_response({"text": "hi", **usage})


async def gateway(start_gateway, serve_upstream, enabled: list[str]):
    upstream = await serve_upstream({"POST /v1/audio/transcriptions": transcribe})
    config = biz_config(upstream.url, enabled=enabled)
    config["models"]["whisper"] = {"provider": "up", "model": "whisper-1", "price": CENTS_A_SECOND}
    if "auth" not in enabled:
        del config["keys"]
    return await start_gateway(config)


async def billed(running, file: bytes, filename: str, fmt: str, report: float | None) -> tuple[int, int]:
    """(milliseconds billed, milliseconds the upload can hold) of one transcription; told == ledger == spent."""
    body = multipart(file, filename, model="whisper", response_format=fmt, report="" if report is None else report)
    headers = {**bearer(DEMO), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/audio/transcriptions", data=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            told = round(float(r.headers["x-tollway-cost"]) * 1e6)
        spent = (await credits(s, running, DEMO))["spent_micro_usd"] if "quotas" in running.gw.config.plugins.enabled \
            else None
    [row] = await ledger_rows(running, "cost", "audio_ms")
    assert told == row["cost"] == row["audio_ms"] * 10, (told, row)
    assert spent in (None, told)
    return row["audio_ms"], len(body)  # (a millisecond a byte of the request)


@pytest.mark.parametrize(("file", "name", "fmt", "report", "expected"), [
    (SPEEX, "talk.spx", "verbose_json", 20.0, "report"),  # the header claims less than was heard
    (SPEEX, "talk.spx", "verbose_json", 4.0, "header"),  # the client's own header claims more
    (SPEEX, "talk.spx", "json", 20.0, "report"),
    (SPEEX, "talk.spx", "json", None, "all"),  # nothing reported: what the upload can hold
    (SPEEX, "talk.spx", "verbose_json", 99_999.0, "all"),  # a report above that is not believed
    (WEBM, "talk.webm", "json", 7.0, "report"),
    (WEBM, "talk.webm", "json", None, "all"),
    (WEBM, "talk.webm", "verbose_json", None, "all"),
])
async def test_an_uncounted_upload_is_billed_the_larger_of_report_and_header_else_what_it_can_hold(
        start_gateway, serve_upstream, file, name, fmt, report, expected):
    running = await gateway(start_gateway, serve_upstream, ALL)
    ms, most = await billed(running, file, name, fmt, report)
    assert ms == {"report": round((report or 0) * 1000), "header": 10_000, "all": most}[expected]


@pytest.mark.parametrize("enabled", [["auth", "pricing", "ledger"], ["pricing", "ledger"]], ids=["postpaid", "no-auth"])
@pytest.mark.parametrize("report", [None, 7.0])
async def test_a_webm_in_json_tells_its_cost_without_the_quotas_plugin(start_gateway, serve_upstream, enabled,
                                                                        report):
    running = await gateway(start_gateway, serve_upstream, enabled)
    ms, most = await billed(running, WEBM, "talk.webm", "json", report)
    assert ms == (most if report is None else 7000)

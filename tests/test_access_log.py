"""The access log through the real server: one line per request, text or JSON, every
field the request had (and none it did not), written in batches."""

from __future__ import annotations

import io
import re

import aiohttp
import orjson
import pytest
from business import DEMO, bearer, biz_config


async def served(start_gateway, mock_upstream, fmt: str) -> tuple[object, io.StringIO]:
    config = biz_config(mock_upstream.url)
    config["server"]["access_log"] = fmt
    running = await start_gateway(config)
    out = io.StringIO()
    running.gw.access_log.stream = out
    return running, out


async def calls(running) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/chat/completions", headers=bearer(DEMO), json={
                "model": "up", "stream": True, "messages": [{"role": "user", "content": "hi"}],
                "mock": {"chunks": 3}}) as r:
            assert r.status == 200 and (await r.read()).endswith(b"data: [DONE]\n\n")
        async with s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                          json={"model": "up", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200
        async with s.post(running.url + "/chat/completions", headers=bearer("sk-nobody"),
                          json={"model": "up", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 401


TEXT = re.compile(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d 127\.0\.0\.1 "POST /v1/chat/completions" (\d{3}) \d+\.\dms(.*)\n')


async def test_text_lines_name_what_each_request_had(start_gateway, mock_upstream):
    running, out = await served(start_gateway, mock_upstream, "text")
    await calls(running)
    assert out.getvalue() == ""  # written in batches, never per request
    running.gw.access_log.flush()
    lines = out.getvalue().splitlines(keepends=True)
    assert len(lines) == 3
    parsed = [TEXT.fullmatch(line) for line in lines]
    assert all(parsed), lines
    (s1, stream), (s2, whole), (s3, refused) = (m.groups() for m in parsed)
    assert (s1, s2, s3) == ("200", "200", "401")
    assert re.fullmatch(r" model=up provider=up key=demo stream=True tokens=\d+/3 cost_micro=\d+ ttfb=\d+\.\dms",
                        stream), stream
    assert re.fullmatch(r" model=up provider=up key=demo tokens=\d+/8 cost_micro=\d+ ttfb=\d+\.\dms", whole), whole
    assert refused == " model=up error=invalid_api_key"


async def test_json_lines_carry_every_field(start_gateway, mock_upstream):
    running, out = await served(start_gateway, mock_upstream, "json")
    await calls(running)
    running.gw.access_log.flush()
    stream, whole, refused = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stream["time"])
    assert stream["stream"] is True and whole["stream"] is False
    assert stream["completion_tokens"] == 3 and whole["completion_tokens"] == 8
    assert stream["cost_micro_usd"] > 0 and stream["ttfb_ms"] > 0 and stream["latency_ms"] >= stream["ttfb_ms"]
    assert refused == {**refused, "status": 401, "key": None, "error": "invalid_api_key", "prompt_tokens": None,
                       "cost_micro_usd": None, "ttfb_ms": None, "client_gone": False, "provider": None}
    assert set(stream) == {"time", "remote", "method", "path", "status", "model", "provider", "stream", "key",
                           "prompt_tokens", "completion_tokens", "cost_micro_usd", "latency_ms", "ttfb_ms",
                           "error", "cache", "client_gone"}


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_the_time_of_day_follows_the_clock(start_gateway, mock_upstream, fmt):
    """The formatted second is reused only within that second."""
    running, out = await served(start_gateway, mock_upstream, fmt)
    clock = iter([1_800_000_000.25, 1_800_000_000.75, 1_800_000_001.5])
    running.gw.access_log.clock = lambda: next(clock)
    await calls(running)
    running.gw.access_log.flush()
    stamps = [line[:19] if fmt == "text" else orjson.loads(line)["time"] for line in out.getvalue().splitlines()]
    if fmt == "text":
        assert stamps == ["2027-01-15T08:00:00", "2027-01-15T08:00:00", "2027-01-15T08:00:01"]
    else:
        assert stamps == ["2027-01-15T08:00:00.250Z", "2027-01-15T08:00:00.750Z", "2027-01-15T08:00:01.500Z"]

"""Upstream failures, each answered with the right status, never a hang or a leak."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import openai
import orjson
import pytest
from conftest import base_config

from proxy import hookimpl

MESSAGES = [{"role": "user", "content": "hi"}]
SECRETS = ("secret-upstream-detail", "sk-upstream-secret")


@pytest.fixture
async def running(start_gateway, mock_upstream):
    return await start_gateway(base_config(mock_upstream.url))


async def chat(running, body: dict) -> tuple[int, dict, bytes]:
    payload = {"model": "up", "messages": MESSAGES, **body}
    async with aiohttp.ClientSession() as s, s.post(f"{running.url}/chat/completions", json=payload) as r:
        return r.status, dict(r.headers), await r.read()


def error_of(raw: bytes) -> dict:
    body = orjson.loads(raw)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    for secret in SECRETS:
        assert secret not in raw.decode()
    return body["error"]


@pytest.mark.parametrize("upstream_status, status, code", [
    (401, 502, "upstream_auth_failed"),
    (403, 502, "upstream_auth_failed"),
    (500, 502, "upstream_error"),
    (502, 502, "upstream_error"),
    (503, 503, "upstream_overloaded"),
    (504, 504, "upstream_timeout"),
    (404, 502, "upstream_error"),
])
async def test_upstream_error_status_mapping(running, upstream_status, status, code):
    got, _, raw = await chat(running, {"mock": {"status": upstream_status}})
    assert got == status
    assert error_of(raw)["code"] == code


async def test_upstream_400_passes_the_providers_message(running):
    status, _, raw = await chat(running, {"mock": {"status": 400}})
    assert status == 400
    # A client-caused error keeps the provider's own words so the client can fix it.
    assert "mock upstream failing with 400" in orjson.loads(raw)["error"]["message"]


async def test_upstream_429_passes_with_retry_after(running):
    status, headers, raw = await chat(running, {"mock": {"status": 429}})
    assert status == 429
    assert headers["Retry-After"] == "7"
    assert error_of(raw)["type"] == "rate_limit_error"


async def test_upstream_401_is_502_through_the_sdk(running):
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k", max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as exc:
            await client.chat.completions.create(model="up", messages=MESSAGES, extra_body={"mock": {"status": 401}})
    assert exc.value.status_code == 502
    assert "api_key" in exc.value.message  # tells the operator what to check, not the upstream's words


async def test_first_byte_timeout_is_504(running):
    status, _, raw = await chat(running, {"mock": {"delay": 3}})  # first_byte timeout is 2s
    assert status == 504
    assert error_of(raw)["code"] == "upstream_timeout_first_byte"


async def test_hanging_upstream_is_504_not_a_hang(running):
    status, _, raw = await chat(running, {"mock": {"hang": True}, "stream": True})
    assert status == 504


async def test_connection_refused_is_502(start_gateway):
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    running = await start_gateway(base_config(f"http://127.0.0.1:{port}/v1"))
    status, _, raw = await chat(running, {})
    assert status == 502
    assert error_of(raw)["code"] == "upstream_unreachable"


def sse_payloads(raw: bytes) -> list[bytes]:
    return [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]


@pytest.mark.parametrize("knobs, code", [
    ({"drop_after": 3}, "upstream_disconnected"),  # connection dropped mid-stream
    ({"hang_after": 3}, "upstream_timeout_idle"),  # upstream goes silent mid-stream (idle timeout 1s)
    ({"no_done": True}, "upstream_stream_cut"),  # clean EOF, but the stream never finished
])
async def test_stream_that_dies_ends_with_error_event_and_done(running, knobs, code):
    status, _, raw = await chat(running, {"stream": True, "mock": knobs})
    assert status == 200
    payloads = sse_payloads(raw)
    assert payloads[-1] == b"[DONE]"
    error = orjson.loads(payloads[-2])["error"]
    assert error["code"] == code
    assert orjson.loads(payloads[0])["choices"][0]["delta"]["role"] == "assistant"


async def test_stream_death_read_by_the_sdk_raises_not_hangs(running):
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k", max_retries=0) as client:
        stream = await client.chat.completions.create(model="up", messages=MESSAGES, stream=True,
                                                      extra_body={"mock": {"drop_after": 3}})
        with pytest.raises(openai.APIError):
            [c async for c in stream]


class Recorder:
    """A test plugin that keeps every settled call."""

    def __init__(self) -> None:
        self.settled = []

    @hookimpl
    async def tollway_admit(self, call):
        pass

    @hookimpl
    async def tollway_settle(self, call):
        self.settled.append(call)


async def hang_up_mid_stream(url: str, payload: dict) -> None:
    """Read the first line of a streamed answer, then drop the connection."""
    async with aiohttp.ClientSession() as s:
        r = await s.post(url, json=payload)
        await r.content.readline()
        r.close()


async def settled_call(recorder: Recorder):
    """The call the gateway settles after the client left (it keeps draining meanwhile)."""
    for _ in range(200):
        if recorder.settled:
            return recorder.settled[-1]
        await asyncio.sleep(0.02)
    raise AssertionError("the call was never settled")


async def test_fallback_model_answers_when_the_first_fails(start_gateway, mock_upstream):
    config = base_config(mock_upstream.url)
    config["providers"]["dead"] = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}
    config["models"]["primary"] = {"provider": "dead", "price": {"input": 1, "output": 1}, "fallbacks": ["up"]}
    recorder = Recorder()
    running = await start_gateway(config, plugins=[recorder])
    status, _, raw = await chat(running, {"model": "primary"})
    assert status == 200
    call = recorder.settled[-1]
    assert call.upstream_attempts == 2
    assert call.served_model == "up" and call.provider_name == "up"


async def test_client_disconnect_mid_stream_still_reads_usage(start_gateway, mock_upstream):
    recorder = Recorder()
    running = await start_gateway(base_config(mock_upstream.url), plugins=[recorder])
    payload = {"model": "up", "messages": MESSAGES, "stream": True,
               "mock": {"chunks": 40, "chunk_delay": 0.02}}
    await hang_up_mid_stream(f"{running.url}/chat/completions", payload)
    call = await settled_call(recorder)
    assert call.response.client_gone
    # The gateway kept reading to the end: the upstream's usage is known for billing.
    assert call.billing.usage is not None and call.billing.usage.completion_tokens == 40


async def test_disconnect_under_a_server_that_cancels_handlers(aiohttp_server, mock_upstream, tmp_path):
    """aiohttp's own runners may cancel the handler of a lost connection; usage is still read."""
    from proxy.app import make_app
    from proxy.gateway import build_gateway

    recorder = Recorder()
    config = base_config(mock_upstream.url, storage={"url": "sqlite://:memory:"})
    gw = build_gateway(config, extra_plugins=[recorder])
    server = await aiohttp_server(make_app(gw))  # handler_cancellation=True
    payload = {"model": "up", "messages": MESSAGES, "stream": True, "mock": {"chunks": 30, "chunk_delay": 0.02}}
    await hang_up_mid_stream(str(server.make_url("/v1/chat/completions")), payload)
    call = await settled_call(recorder)
    assert call.response.client_gone and call.billing.usage.completion_tokens == 30


async def test_drain_is_bounded_after_the_client_left(start_gateway, mock_upstream):
    recorder = Recorder()
    config = base_config(mock_upstream.url)
    config["server"]["disconnect_drain"] = {"seconds": 0.2, "max_bytes": 1_000_000}
    running = await start_gateway(config, plugins=[recorder])
    payload = {"model": "up", "messages": MESSAGES, "stream": True, "mock": {"chunks": 200, "chunk_delay": 0.02}}
    await hang_up_mid_stream(f"{running.url}/chat/completions", payload)
    call = await settled_call(recorder)
    assert call.response.client_gone and call.response.error_code == "client_gone_drain_bound"
    assert call.billing.usage is None  # stopped before the upstream's usage: quotas must charge safely


async def stream_with_timeouts(start_gateway, mock_upstream, idle: float, total: float,
                               chunks: int, chunk_delay: float) -> list[bytes]:
    """The SSE payloads of a paced stream through a gateway with these upstream timeouts."""
    config = base_config(mock_upstream.url)
    config["providers"]["up"]["timeouts"] = {"connect": 2, "first_byte": 2, "idle": idle, "total": total}
    running = await start_gateway(config)
    status, _, raw = await chat(running, {"stream": True, "mock": {"chunks": chunks, "chunk_delay": chunk_delay}})
    assert status == 200
    return sse_payloads(raw)


async def test_total_timeout_bounds_a_slow_but_steady_stream(start_gateway, mock_upstream):
    payloads = await stream_with_timeouts(start_gateway, mock_upstream, idle=2, total=0.5, chunks=20, chunk_delay=0.1)
    assert payloads[-1] == b"[DONE]"
    assert orjson.loads(payloads[-2])["error"]["code"] == "upstream_timeout_total"


async def test_a_stream_longer_than_the_idle_timeout_with_short_gaps_is_not_cut(start_gateway, mock_upstream):
    """The idle timer is armed once and re-armed lazily: it must measure each gap, not the stream."""
    payloads = await stream_with_timeouts(start_gateway, mock_upstream, idle=0.25, total=10, chunks=12,
                                          chunk_delay=0.08)
    assert payloads[-1] == b"[DONE]" and all(b'"error"' not in p for p in payloads)
    assert sum(1 for p in payloads if b'"content"' in p) >= 12

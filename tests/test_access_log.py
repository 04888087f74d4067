"""The access log through the real server: one line per request, text or JSON, every
field the request had (and none it did not), written in batches."""

from __future__ import annotations

import io
import random
import re
import time
from types import SimpleNamespace

import aiohttp
import orjson
import pytest
from business import DEMO, admin, bearer, biz_config, ledger_rows

from proxy.accesslog import AccessLog
from proxy.call import Call, Route, Usage


async def served(start_gateway, mock_upstream, fmt: str) -> tuple[object, io.StringIO]:
    config = biz_config(mock_upstream.url)
    config["server"]["access_log"] = fmt
    running = await start_gateway(config)
    out = io.StringIO()
    running.gw.access_log.stream = out
    return running, out


async def calls(running) -> list[str]:
    """A stream, a whole answer and a refusal: the ``x-tollway-request-id`` of each."""
    ids = []
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/chat/completions", headers=bearer(DEMO), json={
                "model": "up", "stream": True, "messages": [{"role": "user", "content": "hi"}],
                "mock": {"chunks": 3}}) as r:
            assert r.status == 200 and (await r.read()).endswith(b"data: [DONE]\n\n")
            ids.append(r.headers["x-tollway-request-id"])
        async with s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                          json={"model": "up", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200
            ids.append(r.headers["x-tollway-request-id"])
        async with s.post(running.url + "/chat/completions", headers=bearer("sk-nobody"),
                          json={"model": "up", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 401
            ids.append(r.headers["x-tollway-request-id"])
    return ids


TEXT = re.compile(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d 127\.0\.0\.1 "POST /v1/chat/completions" (\d{3}) \d+\.\dms(.*)\n')


async def test_text_lines_name_what_each_request_had(start_gateway, mock_upstream):
    running, out = await served(start_gateway, mock_upstream, "text")
    ids = await calls(running)
    assert out.getvalue() == ""  # written in batches, never per request
    running.gw.access_log.flush()
    lines = out.getvalue().splitlines(keepends=True)
    assert len(lines) == 3
    parsed = [TEXT.fullmatch(line) for line in lines]
    assert all(parsed), lines
    (s1, stream), (s2, whole), (s3, refused) = (m.groups() for m in parsed)
    assert (s1, s2, s3) == ("200", "200", "401")
    assert re.fullmatch(r" model=up provider=up key=demo stream=True tokens=\d+/3 cost_micro=\d+ ttfb=\d+\.\dms"
                        f" id={ids[0]}", stream), stream
    assert re.fullmatch(rf" model=up provider=up key=demo tokens=\d+/8 cost_micro=\d+ ttfb=\d+\.\dms id={ids[1]}",
                        whole), whole
    assert refused == f" model=up error=invalid_api_key id={ids[2]}"
    # the id is the ledger row's: the line of a paid request leads to its row
    assert [r["id"] for r in await ledger_rows(running, "id")] == ids[:2]


async def test_json_lines_carry_every_field(start_gateway, mock_upstream):
    running, out = await served(start_gateway, mock_upstream, "json")
    ids = await calls(running)
    running.gw.access_log.flush()
    stream, whole, refused = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert [stream["request_id"], whole["request_id"], refused["request_id"]] == ids
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stream["time"])
    assert stream["stream"] is True and whole["stream"] is False
    assert stream["completion_tokens"] == 3 and whole["completion_tokens"] == 8
    assert stream["cost_micro_usd"] > 0 and stream["ttfb_ms"] > 0 and stream["latency_ms"] >= stream["ttfb_ms"]
    assert refused == {**refused, "status": 401, "key": None, "error": "invalid_api_key", "prompt_tokens": None,
                       "cost_micro_usd": None, "ttfb_ms": None, "client_gone": False, "provider": None}
    assert set(stream) == {"time", "remote", "method", "path", "status", "model", "provider", "stream", "key",
                           "prompt_tokens", "completion_tokens", "cost_micro_usd", "latency_ms", "ttfb_ms",
                           "error", "cache", "client_gone", "request_id"}


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


def _old_text(call, ts: float) -> str:
    """The text line as it was formatted before it read Timing's fields directly (its properties
    then): the reference the line must stay byte-identical to."""
    req = call.request
    response = call.response
    usage = call.billing.usage
    ttfb = call.timing.ttfb_ms
    cost = call.billing.cost_micro
    model = call.model
    provider = call.route.provider.name if call.route is not None else None
    key = getattr(call.principal, "name", None)
    error = response.error_code or (response.error.code if response.error is not None else None)
    cache = response.cache_status
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(ts)))
    return (f'{stamp} {req.remote if req is not None else None} '
            f'"{req.method if req is not None else ""} {req.path if req is not None else ""}" '
            f'{response.status} {call.timing.latency_ms:.1f}ms'
            f'{" model=" + model if model else ""}{" provider=" + provider if provider else ""}'
            f'{" key=" + key if key else ""}{" stream=True" if call.stream else ""}'
            f'{f" tokens={usage.prompt_tokens}/{usage.completion_tokens}" if usage else ""}'
            f'{f" cost_micro={cost}" if cost is not None else ""}'
            f'{f" ttfb={ttfb:.1f}ms" if ttfb is not None else ""}'
            f'{" error=" + error if error else ""}{" cache=" + cache if cache else ""}'
            f'{" client_gone=True" if response.client_gone else ""} id={call.id}\n')


def test_text_lines_are_byte_identical_to_the_old_format():
    """On 5,000 generated calls (every field present or not, times near a tenth's rounding
    edge, clocks crossing seconds) the line is the one the old formatting made."""
    rng = random.Random(5)
    clock = [1_800_000_000.0]
    log = AccessLog("text", stream=io.StringIO(), clock=lambda: clock[0])
    provider = SimpleNamespace(name="mock")
    for i in range(5000):
        req = rng.choice([None, SimpleNamespace(remote=rng.choice(["127.0.0.1", None]), method="POST",
                                                path="/v1/chat/completions")])
        call = Call(req, "chat", {"model": rng.choice(["bench", "", None]), "stream": rng.random() < 0.3}, b"{}")
        call.route = rng.choice([None, Route("bench", "bench", provider, None)])
        call.principal = rng.choice([None, SimpleNamespace(name="bench"), SimpleNamespace(name="")])
        call.billing.usage = rng.choice([None, Usage(prompt_tokens=rng.randint(0, 9999), completion_tokens=7)])
        call.billing.cost_micro = rng.choice([None, 0, rng.randint(1, 10**9)])
        call.response.status = rng.choice([200, 401, 429, 502])
        call.response.error_code = rng.choice([None, "rate_limited"])
        call.response.cache_status = rng.choice([None, "HIT", "MISS"])
        call.response.client_gone = rng.random() < 0.1
        elapsed = rng.choice([rng.random() / 10, rng.randint(0, 999) / 1e4 + 0.00005, rng.random() * 100])
        call.timing.ended_at = call.timing.started + elapsed
        if rng.random() < 0.7:
            call.timing.first_byte_at = call.timing.started + elapsed * rng.random()
        clock[0] += rng.choice([0.0, 0.3, 1.0, 17.25])
        assert log._text(call) == _old_text(call, clock[0]), i


def test_text_times_round_as_the_float_formatting_did():
    """The line's times under a second are read off a table, not formatted: at a half tenth
    exactly (0.25 ms, 12.75 ms: half to even, "0.2" and "12.8"), a hair either side of one,
    at the table's end (999.95 ms) and past it, the line says what ``f"{ms:.1f}"`` said."""
    log = AccessLog("text", stream=io.StringIO(), clock=lambda: 1_800_000_000.0)
    rng = random.Random(7)
    times = [k / 4 for k in range(1, 4100, 2)]  # every quarter: exact halves of a tenth
    times += [t + d for t in times[:400] for d in (-1e-12, 1e-12, -1e-9, 1e-9)]
    times += [999.95, 999.949999, 1000.0, 1000.05, 12345.678, 0.04999999999999999, 0.05]
    times += [rng.random() * rng.choice((1.0, 1000.0, 2000.0)) for _ in range(20_000)]
    checked = 0
    for ms in times:
        ended = ms / 1000.0
        if ended * 1000.0 != ms:
            continue  # (the line's time is (ended - started) * 1000.0: keep the ones it can be exactly)
        call = Call(SimpleNamespace(remote="127.0.0.1", method="POST", path="/v1/chat/completions"), "chat",
                    {"model": "bench"}, b"{}")
        call.response.status = 200
        call.timing.started = 0.0
        call.timing.ended_at = ended
        call.timing.first_byte_at = ended
        line = log._text(call)
        assert line == _old_text(call, 1_800_000_000.0), ms
        assert f" {ms:.1f}ms " in line and f"ttfb={ms:.1f}ms" in line
        checked += 1
    assert checked > 20_000


def test_text_lines_of_the_same_route_key_and_model_match_the_old_format():
    """The line's " model=... provider=... key=... stream=True" is kept while the route, the key
    and the stream flag are the last line's objects and the model the same text: on 20,000 calls
    drawn from small pools (so the same ones come back, in runs and interleaved; equal model names
    that are different strings; no route, no key, a key with an empty name), every line is the one
    the old formatting made."""
    rng = random.Random(11)
    clock = [1_800_000_000.0]
    log = AccessLog("text", stream=io.StringIO(), clock=lambda: clock[0])
    routes = [None, Route("bench", "bench", SimpleNamespace(name="mock"), None),
              Route("other", "o-1", SimpleNamespace(name="second"), None),
              Route("bench", "bench", SimpleNamespace(name=""), None)]
    keys = [None, SimpleNamespace(name="bench"), SimpleNamespace(name="ops"), SimpleNamespace(name=""), object()]
    models = ["bench", "other", "", None]
    req = SimpleNamespace(remote="127.0.0.1", method="POST", path="/v1/chat/completions")
    last = None
    for i in range(20_000):
        if last is not None and rng.random() < 0.6:  # a run: the same route, key and stream, the model re-read
            model, route, key, stream = last
        else:
            model, route, key, stream = rng.choice(models), rng.choice(routes), rng.choice(keys), rng.random() < 0.4
        last = model, route, key, stream
        body_model = "".join(model) if model else model  # an equal name, another string (as parsed anew)
        call = Call(req, "chat", {"model": body_model, "stream": stream}, b"{}")
        call.route, call.principal = route, key
        call.response.status = rng.choice([200, 429])
        call.timing.ended_at = call.timing.started + rng.random() / 10
        clock[0] += rng.choice([0.0, 0.4])
        assert log._text(call) == _old_text(call, clock[0]), (i, last)


async def test_text_lines_follow_each_key_and_a_renamed_one(start_gateway, mock_upstream):
    """Two keys' requests interleaved, streams and not, then one key renamed through the admin
    API (a new record: the line after it names the key by its new name)."""
    running, out = await served(start_gateway, mock_upstream, "text")
    async with aiohttp.ClientSession() as s:
        status, made = await admin(s, running, "POST", "/admin/keys", {"name": "second", "credits": 5.0})
        assert status == 201, made
        second = made["key"]
        for key, stream in [(DEMO, False), (DEMO, False), (second, False), (DEMO, True), (DEMO, True),
                            (second, True), (second, False), (DEMO, False)]:
            async with s.post(running.url + "/chat/completions", headers=bearer(key), json={
                    "model": "up", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status == 200
                await r.read()
        status, _ = await admin(s, running, "PATCH", f"/admin/keys/{made['id']}", {"name": "renamed"})
        assert status == 200
        for key in (second, DEMO, second):
            async with s.post(running.url + "/chat/completions", headers=bearer(key), json={
                    "model": "up", "messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status == 200
    running.gw.access_log.flush()
    named = [re.search(r" key=(\S+)( stream=True)?", line).groups() for line in out.getvalue().splitlines()]
    assert named == [("demo", None), ("demo", None), ("second", None), ("demo", " stream=True"),
                     ("demo", " stream=True"), ("second", " stream=True"), ("second", None), ("demo", None),
                     ("renamed", None), ("demo", None), ("renamed", None)]


def test_text_lines_of_the_same_remote_path_and_status_match_the_old_format():
    """The line's ' REMOTE "METHOD PATH" STATUS ' is kept while the four equal the last line's:
    on 20,000 calls drawn from small pools (runs and interleavings; equal paths that are different
    strings; no remote; a status equal to another's as a number), every line is the one the old
    formatting made, and ``record`` adds exactly that line."""
    rng = random.Random(13)
    clock = [1_800_000_000.0]
    log = AccessLog("text", stream=io.StringIO(), clock=lambda: clock[0])
    remotes = ["127.0.0.1", "10.0.0.2", None, "::1"]
    methods = ["POST", "GET"]
    paths = ["/v1/chat/completions", "/v1/embeddings", "/v1/messages"]
    statuses = [200, 200, 429, 401, 502]
    last = None
    for i in range(20_000):
        if last is not None and rng.random() < 0.6:  # a run: the same four again
            remote, method, path, status = last
        else:
            remote, method, path, status = (rng.choice(remotes), rng.choice(methods), rng.choice(paths),
                                            rng.choice(statuses))
        last = remote, method, path, status
        req = SimpleNamespace(remote=remote, method=method, path="".join(path))  # (an equal path, another string)
        call = Call(req, "chat", {"model": "bench", "stream": rng.random() < 0.5}, b"{}")
        call.response.status = status
        call.response.error_code = rng.choice([None, None, "rate_limited"])
        call.timing.ended_at = call.timing.started + rng.random() / 10
        clock[0] += rng.choice([0.0, 0.4])
        line = log._text(call)
        assert line == _old_text(call, clock[0]), (i, last)
        log.record(call)
        assert log._pending[-1] == line
    assert len(log._pending) == 20_000

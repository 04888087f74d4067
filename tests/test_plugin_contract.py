"""Third parties extend tollway on the same contract the built-ins use."""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import EntryPoint
from types import SimpleNamespace

import aiohttp
import openai
import pytest
from conftest import base_config

from proxy import ConfigError, ProxyError, ServiceKey, StateKey, hookimpl
from proxy import plugins as plugin_loading
from proxy.gateway import build_gateway

MESSAGES = [{"role": "user", "content": "hello there"}]


def with_plugins(upstream: str | None, *enabled, **sections) -> dict:
    config = base_config(upstream)
    config["plugins"] = {"enabled": list(enabled), **sections}
    return config


async def test_dotted_path_plugin_changes_the_request(start_gateway, mock_upstream):
    running = await start_gateway(with_plugins(mock_upstream.url, "example_plugins.shouting",
                                               shouting={"suffix": "!!"}))
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k") as client:
        r = await client.chat.completions.create(model="echo", messages=MESSAGES)
        assert r.choices[0].message.content == "HELLO THERE!!"
        await client.chat.completions.create(model="up", messages=MESSAGES)
    async with aiohttp.ClientSession() as s, s.get(mock_upstream.make_url("/_mock/stats")) as resp:
        sent = (await resp.json())["last_body"]
    assert sent["messages"][-1]["content"] == "HELLO THERE!!"  # re-serialised because a plugin changed it


async def test_plugin_refuses_with_a_proxy_error(start_gateway):
    running = await start_gateway(with_plugins(None, "example_plugins.shouting",
                                               shouting={"forbidden_word": "secret"}))
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k", max_retries=0) as client:
        with pytest.raises(openai.PermissionDeniedError) as exc:
            await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a secret"}])
    assert exc.value.body["code"] == "forbidden_word"


async def test_plugin_short_circuits_without_the_upstream(start_gateway, mock_upstream):
    running = await start_gateway(with_plugins(mock_upstream.url, "example_plugins.canned"))
    question = [{"role": "user", "content": "how is the weather?"}]
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k") as client:
        raw = await client.chat.completions.with_raw_response.create(model="up", messages=question)
        assert raw.headers["x-canned"] == "yes"
        assert raw.parse().choices[0].message.content == "It is always sunny here."
        stream = await client.chat.completions.create(model="up", messages=question, stream=True)
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "It is always sunny here."
    assert chunks[-1].choices[0].finish_reason == "stop"
    async with aiohttp.ClientSession() as s, s.get(mock_upstream.make_url("/_mock/stats")) as resp:
        assert (await resp.json())["requests"] == 0


async def test_entry_point_plugins_load(start_gateway, monkeypatch):
    ep = EntryPoint(name="canned", value="example_plugins.canned", group="tollway")
    monkeypatch.setattr(plugin_loading, "entry_points", lambda group: [ep] if group == "tollway" else [])
    running = await start_gateway(base_config())
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k") as client:
        r = await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "weather?"}])
    assert r.choices[0].message.content == "It is always sunny here."


def order_plugin(name: str, log: list, **marks) -> SimpleNamespace:
    @hookimpl(**marks)
    async def tollway_authenticate(call):
        log.append(name)

    return SimpleNamespace(tollway_authenticate=tollway_authenticate, __name__=name)


async def test_later_plugins_run_first_and_tryfirst_wins(start_gateway):
    log: list[str] = []
    plugins = [order_plugin("first", log, tryfirst=True), order_plugin("a", log), order_plugin("b", log)]
    running = await start_gateway(base_config(), plugins=plugins)
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k") as client:
        await client.chat.completions.create(model="echo", messages=MESSAGES)
    assert log == ["first", "b", "a"]


class Broken:
    @hookimpl
    async def tollway_admit(self, call):
        raise RuntimeError("a bug with a secret: sk-live-123")


async def test_a_plugin_bug_is_a_bare_500(start_gateway, caplog):
    running = await start_gateway(base_config(), plugins=[Broken()])
    body = {"model": "echo", "messages": MESSAGES}
    async with aiohttp.ClientSession() as s, s.post(f"{running.url}/chat/completions", json=body) as r:
        assert r.status == 500
        text = await r.text()
    assert "sk-live-123" not in text and "Traceback" not in text
    assert "internal error" in text
    assert "sk-live-123" in caplog.text  # the operator's log has the details


class Filter:
    def __init__(self) -> None:
        self.seen = b""

    @hookimpl
    async def tollway_stream_filter(self, call):
        def see(data: bytes) -> bytes:
            self.seen += data
            return data.replace(b"hello", b"howdy")
        return see


async def test_stream_filter_sees_and_rewrites_bytes(start_gateway):
    f = Filter()
    running = await start_gateway(base_config(), plugins=[f])
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k") as client:
        stream = await client.chat.completions.create(model="echo", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == "howdy there"
    assert f.seen.endswith(b"data: [DONE]\n\n")


PLAIN_SEEN: StateKey[list] = StateKey("test.plain_seen")


class PlainHooks:
    """Request-time hooks as plain ``def``s (datasette's ``await_me_maybe``): each notes its turn;
    ``tollway_settle`` hands back a coroutine, which the core awaits."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def tollway_authenticate(self, call):
        self.seen.append("authenticate")

    @hookimpl
    def tollway_admit(self, call):
        call.state[PLAIN_SEEN] = self.seen
        call.response.headers["x-plain"] = "admitted"
        self.seen.append("admit")

    @hookimpl
    def tollway_attempt(self, call, error):
        self.seen.append(f"attempt {error}")

    @hookimpl
    def tollway_usage(self, call):
        self.seen.append(f"usage {call.billing.usage.prompt_tokens}")

    @hookimpl
    def tollway_settle(self, call):
        async def settle() -> None:
            await asyncio.sleep(0)
            self.seen.append(f"settle {call.response.status}")
        return settle()

    @hookimpl
    def tollway_finish(self, call):
        self.seen.append("finish")


class AsyncHooks:
    """The same hooks as ``async def``, as third-party plugins have written them."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    async def tollway_admit(self, call):
        await asyncio.sleep(0)
        call.response.headers["x-async"] = "admitted"
        self.seen.append(f"admit after {call.state.get(PLAIN_SEEN)}")

    @hookimpl
    async def tollway_usage(self, call):
        self.seen.append("usage")

    @hookimpl
    async def tollway_settle(self, call):
        self.seen.append("settle")

    @hookimpl
    async def tollway_finish(self, call):
        await asyncio.sleep(0)
        self.seen.append("finish")


async def test_request_time_hooks_may_be_plain_or_async(start_gateway, mock_upstream):
    plain, coroutines = PlainHooks(), AsyncHooks()
    running = await start_gateway(base_config(mock_upstream.url), plugins=[coroutines, plain])  # plain runs first
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k") as client:
        raw = await client.chat.completions.with_raw_response.create(model="up", messages=MESSAGES)
    assert (raw.headers["x-plain"], raw.headers["x-async"]) == ("admitted", "admitted")
    assert raw.parse().usage.prompt_tokens > 0
    tokens = raw.parse().usage.prompt_tokens
    assert plain.seen == ["authenticate", "admit", "attempt None", f"usage {tokens}", "settle 200", "finish"]
    assert coroutines.seen == ["admit after ['authenticate', 'admit']", "usage", "settle", "finish"]


class ReturnsAValue:
    """Plain ``def``s that return a value where the hook returns None: a bug, named as one."""

    def __init__(self, hook: str) -> None:
        self.hook = hook

    @hookimpl
    def tollway_admit(self, call):
        return 5 if self.hook == "admit" else None

    @hookimpl
    def tollway_settle(self, call):
        return "settled" if self.hook == "settle" else None


@pytest.mark.parametrize("hook", ["admit", "settle"])
async def test_a_plain_hook_returning_a_value_where_none_is_due_is_a_named_bug(start_gateway, caplog, hook):
    recorder = AsyncHooks()
    running = await start_gateway(base_config(), plugins=[recorder, ReturnsAValue(hook)])
    body = {"model": "echo", "messages": MESSAGES}
    with caplog.at_level(logging.ERROR, logger="tollway"):
        async with aiohttp.ClientSession() as s, s.post(f"{running.url}/chat/completions", json=body) as r:
            status, text = r.status, await r.text()
    returned = {"admit": "5", "settle": "'settled'"}[hook]
    named = (f"ReturnsAValue.tollway_{hook} (tollway_{hook}) returned {returned}: "
             "an implementation of this hook returns None")
    assert named in caplog.text and named not in text
    if hook == "admit":  # admit's bug is the request's answer: a bare 500
        assert status == 500 and "internal error" in text
    else:  # settle's is logged, and the answer (and the other settle hooks) stand
        assert status == 200 and "hello there" in text
        assert recorder.seen[-2:] == ["settle", "finish"]


class WrongArgs:
    @hookimpl
    async def tollway_admit(self, call, nonsense):
        pass


def test_hook_with_unknown_arguments_is_refused():
    with pytest.raises(ConfigError, match="does not fit the hook contract"):
        build_gateway(base_config(), extra_plugins=[WrongArgs()])


def test_plugin_sections_are_validated_with_paths():
    with pytest.raises(ConfigError, match=r"plugins\.shouting\.sufix: unknown key \(did you mean 'suffix'\?\)"):
        build_gateway(with_plugins(None, "example_plugins.shouting", shouting={"sufix": "?"}))
    with pytest.raises(ConfigError, match=r"plugins\.nobody: no enabled plugin reads this section"):
        build_gateway(with_plugins(None, nobody={"x": 1}))


@pytest.mark.parametrize("enabled, message", [
    (["authh"], "plugins.enabled[0]: unknown plugin 'authh' (did you mean 'auth'?)"),
    (["no.such.module"], "plugins.enabled[0]: cannot import 'no.such.module'"),
    ([5], "plugins.enabled[0]: expected a plugin name or dotted path"),
    (["example_plugins.canned", "example_plugins.canned"], "listed twice"),
])
def test_bad_plugin_lists(enabled, message):
    with pytest.raises(ConfigError) as exc:
        build_gateway(with_plugins(None, *enabled))
    assert message in str(exc.value)


def test_proxy_error_is_the_only_error_type_plugins_need():
    err = ProxyError(429, "slow down", code="rate_limited", headers={"Retry-After": "3"})
    assert err.openai_body()["error"]["type"] == "rate_limit_error"
    assert err.anthropic_body() == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}


class BrokenPricing:
    @hookimpl
    async def tollway_usage(self, call):
        raise RuntimeError("pricing bug")


async def test_a_usage_hook_bug_ends_a_stream_cleanly(start_gateway):
    running = await start_gateway(base_config(), plugins=[BrokenPricing()])
    body = {"model": "echo", "messages": MESSAGES, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(f"{running.url}/chat/completions", json=body) as r:
        assert r.status == 200
        raw = await r.read()
    events = [line for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    assert b'"code":"internal_error"' in events[-2]
    assert b"pricing bug" not in raw


class RefusingFilter:
    @hookimpl
    async def tollway_stream_filter(self, call):
        raise ProxyError(403, "streams are not allowed for this tenant", code="no_streams")


async def test_a_stream_filter_can_refuse_before_the_first_byte(start_gateway, mock_upstream):
    running = await start_gateway(base_config(mock_upstream.url), plugins=[RefusingFilter()])
    body = {"model": "up", "messages": MESSAGES, "stream": True}
    for _ in range(3):  # and again: the refused upstream answers were given back
        async with aiohttp.ClientSession() as s, s.post(f"{running.url}/chat/completions", json=body) as r:
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "no_streams"


# -- shared services and per-request state under typed keys -------------------------------

class Counter:
    """A service two plugins share; records its life in ``events``."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.events.append("opened")
        self.count = 0

    async def close(self) -> None:
        self.events.append(f"closed after {self.count}")


def counter_key(events: list[str]) -> ServiceKey[Counter]:
    async def open_counter(gateway) -> Counter:
        return Counter(events)
    return ServiceKey("test.counter", open_counter)


SEEN: StateKey[int] = StateKey("test.seen")


class CountingPlugin:
    """Opens the shared counter at start-up; counts requests in admit, reads its own state in settle."""

    def __init__(self, key: ServiceKey[Counter], name: str, events: list[str]) -> None:
        self.key, self.name, self.events = key, name, events
        self.counter: Counter | None = None

    @hookimpl
    def tollway_startup(self, gateway):
        async def start() -> None:
            self.counter = await gateway.services.open(self.key)
        return start()

    @hookimpl
    def tollway_shutdown(self, gateway):
        async def stop() -> None:
            # Still open during every plugin's shutdown: no plugin closes it under another.
            self.events.append(f"{self.name} shutdown sees {gateway.services[self.key].count}")
        return stop()

    @hookimpl
    async def tollway_admit(self, call):
        self.counter.count += 1
        call.state[SEEN] = self.counter.count

    @hookimpl
    async def tollway_settle(self, call):
        self.events.append(f"{self.name} settled #{call.state[SEEN]}")


async def test_a_service_is_opened_once_shared_and_closed_by_the_gateway_last(start_gateway):
    events: list[str] = []
    key = counter_key(events)
    running = await start_gateway(with_plugins(None), plugins=[CountingPlugin(key, "a", events),
                                                               CountingPlugin(key, "b", events)])
    assert running.gw.services.get(key) is running.gw.services[key]
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k") as client:
        await client.chat.completions.create(model="echo", messages=MESSAGES)
    await running.gw.close()
    assert events == ["opened", "b settled #2", "a settled #2", "b shutdown sees 2", "a shutdown sees 2",
                      "closed after 2"]
    assert running.gw.services.get(key) is None


# -- routes: tollway_routes, and the one error middleware every route shares -------------

class Routes:
    """Plugin routes that answer, refuse and break."""

    @hookimpl
    def tollway_routes(self, gateway):
        from aiohttp import web

        async def hello(request):
            return web.json_response({"models": len(gateway.config.models)})

        async def refuse(request):
            raise ProxyError(429, "slow down", code="slow_down", headers={"Retry-After": "3"})

        async def broken(request):
            raise RuntimeError("a route bug with a secret: sk-live-456")

        return [web.get("/x/hello", hello), web.get("/x/refuse", refuse), web.get("/x/broken", broken),
                web.get("/v1/messages/x/refuse", refuse)]


async def test_plugin_routes_are_served_and_their_errors_rendered_in_one_place(start_gateway, caplog):
    running = await start_gateway(base_config(), plugins=[Routes()])
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{running.root}/x/hello") as r:
            assert (r.status, await r.json()) == (200, {"models": 1})
        async with s.get(f"{running.root}/x/refuse") as r:
            assert (r.status, r.headers["Retry-After"], r.content_type) == (429, "3", "application/json")
            assert await r.json() == {"error": {"message": "slow down", "type": "rate_limit_error", "param": None,
                                                "code": "slow_down"}}
        async with s.get(f"{running.root}/v1/messages/x/refuse") as r:  # the Anthropic shape under its API
            assert r.status == 429
            assert await r.json() == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
        async with s.get(f"{running.root}/x/broken") as r:
            assert r.status == 500
            body = await r.json()
    assert body["error"]["code"] == "internal_error" and "sk-live-456" not in str(body)
    assert "sk-live-456" in caplog.text and "GET /x/broken failed" in caplog.text

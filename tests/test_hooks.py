"""Every hook a plugin can implement, exercised through an ad-hoc plugin and the real server.

The hooks the built-ins and the other suites already drive are named there; these are the
ones only a third-party plugin would use on its own (``test_hook_docs.py`` checks that every
hook in ``proxy/hookspecs.py`` is named in some test).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint

import aiohttp
import anthropic
import openai
import pytest
import yaml
from conftest import base_config

from plugins.providers.anthropic_dialect import AnthropicDialect
from plugins.providers.openai import OpenAIProvider
from proxy import ConfigError, ProxyError, Route, hookimpl
from proxy import plugins as plugin_loading
from proxy.cli import add_config_arg, gateway_command, main
from proxy.gateway import build_gateway

MESSAGES = [{"role": "user", "content": "hello there"}]


# -- start-up hooks ------------------------------------------------------------------------

class NeedsAModel:
    """tollway_config_check: refuses a config without the model it works on."""

    @hookimpl
    def tollway_config_check(self, config):
        if "echo" not in config.models:
            raise ConfigError("models: this plugin needs a model named 'echo'")


def test_config_check_refuses_a_config_before_anything_starts():
    build_gateway(base_config(), extra_plugins=[NeedsAModel()])  # fine
    config = base_config()
    config["models"] = {"other": config["models"]["echo"]}
    with pytest.raises(ConfigError, match="this plugin needs a model named 'echo'"):
        build_gateway(config, extra_plugins=[NeedsAModel()])


@dataclass(frozen=True)
class TaggingOptions:
    user: str = "tollway"


class TaggingProvider(OpenAIProvider):
    """An OpenAI upstream that stamps every chat request with a ``user`` (its own option)."""

    kind = "tagging"
    Options = TaggingOptions

    def chat_request(self, call, route, body):
        if body is None:
            call.set_body({**call.body, "user": self.options.user})
        return super().chat_request(call, route, body)


class Tagging:
    @hookimpl
    def tollway_providers(self):
        return {"tagging": TaggingProvider}


def tagging_config(upstream: str, **options) -> dict:
    config = base_config()
    config["providers"]["tagger"] = {"kind": "tagging", "base_url": upstream, "api_key": "sk-up", **options}
    config["models"]["tagged"] = {"provider": "tagger", "model": "upstream-model", "price": {"input": 1, "output": 1}}
    return config


async def test_providers_adds_an_upstream_kind_with_options(start_gateway, mock_upstream):
    running = await start_gateway(tagging_config(mock_upstream.url, user="team-a"), plugins=[Tagging()])
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k") as client:
        r = await client.chat.completions.create(model="tagged", messages=MESSAGES)
    assert r.choices[0].message.content
    async with aiohttp.ClientSession() as s, s.get(mock_upstream.make_url("/_mock/stats")) as resp:
        sent = (await resp.json())["last_body"]
    assert sent["user"] == "team-a" and sent["model"] == "upstream-model"
    with pytest.raises(ConfigError, match="providers.tagger.colour: unknown key"):
        build_gateway(tagging_config(mock_upstream.url, colour="red"), extra_plugins=[Tagging()])
    with pytest.raises(ConfigError, match="tagging"):  # without the plugin, the kind does not exist
        build_gateway(tagging_config(mock_upstream.url))


class CoolAnthropic(AnthropicDialect):
    """The Messages API, refusing a temperature above 0.5."""

    def validate(self, body):
        super().validate(body)
        if isinstance(body.get("temperature"), (int, float)) and body["temperature"] > 0.5:
            raise ProxyError(400, "temperature: at most 0.5 on this gateway", param="temperature")


class Cool:
    @hookimpl
    def tollway_dialects(self):
        return {"anthropic": CoolAnthropic()}


async def test_dialects_replaces_a_client_dialect(start_gateway):
    running = await start_gateway(base_config(), plugins=[Cool()])
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key="k", max_retries=0) as client:
        ok = await client.messages.create(model="echo", max_tokens=50, messages=MESSAGES,
                                          extra_body={"temperature": 0.2})
        assert ok.content[0].text == "hello there"
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.create(model="echo", max_tokens=50, messages=MESSAGES,
                                         extra_body={"temperature": 0.9})
    assert refused.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                             "message": "temperature: at most 0.5 on this gateway"}}


class Hello:
    """tollway_commands: ``tollway hello --config FILE [--shout]``, on the started gateway."""

    @hookimpl
    def tollway_commands(self, subparsers):
        parser = subparsers.add_parser("hello", help="say hello to the configured models")
        add_config_arg(parser)
        parser.add_argument("--shout", action="store_true")

        async def hello(gateway, args) -> int:
            text = f"hello {', '.join(gateway.config.models)}; store ready: {await gateway.store.ping()}"
            print(text.upper() if args.shout else text)
            return 3

        parser.set_defaults(func=gateway_command(hello))


HELLO = Hello()  # what the entry point names


def test_commands_adds_a_cli_command(tmp_path, monkeypatch, capsys):
    ep = EntryPoint(name="hello", value="test_hooks:HELLO", group="tollway")
    monkeypatch.setattr(plugin_loading, "entry_points", lambda group: [ep] if group == "tollway" else [])
    config = base_config(storage={"url": f"sqlite:///{tmp_path}/t.db"})
    (tmp_path / "tollway.yaml").write_text(yaml.safe_dump(config))
    assert main(["hello", "--config", str(tmp_path / "tollway.yaml"), "--shout"]) == 3
    assert capsys.readouterr().out == "HELLO ECHO; STORE READY: TRUE\n"


# -- request-time hooks --------------------------------------------------------------------

class Aliases:
    """tollway_resolve: ``latest`` is whatever ``echo`` is; other names fall through to routing."""

    def __init__(self) -> None:
        self.gateway = None

    @hookimpl
    def tollway_startup(self, gateway):
        self.gateway = gateway

    @hookimpl
    async def tollway_resolve(self, call):
        if call.model != "latest":
            return None
        model = self.gateway.config.models["echo"]
        return Route(model="echo", upstream_model=model.upstream_model,
                     provider=self.gateway.providers[model.provider], config=model)


async def test_resolve_routes_a_model_the_table_does_not_have(start_gateway):
    running = await start_gateway(base_config(), plugins=[Aliases()])
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k", max_retries=0) as client:
        r = await client.chat.completions.create(model="latest", messages=MESSAGES)
        assert r.choices[0].message.content == "hello there"
        assert (await client.chat.completions.create(model="echo", messages=MESSAGES)).choices
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=MESSAGES)


class Finished:
    """tollway_finish: sees every request once, with its final status, refused or not."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str | None, bool]] = []

    @hookimpl
    async def tollway_admit(self, call):
        if call.body.get("user") == "blocked":
            raise ProxyError(403, "blocked", code="blocked")

    @hookimpl
    async def tollway_finish(self, call):
        self.seen.append((call.endpoint, call.response.status, call.response.error_code,
                          call.timing.ended_at is not None))


async def test_finish_runs_for_every_request_with_its_outcome(start_gateway):
    finished = Finished()
    running = await start_gateway(base_config(), plugins=[finished])
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="echo", messages=MESSAGES)
        stream = await client.chat.completions.create(model="echo", messages=MESSAGES, stream=True)
        assert [c async for c in stream]
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="echo", messages=MESSAGES, user="blocked")
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=MESSAGES)
        await client.models.list()
    async with aiohttp.ClientSession() as s, s.post(f"{running.url}/chat/completions", data=b"{") as r:
        assert r.status == 400
    assert finished.seen == [("chat", 200, None, True), ("chat", 200, None, True), ("chat", 403, "blocked", True),
                             ("chat", 404, "model_not_found", True), ("models", 200, None, True),
                             ("chat", 400, "invalid_json", True)]


class HideInternal:
    """tollway_visible_models: hides models whose name starts with ``internal-``."""

    @hookimpl
    async def tollway_visible_models(self, call, models):
        return [m for m in models if not m.startswith("internal-")]


async def test_visible_models_filters_the_models_list(start_gateway):
    config = base_config()
    config["models"]["internal-eval"] = dict(config["models"]["echo"])
    running = await start_gateway(config, plugins=[HideInternal()])
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k", max_retries=0) as client:
        assert [m.id async for m in client.models.list()] == ["echo"]
        assert (await client.models.retrieve("echo")).id == "echo"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("internal-eval")

"""Helpers for the routing tests: several mock upstreams that fail on command, a config
with deployments over them, a clock the test moves, and calls that say where they went."""

from __future__ import annotations

import aiohttp
import orjson
from conftest import base_config

from benchmarks.mock_upstream import FORCE_KEY, STATS_KEY
from benchmarks.mock_upstream import make_app as make_mock_app

MESSAGES = [{"role": "user", "content": "hello there"}]


class Upstreams:
    """Named mock upstreams: ``fail(name, status=503)``, ``recover(name)``, ``hits(name)``."""

    def __init__(self, servers: dict) -> None:
        self.servers = servers

    def url(self, name: str) -> str:
        return str(self.servers[name].make_url("/v1"))

    def force(self, name: str, **knobs) -> None:
        self.servers[name].app[FORCE_KEY].update(knobs)

    def fail(self, name: str, status: int = 503, **knobs) -> None:
        self.force(name, status=status, **knobs)

    def recover(self, name: str) -> None:
        self.servers[name].app[FORCE_KEY].clear()

    def hits(self, name: str) -> int:
        return self.servers[name].app[STATS_KEY]["requests"]

    def keys(self, name: str) -> dict[str, int]:
        return dict(self.servers[name].app[STATS_KEY]["keys"])

    def all_hits(self) -> dict[str, int]:
        return {name: self.hits(name) for name in self.servers}


async def make_upstreams(aiohttp_server, *names: str) -> Upstreams:
    return Upstreams({name: await aiohttp_server(make_mock_app()) for name in names})


def routing_config(ups: Upstreams, models: dict, routing: dict | None = None, **overrides) -> dict:
    """``base_config`` with one OpenAI-kind provider per upstream (named as the upstream,
    key ``sk-<name>``), the given ``models`` and a ``routing`` section without backoff waits."""
    config = base_config(**overrides)
    for name in ups.servers:
        config["providers"][name] = {"kind": "openai", "base_url": ups.url(name), "api_key": f"sk-{name}",
                                     "timeouts": {"connect": 2, "first_byte": 5, "idle": 5, "total": 10}}
    config["models"].update(models)
    config["routing"] = {"backoff": {"base": 0}, **(routing or {})}
    return config


def deployments(*specs: tuple[str, float] | str) -> list[dict]:
    return [{"provider": s, "model": f"{s}-model"} if isinstance(s, str)
            else {"provider": s[0], "model": f"{s[0]}-model", "weight": s[1]} for s in specs]


class Clock:
    """A clock the test moves: ``clock.advance(seconds)``."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def routing_plugin(running):
    """The gateway's router (tables, deployments, breakers, clock)."""
    from plugins.routing import ROUTER

    return running.gw.services.get(ROUTER)


def use_clock(running) -> Clock:
    clock = Clock()
    routing_plugin(running).clock = clock
    return clock


async def ask(session: aiohttp.ClientSession, running, model: str = "m", headers: dict | None = None,
              **body) -> tuple[int, dict, dict | str]:
    """A chat call: (status, headers, parsed body)."""
    payload = {"model": model, "messages": MESSAGES, **body}
    async with session.post(running.url + "/chat/completions", json=payload, headers=headers or {}) as r:
        raw = await r.read()
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = raw.decode()
        return r.status, dict(r.headers), parsed

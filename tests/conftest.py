"""Shared fixtures: a mock upstream and a real gateway server, both in-process.

``start_gateway(config, plugins=())`` builds the gateway from a config dict
(the YAML's shape), serves it on a free 127.0.0.1 port, and returns a
``Running`` with ``.url`` (the OpenAI base_url, ending in /v1), ``.root``
(without /v1) and ``.gw`` (the Gateway). The server is stopped (and the
gateway flushed) at the end of the test.
"""

from __future__ import annotations

import asyncio
import copy
import io
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from bytecode import keep_bytecode
from hypothesis import HealthCheck, settings
from sdk_clients import close_at_end, record_sdk_clients, sdk_clients_closed  # noqa: F401 (fixtures)

import proxy.logs
from benchmarks.mock_upstream import MockSettings
from benchmarks.mock_upstream import make_app as make_mock_app
from proxy.app import make_app
from proxy.connection import GatewayRunner
from proxy.gateway import Gateway, build_gateway
from proxy.routes import GATEWAY_KEY

keep_bytecode()  # before xdist starts its workers (they inherit the environment)

# Property tests judge answers, never time: hypothesis's default deadline (200 ms an example)
# and its too_slow health check fail on a loaded machine (a train beside benchmarks did).
settings.register_profile("tollway", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tollway")


@dataclass
class Running:
    gw: Gateway
    server: object

    @property
    def root(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def url(self) -> str:
        return self.root + "/v1"

    async def close(self) -> None:
        """Stop this gateway now, as ``start_gateway`` does at the end of the test (it then has
        nothing left to close). A test whose Redis goes away in the test stops it first: a stop
        with charges in Redis's stream waits ``SharedCredit.back_s`` (3 s) for a Redis that is gone."""
        await close_within(self.server, CLOSE_SECONDS)


def base_config(upstream: str | None = None, **overrides) -> dict:
    """A minimal config: model ``echo`` on the built-in mock provider and, when
    ``upstream`` (a base URL ending in /v1) is given, model ``up`` on it."""
    config = {
        "server": {"access_log": "off"},
        "providers": {"local": {"kind": "mock"}},
        "models": {"echo": {"provider": "local", "price": {"input": 1.0, "output": 2.0}}},
        "plugins": {"enabled": []},
    }
    if upstream:
        config["providers"]["up"] = {"kind": "openai", "base_url": upstream, "api_key": "sk-upstream-secret",
                                     "timeouts": {"connect": 2, "first_byte": 2, "idle": 1, "total": 10}}
        config["models"]["up"] = {"provider": "up", "model": "upstream-model",
                                  "price": {"input": 1.0, "output": 2.0}, "context_window": 1000}
    for key, value in overrides.items():
        config[key] = value
    return config


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``early`` first, every other in its order (a stable sort): xdist hands out
    tests in this order, so the long ones run beside the rest instead of last (the workers'
    tests sort last by name), alone on one worker while the other has nothing left. Only
    tests of modules without module-scoped fixtures are marked (moving one out of its module
    would set such a fixture up twice)."""
    items.sort(key=lambda item: item.get_closest_marker("early") is None)


@pytest.fixture(autouse=True)
def fresh_log_throttle(monkeypatch):
    """Each test starts with no rate-limited log line in memory (one test's lines
    must not silence the next one's)."""
    monkeypatch.setattr(proxy.logs, "_default", proxy.logs.LogThrottle())


@pytest.fixture
async def mock_upstream(aiohttp_server):
    """The HTTP mock upstream; ``.url`` is its OpenAI base_url, ``.app`` its app."""
    server = await aiohttp_server(make_mock_app(MockSettings()))
    server.url = str(server.make_url("/v1"))
    return server


@pytest.fixture
def serve_upstream(aiohttp_server):
    """A test's own upstream: ``await serve_upstream({"POST /v1/x": handler, ...})``
    (or an ``app=`` that holds state); the server's ``.url`` is its OpenAI base_url
    (``/v1``), ``.root`` its origin (an Anthropic or Gemini base_url)."""

    async def serve(routes: dict, app: web.Application | None = None) -> TestServer:
        app = web.Application() if app is None else app
        for spec, handler in routes.items():
            method, path = spec.split(" ", 1)
            app.router.add_route(method, path, handler)
        server = await aiohttp_server(app)
        server.url = str(server.make_url("/v1"))
        server.root = str(server.make_url("")).rstrip("/")
        return server

    return serve


class GatewayServer(TestServer):
    """aiohttp's TestServer cancels handlers whose client hung up; ``tollway
    serve`` does not (it keeps reading the upstream to bill it). Serve as production
    does: the same runner, connection class and client timeouts."""

    async def _make_runner(self, **kwargs):
        kwargs["handler_cancellation"] = False
        return GatewayRunner(self.app, timeouts=self.app[GATEWAY_KEY].config.server.timeouts, **kwargs)


@pytest.fixture
async def start_gateway(tmp_path):
    servers = []

    async def start(config: dict, plugins=()) -> Running:
        config = copy.deepcopy(config)
        config.setdefault("storage", {"url": f"sqlite:///{tmp_path}/tollway.db"})
        gw = build_gateway(config, path=tmp_path / "tollway.yaml", extra_plugins=plugins)
        server = GatewayServer(make_app(gw), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return Running(gw, server)

    yield start
    for server in reversed(servers):
        await close_within(server, CLOSE_SECONDS)


CLOSE_SECONDS = 90.0  # aiohttp's own shutdown waits up to 60 s for handlers; then the plugins close


async def close_within(server: TestServer, seconds: float) -> None:
    """Close a gateway, failing (with what every task was doing) if it does not close in
    ``seconds``: a shutdown that hangs must be a failure that names the hang, not a suite that
    never ends."""
    try:
        async with asyncio.timeout(seconds):
            await server.close()
    except TimeoutError:
        stacks = []
        for task in asyncio.all_tasks():
            out = io.StringIO()
            task.print_stack(limit=8, file=out)
            stacks.append(out.getvalue())
        pytest.fail(f"the gateway did not close within {seconds:g} s; its tasks:\n" + "\n".join(stacks))

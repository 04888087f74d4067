"""Gateway: the running whole (config, plugins, providers, dialects, storage).

Built by ``load_gateway`` (from a file) or ``build_gateway`` (from a dict, in
tests); started and stopped by the aiohttp app's lifecycle or by the CLI.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pluggy
from aiohttp import web

from .accesslog import AccessLog
from .config import Config, build_config, read_yaml
from .dialects import CompletionsDialect, Dialect, OpenAIDialect
from .events import Event
from .inflight import InFlight
from .plugins import Hooks, collect, compile_hooks, make_plugin_manager, section_plugins
from .provider import Provider
from .schema import ConfigError
from .shared import Services
from .store import Store, open_store
from .stored_responses import StoredResponses

log = logging.getLogger("tollway")


class Gateway:
    """What plugins receive at start-up: read ``config``, use ``store``,
    find adapters in ``providers`` (by provider name), share objects in
    ``services`` (under a ``proxy.ServiceKey``)."""

    def __init__(self, config: Config, pm: pluggy.PluginManager, hooks: Hooks,
                 providers: dict[str, Provider], dialects: dict[str, Dialect]) -> None:
        self.config = config
        self.pm = pm
        self.hooks = hooks
        self.providers = providers
        self.dialects = dialects
        self.store: Store = open_store(config.storage.url, config.base_dir)
        self.started = False
        self.serving = False  # started to answer requests (not for a CLI command)
        self.ready = False
        self.inflight = InFlight()  # model calls being answered (bounded shutdown)
        self.stored_responses = StoredResponses()  # Responses API objects created through the gateway
        self.access_log: AccessLog | None = None  # set by the server when logging is on
        # Objects plugins share (e.g. the accounts book that auth, quotas and the
        # admin API all use), under typed keys; see proxy/shared.py.
        self.services = Services(self)
        # What /health/ready reports besides storage: name -> an async check (True: ok).
        # A service that the gateway cannot answer without (shared counters) adds itself.
        self.dependencies: dict[str, Callable[[], Awaitable[bool]]] = {}

    async def start(self, *, serving: bool = True) -> None:
        """Open storage, start providers, run ``tollway_startup`` hooks."""
        await self.store.connect()
        self.started = True
        self.serving = serving
        try:
            if serving:
                await self.stored_responses.open(self.store)
                for provider in self.providers.values():
                    await provider.start()
                    if (warning := provider.startup_warning()) is not None:
                        log.warning("%s", warning)
            for impl in self.pm.hook.tollway_startup.get_hookimpls():  # registration order
                result = impl.function(*[self for _ in impl.argnames])
                if inspect.isawaitable(result):
                    await result
        except BaseException:
            # A plugin refused to start (e.g. a ConfigError): let the ones that
            # started stop, and close storage, or its thread keeps the process alive.
            await self.close()
            raise
        self.ready = True

    async def close(self) -> None:
        """Run ``tollway_shutdown`` hooks (flush), close providers and storage."""
        self.ready = False
        if not self.started:
            return
        try:
            for result in self.pm.hook.tollway_shutdown(gateway=self):
                if inspect.isawaitable(result):
                    try:
                        await result
                    except Exception:
                        log.exception("a plugin failed during shutdown")
        finally:
            await self.services.close()
            await asyncio.gather(*(p.close() for p in self.providers.values()), return_exceptions=True)
            await self.stored_responses.close()
            await self.store.close()
            self.started = False

    def emit(self, event: Event) -> None:
        """Tell every plugin about ``event`` (``tollway_event``); returns at once.
        A failing listener is logged, never raised to the emitter."""
        try:
            self.pm.hook.tollway_event(gateway=self, event=event)
        except Exception:
            log.exception("a plugin failed on event %s", event.name)

    async def is_ready(self) -> bool:
        return self.ready and await self.store.ping()

    async def readiness(self) -> dict[str, str]:
        """Each dependency: "ok" or "down" (storage first; then what services added)."""
        out = {"storage": "ok" if await self.store.ping() else "down"}
        for name, check in list(self.dependencies.items()):
            try:
                out[name] = "ok" if await check() else "down"
            except Exception:
                out[name] = "down"
        return out


# The gateway an aiohttp app serves (``make_app`` sets it): how a handler finds it.
GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway")


def load_gateway(path: str | Path, extra_plugins: Iterable[Any] = (),
                 server_overrides: dict[str, Any] | None = None) -> Gateway:
    """Read, validate and wire the config file; raises ConfigError on any mistake.

    ``server_overrides`` (from command-line flags) replace ``server.*`` values
    before validation, so plugins check the values that will really be used.
    """
    raw, unset = read_yaml(path)
    if server_overrides:
        server = raw.get("server")
        if not isinstance(server, dict):
            server = {}
        raw["server"] = {**server, **{k: v for k, v in server_overrides.items() if v is not None}}
    return build_gateway(raw, Path(path).resolve(), extra_plugins, unset)


def build_gateway(raw: dict, path: Path | None = None, extra_plugins: Iterable[Any] = (),
                  unset_env: tuple[str, ...] = ()) -> Gateway:
    plugins_raw = raw.get("plugins") or {}
    enabled = plugins_raw.get("enabled", []) if isinstance(plugins_raw, dict) else []
    if not isinstance(enabled, list):
        raise ConfigError("plugins.enabled: expected a list of plugin names")
    pm = make_plugin_manager([*enabled, *section_plugins(raw, enabled)], extra_plugins)
    schemas = collect(pm.hook.tollway_config_schema())
    kinds: dict[str, type[Provider]] = collect(pm.hook.tollway_providers())
    config = build_config(raw, schemas=schemas, provider_options={k: c.Options for k, c in kinds.items()},
                          path=path, unset_env=unset_env)
    pm.hook.tollway_config_check(config=config)
    dialects: dict[str, Dialect] = {"openai": OpenAIDialect(), "completions": CompletionsDialect(),
                                     **collect(pm.hook.tollway_dialects())}
    providers = {name: kinds[pc.kind](name, pc, pc.options) for name, pc in config.providers.items()}
    return Gateway(config, pm, compile_hooks(pm), providers, dialects)

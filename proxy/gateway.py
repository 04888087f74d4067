"""Gateway: the running whole (config, plugins, providers, dialects, storage).

Built by ``load_gateway`` (from a file) or ``build_gateway`` (from a dict, in
tests); started and stopped by the aiohttp app's lifecycle or by the CLI.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
from aiohttp import web

from .accesslog import AccessLog
from .config import Config, build_config, read_yaml
from .dialects import CompletionsDialect, Dialect, OpenAIDialect
from .events import Event
from .heldwrites import HeldWrites
from .inflight import InFlight
from .plugins import Hooks, collect, compile_hooks, make_plugin_manager, section_plugins
from .provider import Provider
from .schema import ConfigError
from .shared import Services
from .snapshot import Snapshot
from .store import Store, open_store
from .stored_responses import StoredResponses

log = logging.getLogger("tollway")


class Gateway:
    """What plugins receive at start-up: read ``config``, use ``store``,
    find adapters in ``providers`` (by provider name), share objects in
    ``services`` (under a ``proxy.ServiceKey``).

    ``config`` and ``providers`` are those of the current ``snapshot``
    (``proxy/snapshot.py``), which a reload replaces whole; a request keeps
    the snapshot it started with in ``call.snapshot``."""

    def __init__(self, config: Config, pm: pluggy.PluginManager, hooks: Hooks,
                 providers: dict[str, Provider], dialects: dict[str, Dialect]) -> None:
        self.snapshot = Snapshot.make(config, providers)
        self.pm = pm
        self.hooks = hooks
        self.dialects = dialects
        self.store: Store = open_store(config.storage.url, config.base_dir)
        # How the config was read, so a reload reads it the same way (proxy/reload.py).
        self.source: ConfigSource | None = None
        self.retired: list[Provider] = []  # replaced by a reload, closed once no request holds them
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
        # The writes held to the end of the loop's pass (heldwrites.py): made by start(); every
        # provider's upstream pool and the client connections of the server use it.
        self.held_writes: HeldWrites | None = None

    @property
    def config(self) -> Config:
        return self.snapshot.config

    @property
    def providers(self) -> Mapping[str, Provider]:
        return self.snapshot.providers

    async def start(self, *, serving: bool = True) -> None:
        """Open storage, start providers, run ``tollway_startup`` hooks."""
        await self.store.connect()
        self.started = True
        self.serving = serving
        try:
            if serving:
                self.held_writes = HeldWrites(asyncio.get_running_loop(), self.inflight.calls)
                await self.stored_responses.open(self.store)
                for provider in self.providers.values():
                    await self.start_provider(provider)
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

    async def start_provider(self, provider: Provider) -> None:
        """Start ``provider`` (at start, or made by a reload), its upstream writes held with the server's."""
        provider.upstream.held_writes = self.held_writes
        await provider.start()

    async def close(self) -> None:
        """Run ``tollway_shutdown`` hooks (flush), close providers and storage."""
        self.ready = False
        if self.held_writes is not None:
            self.held_writes.flush()  # (the loop may not run another pass)
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
            providers, self.retired = [*self.providers.values(), *self.retired], []
            await asyncio.gather(*(p.close() for p in providers), return_exceptions=True)
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


@dataclass(frozen=True)
class ConfigSource:
    """Where a gateway's config came from: the file and the command line's ``server.*`` overrides."""

    path: Path
    server_overrides: dict[str, Any] = field(default_factory=dict)

    def read(self) -> tuple[dict, tuple[str, ...]]:
        """The file, parsed and interpolated, with the overrides applied; ConfigError on any mistake."""
        raw, unset = read_yaml(self.path)
        overrides = {k: v for k, v in self.server_overrides.items() if v is not None}
        if overrides:
            server = raw.get("server")
            if not isinstance(server, dict):
                server = {}
            raw["server"] = {**server, **overrides}
        return raw, unset


def load_gateway(path: str | Path, extra_plugins: Iterable[Any] = (),
                 server_overrides: dict[str, Any] | None = None) -> Gateway:
    """Read, validate and wire the config file; raises ConfigError on any mistake.

    ``server_overrides`` (from command-line flags) replace ``server.*`` values
    before validation, so plugins check the values that will really be used.
    """
    source = ConfigSource(Path(path).resolve(), dict(server_overrides or {}))
    raw, unset = source.read()
    gateway = build_gateway(raw, source.path, extra_plugins, unset)
    gateway.source = source
    return gateway


def build_gateway(raw: dict, path: Path | None = None, extra_plugins: Iterable[Any] = (),
                  unset_env: tuple[str, ...] = ()) -> Gateway:
    plugins_raw = raw.get("plugins") or {}
    enabled = plugins_raw.get("enabled", []) if isinstance(plugins_raw, dict) else []
    if not isinstance(enabled, list):
        raise ConfigError("plugins.enabled: expected a list of plugin names")
    pm = make_plugin_manager([*enabled, *section_plugins(raw, enabled)], extra_plugins)
    config = configure(pm, raw, path, unset_env)
    dialects: dict[str, Dialect] = {"openai": OpenAIDialect(), "completions": CompletionsDialect(),
                                     **collect(pm.hook.tollway_dialects())}
    return Gateway(config, pm, compile_hooks(pm), make_providers(pm, config), dialects)


def configure(pm: pluggy.PluginManager, raw: dict, path: Path | None = None,
              unset_env: tuple[str, ...] = ()) -> Config:
    """Validate ``raw`` (parsed YAML) into a Config for the plugins of ``pm``: the
    core's checks, the plugins' sections and their ``tollway_config_check``."""
    schemas = collect(pm.hook.tollway_config_schema())
    kinds = provider_kinds(pm)
    config = build_config(raw, schemas=schemas, provider_options={k: c.Options for k, c in kinds.items()},
                          path=path, unset_env=unset_env)
    pm.hook.tollway_config_check(config=config)
    return config


def provider_kinds(pm: pluggy.PluginManager) -> dict[str, type[Provider]]:
    kinds: dict[str, type[Provider]] = collect(pm.hook.tollway_providers())
    return kinds


def make_providers(pm: pluggy.PluginManager, config: Config, keep: Mapping[str, Provider] | None = None
                   ) -> dict[str, Provider]:
    """An adapter per configured provider; one in ``keep`` whose config is unchanged is used again
    (with its open connections)."""
    kinds = provider_kinds(pm)
    out: dict[str, Provider] = {}
    for name, pc in config.providers.items():
        old = (keep or {}).get(name)
        out[name] = old if old is not None and old.config == pc else kinds[pc.kind](name, pc, pc.options)
    return out

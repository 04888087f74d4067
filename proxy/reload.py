"""Hot reload: read the YAML again and swap in a new snapshot, or refuse and keep the old one.

Triggered by SIGHUP, ``POST /admin/reload`` and ``tollway reload``. The new
file goes through the same checks as ``tollway check`` (a mistake is refused
with the same path-named line); what a running gateway cannot change (the
listening socket, workers, storage, the set of plugins: ``snapshot.py``'s
``RESTART_ONLY``, and a plugin section whose plugin has no
``tollway_reload``) is refused naming each path. Otherwise:

1. provider adapters are made for new or changed ``providers:`` entries (an
   unchanged one is kept, with its connections) and started;
2. every plugin's ``tollway_reload(gateway, snapshot)`` prepares what it derives
   from the config (routes, prices, keys...) and may still refuse;
3. the gateway swaps in the new ``Snapshot`` and runs each plugin's apply, all
   in one step of the event loop (no request sees half of it);
4. the plugins' follow-up work runs (e.g. the YAML keys written to the store);
5. adapters no longer configured are closed once no request that started
   before the swap is still running (``call.snapshot`` is older).

Requests in flight keep the snapshot they started with (``call.snapshot``),
so a stream finishes at the price it started at. With ``--workers N`` the
parent passes SIGHUP on to every worker, and a worker that was asked by
``POST /admin/reload`` sends SIGHUP to the parent so the others follow.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .adminauth import check_admin
from .errors import ProxyError
from .schema import ConfigError, RestartRequired
from .snapshot import RELOADABLE_SERVER, RESTART_ONLY, Snapshot, config_changes

if TYPE_CHECKING:
    from .gateway import Gateway
    from .provider import Provider

log = logging.getLogger("tollway")

__all__ = ["RELOADER_KEY", "ReloadRefused", "ReloadResult", "Reloader", "listen_for_sighup", "plugins_turned_on",
           "restart_needed"]

RETIRE_POLL_S = 0.5  # how often a retired adapter looks for the last request that may use it


ReloadRefused = RestartRequired  # the new config is valid but changes what only a restart can change


@dataclass(frozen=True)
class ReloadResult:
    version: int  # the snapshot now serving
    changed: tuple[str, ...] = ()  # the dotted paths that changed (empty: the file was as before)
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, Any]:
        return {"status": "reloaded" if self.changed else "unchanged", "version": self.version,
                "changed": list(self.changed), "warnings": list(self.warnings)}


def restart_needed(gateway: Gateway, changes: list[str]) -> list[str]:
    """The changed paths a running gateway cannot take: the core's own, and plugin
    sections whose plugin does not implement ``tollway_reload``."""
    reloading = {id(impl.plugin) for impl in gateway.pm.hook.tollway_reload.get_hookimpls()}
    fixed: list[str] = []  # plugin sections that only a restart re-reads
    for impl in gateway.pm.hook.tollway_config_schema.get_hookimpls():
        if id(impl.plugin) not in reloading:
            declared = impl.function()
            if isinstance(declared, dict):
                fixed.extend(declared)
    out = []
    for path in changes:
        top, _, rest = path.partition(".")
        if (top == "server" and rest.split(".")[0] not in RELOADABLE_SERVER
                or any(path == p or path.startswith(p + ".") for p in (*RESTART_ONLY, *fixed))):
            out.append(path)
    return out


def plugins_turned_on(gateway: Gateway, raw: dict) -> list[str]:
    """The sections of a new file that would turn on a built-in plugin not loaded now
    (``metrics:``, ``alerts:``): the plugin manager is made at start-up."""
    from .plugins import section_plugins

    plugins = raw.get("plugins")
    enabled = plugins.get("enabled") if isinstance(plugins, dict) else None
    listed = enabled if isinstance(enabled, list) else []
    return [name for name in section_plugins(raw, listed) if not gateway.pm.has_plugin(f"builtin:{name}")]


class Reloader:
    """One per gateway: reloads one at a time; the current version is ``gateway.snapshot``."""

    def __init__(self, gateway: Gateway, workers_parent: int | None = None) -> None:
        self.gateway = gateway
        self.workers_parent = workers_parent  # the pid to tell (SIGHUP) when this worker reloads
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()

    async def reload(self) -> ReloadResult:
        """Read the config file again and apply it; ConfigError (the old config stays) when it cannot be."""
        gateway = self.gateway
        if gateway.source is None:
            raise ConfigError("this gateway was not started from a config file; there is nothing to read again")
        async with self._lock:
            raw, unset = await asyncio.to_thread(gateway.source.read)
            return await self.apply(raw, unset)

    async def apply(self, raw: dict, unset_env: tuple[str, ...] = ()) -> ReloadResult:
        from .gateway import configure, make_providers

        gateway = self.gateway
        old = gateway.snapshot
        if added := plugins_turned_on(gateway, raw):
            raise ReloadRefused(f"{', '.join(added)}: a new section that turns on its plugin; loading "
                                f"{'it needs' if len(added) == 1 else 'they need'} a restart of tollway serve "
                                "(nothing was reloaded; the running config stays)")
        config = configure(gateway.pm, raw, old.config.path, unset_env)
        changes = config_changes(old.config, config)
        if not changes:
            return ReloadResult(old.version)
        if fixed := restart_needed(gateway, changes):
            raise ReloadRefused(f"{', '.join(fixed)}: changing {'this needs' if len(fixed) == 1 else 'these need'} "
                                "a restart of tollway serve (nothing was reloaded; the running config stays)")
        providers = make_providers(gateway.pm, config, keep=old.providers)
        fresh = [p for name, p in providers.items() if old.providers.get(name) is not p]
        snapshot = Snapshot.make(config, providers, old.version + 1)
        try:
            for provider in fresh:
                await gateway.start_provider(provider)
            applies = [a for a in gateway.pm.hook.tollway_reload(gateway=gateway, snapshot=snapshot) if a]
        except BaseException:
            await asyncio.gather(*(p.close() for p in fresh), return_exceptions=True)
            raise
        # The swap: no await from here to the last apply, so no request sees half of it.
        gateway.snapshot = snapshot
        follow_ups = [r for r in (apply() for apply in reversed(applies)) if inspect.isawaitable(r)]
        warnings = []
        for follow_up in follow_ups:
            try:
                await follow_up
            except Exception as exc:
                log.exception("a plugin failed to finish the reload")
                warnings.append(f"a plugin failed to finish the reload: {exc}")
        for provider in fresh:
            if (warning := provider.startup_warning()) is not None:
                warnings.append(warning)
        self._retire([p for name, p in old.providers.items() if providers.get(name) is not p], snapshot.version)
        log.warning("config reloaded (version %d): %s", snapshot.version, ", ".join(changes))
        return ReloadResult(snapshot.version, tuple(changes), tuple(warnings))

    def _retire(self, providers: list[Provider], version: int) -> None:
        """Close adapters no longer configured once no request from an older snapshot runs."""
        if not providers:
            return
        self.gateway.retired.extend(providers)
        task = asyncio.get_running_loop().create_task(self._close_when_unused(providers, version))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_when_unused(self, providers: list[Provider], version: int) -> None:
        gateway = self.gateway
        while any(c.snapshot is not None and c.snapshot.version < version for c in gateway.inflight.calls.values()):
            await asyncio.sleep(RETIRE_POLL_S)
        for provider in providers:
            if provider in gateway.retired:
                gateway.retired.remove(provider)
                try:
                    await provider.close()
                except Exception:
                    log.exception("provider %s failed to close", provider.name)

    # -- the triggers ---------------------------------------------------------------------
    async def on_signal(self, quiet: bool = False) -> None:
        """SIGHUP: reload, and say how it went in the log (there is no one else to tell);
        ``quiet``: not that the file is unchanged."""
        try:
            result = await self.reload()
        except ConfigError as exc:
            log.error("reload refused: %s: %s", exc.label, exc)
            return
        except Exception:
            log.exception("reload failed; the running config stays")
            return
        if not result.changed and not quiet:
            log.warning("reload: the config file has not changed (version %d)", result.version)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/admin/reload", self.handle)]

    async def handle(self, request: web.Request) -> web.Response:
        """``POST /admin/reload``: 200 with what changed; 400 (a mistake) or 409 (needs a
        restart) with the same line ``tollway check`` prints; the old config stays."""
        from .routes import json_response

        check_admin(self.gateway, request)
        try:
            result = await self.reload()
        except ReloadRefused as exc:
            raise ProxyError(409, f"{exc.label}: {exc}", code="restart_required") from None
        except ConfigError as exc:
            raise ProxyError(400, f"{exc.label}: {exc}; the running config stays",
                             code="invalid_config") from None
        if result.changed and self.workers_parent is not None:
            os.kill(self.workers_parent, signal.SIGHUP)  # the other workers follow (this one: unchanged)
        return json_response(result.as_json())


def listen_for_sighup(reloader: Reloader) -> Callable[[], None]:
    """Reload on SIGHUP (one at a time, in the background); returns what stops listening."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    listening = True

    def on_hup() -> None:
        if not listening:
            return
        task = loop.create_task(reloader.on_signal())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)

    def stop() -> None:
        # The handler stays, ignoring: removing it would restore SIGHUP's default action,
        # which ends the process (a reload asked for while stopping would kill it).
        nonlocal listening
        listening = False

    return stop


# The app's reloader (``make_app`` sets it): how ``tollway serve`` finds it for SIGHUP.
RELOADER_KEY: web.AppKey[Reloader] = web.AppKey("reloader")


def ask_to_reload(config_path: str, url: str | None = None) -> int:
    """``tollway reload``: ask the server the file describes (``server.host``/``port``,
    ``server.admin_key``) to read it again; print what it said. Exit 0 when reloaded
    (or unchanged), 2 when refused, 1 when the server cannot be reached."""
    import sys
    import urllib.error
    import urllib.request

    import orjson

    from .config import read_yaml

    raw, _ = read_yaml(config_path)  # a file that does not parse: ConfigError, printed as tollway check does
    found = raw.get("server")
    server: dict[str, Any] = found if isinstance(found, dict) else {}
    admin = str(server.get("admin_key") or "")
    if not admin:
        print("tollway: reload needs server.admin_key in the config (the admin API is off without it); "
              "or send SIGHUP to the tollway serve process", file=sys.stderr)
        return 2
    if url is None:
        host = str(server.get("host") or "127.0.0.1")
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        url = f"http://{host}:{server.get('port') or 8080}"
    request = urllib.request.Request(url.rstrip("/") + "/admin/reload", data=b"{}", method="POST",
                                     headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read())["error"]["message"]
        except Exception:
            message = f"HTTP {exc.code}"
        print(f"tollway: reload refused: {message}", file=sys.stderr)
        return 2
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"tollway: cannot reach the server at {url}: {reason} (is tollway serve running? --url says where)",
              file=sys.stderr)
        return 1
    if body.get("status") == "unchanged":
        print(f"tollway: the config file has not changed (version {body.get('version')})")
    else:
        print(f"tollway: reloaded (version {body.get('version')}): {', '.join(body.get('changed') or ())}")
    for warning in body.get("warnings") or ():
        print(f"warning: {warning}", file=sys.stderr)
    return 0

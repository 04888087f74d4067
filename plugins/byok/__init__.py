"""BYOK: a key or a credit account brings its own upstream API keys, per provider.

Stored sealed (AES-256-GCM, ``sealing.py``) with a master secret from the
environment, shown never again (only a hint like ``...abcd``, its last 4 characters), never logged.
Registered through the admin API (``admin.py``) or ``tollway byok`` (``cli.py``).

At request time (``tollway_admit``, first) the caller's own keys go in
``call.state[proxy.provider.CALLER_KEYS]``: the core sends a request to a
provider the caller has a key for with that key instead of the operator's, and
marks ``call.billing.caller_key``, so the pricing and quotas plugins bill the
model's ``price.byok`` (USD per 1M tokens, or ``{multiplier: M}`` of the list
price) instead of its list price; a model without ``price.byok`` bills its list price (a
relay is never free by omission). The ledger row says so (``byok`` = 1). An upstream that
refuses the caller's key answers 401 ``upstream_key_rejected`` to that caller
(their key, not the operator's, is wrong), without the key or the upstream's words.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass

from proxy import Call, ConfigError, Gateway, ServiceKey, hookimpl
from proxy.background import stop_task
from proxy.provider import CALLER_KEYS

from ..accounts import KeyRecord
from .admin import AdminUpstreamKeys
from .sealing import MIN_SECRET, Sealer
from .vault import Vault

__all__ = ["VAULT", "ByokOptions", "Plugin"]

log = logging.getLogger("tollway")


@dataclass(frozen=True)
class ByokOptions:
    secret_env: str = "TOLLWAY_BYOK_SECRET"  # the environment variable holding the master secret
    poll_ms: int = 1000  # how often a server looks for changes made by the CLI


class ServedVault(Vault):
    """The vault with its poll task (a serving gateway's)."""

    poller: asyncio.Task | None = None

    async def close(self) -> None:
        await stop_task(self.poller)


async def open_vault(gateway: Gateway) -> ServedVault:
    options: ByokOptions = gateway.config.section("plugins.byok") or ByokOptions()
    secret = os.environ.get(options.secret_env, "")
    if len(secret) < MIN_SECRET:
        state = "is not set" if not secret else f"has {len(secret)} characters"
        raise ConfigError(f"plugins.byok.secret_env: ${options.secret_env} {state}; the byok plugin seals "
                          f"customers' upstream keys with it: set it to a random secret of at least {MIN_SECRET} "
                          "characters (e.g. openssl rand -base64 48) and keep it: the stored keys open only with it")
    vault = ServedVault(gateway.store, Sealer(secret))
    await vault.open()
    if gateway.serving:
        vault.poller = asyncio.get_running_loop().create_task(_poll(vault, options.poll_ms / 1000))
    return vault


async def _poll(vault: Vault, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await vault.poll()
        except Exception:
            log.exception("byok: reading the upstream keys failed; the ones loaded stay in use")


VAULT: ServiceKey[ServedVault] = ServiceKey("byok.vault", open_vault)


class Plugin:
    def __init__(self) -> None:
        self.vault: Vault | None = None

    @hookimpl
    def tollway_config_schema(self) -> dict:
        return {"plugins.byok": ByokOptions}

    @hookimpl
    def tollway_config_check(self, config) -> None:
        if "auth" not in config.plugins.enabled:
            raise ConfigError("plugins.enabled: byok keeps upstream keys per API key and account: "
                              "enable 'auth' too")
        options = config.section("plugins.byok") or ByokOptions()
        if options.poll_ms < 10:
            raise ConfigError("plugins.byok.poll_ms: must be at least 10")

    @hookimpl
    def tollway_startup(self, gateway: Gateway):
        return self._start(gateway)

    async def _start(self, gateway: Gateway) -> None:
        self.vault = await gateway.services.open(VAULT)

    @hookimpl(tryfirst=True)
    async def tollway_admit(self, call: Call) -> None:
        key = call.principal
        if isinstance(key, KeyRecord):
            own = self.vault.own_keys(key.id, key.account_id)
            if own is not None:
                call.state[CALLER_KEYS] = own

    @hookimpl
    def tollway_routes(self, gateway: Gateway) -> list:
        handlers = AdminUpstreamKeys(gateway, lambda: self.vault)
        return handlers.routes()

    @hookimpl
    def tollway_commands(self, subparsers: argparse._SubParsersAction) -> None:
        from .cli import add_byok_command

        add_byok_command(subparsers)

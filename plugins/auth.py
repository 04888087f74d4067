"""Auth: API keys. Who is calling, which models they may use.

A key is read from ``Authorization: Bearer KEY``, ``X-API-Key: KEY`` (what
Anthropic clients send as ``x-api-key``) or ``?api_key=KEY``. Missing,
unknown, revoked, disabled or expired: 401 with an OpenAI-shaped body that
says which. The principal is the key's ``KeyRecord``.

Keys come from the YAML ``keys:`` list and from the admin API / CLI; they
live side by side in the store (hashed, never the key itself) and in memory.
A model outside the key's ``models`` allowlist is a 403 (checked before
routing, so it also hides whether the model exists), and ``GET /v1/models``
lists only the allowed ones. Also serves the admin API for keys and the
``tollway keys`` CLI.
"""

from __future__ import annotations

import argparse

from proxy import Call, Gateway, ProxyError, Snapshot, hookimpl

from .accounts import ACCOUNTS, Accounts, KeyRecord
from .accounts.admin import AdminKeys
from .accounts.checks import check_config
from .accounts.http import authenticate
from .accounts.keys import key_from_request
from .accounts.options import AuthOptions, KeyConfig


class Plugin:
    def __init__(self) -> None:
        self.accounts: Accounts | None = None
        self.public_catalog = False

    @hookimpl
    def tollway_config_check(self, config) -> None:
        check_config(config)

    @hookimpl
    def tollway_config_schema(self) -> dict:
        return {"keys": list[KeyConfig] | None, "plugins.auth": AuthOptions}

    @hookimpl
    def tollway_startup(self, gateway: Gateway):
        return self._start(gateway)

    async def _start(self, gateway: Gateway) -> None:
        self.accounts = await gateway.services.open(ACCOUNTS)
        self.public_catalog = gateway.config.catalog.public

    @hookimpl
    def tollway_reload(self, snapshot: Snapshot):
        """The YAML ``keys:`` (already checked with the config) and ``plugins.auth``: written to
        the store and loaded once the new config is in place; until then the old keys answer."""
        accounts = self.accounts
        public = snapshot.config.catalog.public

        def apply():
            self.public_catalog = public
            return accounts.config_reloaded() if accounts is not None else None

        return apply

    @hookimpl
    def tollway_authenticate(self, call: Call) -> KeyRecord | None:
        if self.public_catalog and call.endpoint == "models" and key_from_request(call.request) is None:
            return None  # catalog.public: the model list answers without a key (every model)
        return authenticate(self.accounts, call.request)

    @hookimpl(tryfirst=True)
    def tollway_resolve(self, call: Call) -> None:
        """Refuse a model outside the key's allowlist before any routing."""
        key = call.principal
        if isinstance(key, KeyRecord) and key.models is not None and call.model not in key.models:
            raise ProxyError(403, f"this API key may not use model {call.model!r}; GET /v1/models lists the "
                                  "models it may use", param="model", code="model_not_allowed")
        return None

    @hookimpl
    async def tollway_visible_models(self, call: Call, models: list[str]) -> list[str] | None:
        key = call.principal
        if not isinstance(key, KeyRecord) or key.models is None:
            return None
        return [m for m in models if m in key.models]

    @hookimpl
    def tollway_routes(self, gateway: Gateway) -> list:
        return AdminKeys(gateway).routes()

    @hookimpl
    def tollway_commands(self, subparsers: argparse._SubParsersAction) -> None:
        from .accounts.accounts_cli import add_accounts_command
        from .accounts.cli import add_keys_command

        add_keys_command(subparsers)
        add_accounts_command(subparsers)

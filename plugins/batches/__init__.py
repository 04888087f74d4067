"""Batches: OpenAI's Batch API run by the gateway itself, against any provider, at
``price.batch_multiplier`` (default 0.5) of the interactive price.

Routes (the official SDK's ``files`` and ``batches``): ``POST /v1/files`` (multipart,
``purpose=batch``, a JSONL file), ``GET /v1/files`` (the key's account's uploads),
``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``
(the input, or a batch's output and error files), ``POST /v1/batches``,
``GET /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.

At creation every line is checked on its own (a malformed line becomes an error
line, see ``lines.py``) and the worst case of the whole batch (each line's
reservation, at the batch price) must be covered by the key's account, else 402.
Lines then run in the background (``runner.py``), each a ledger row, exactly once
across restarts. Files, batches and lines live in the store (SQLite or PostgreSQL).

Options (``plugins.batches``): ``concurrency`` (lines at once, default 2),
``interactive_priority`` (lines wait while this many interactive calls are in
flight, default 8), ``max_lines`` (default 50,000), ``poll_seconds``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from proxy import Call, ConfigError, Gateway, Route, hookimpl
from proxy.background import stop_task
from proxy.store import migrate

from ..accounts import ACCOUNTS
from .api import BatchRoutes
from .db import MIGRATIONS
from .runner import BATCH_LINE, Runner, forgo_charge, store_answer


@dataclass(frozen=True)
class BatchesOptions:
    concurrency: int = 2
    interactive_priority: int = 8
    max_lines: int = 50_000
    poll_seconds: float = 1.0


class Plugin:
    def __init__(self) -> None:
        self.gateway: Gateway | None = None
        self.runner: Runner | None = None
        self.task: asyncio.Task | None = None
        self.routes = BatchRoutes()

    @hookimpl
    def tollway_config_schema(self) -> dict:
        return {"plugins.batches": BatchesOptions}

    @hookimpl
    def tollway_config_check(self, config) -> None:
        options = config.section("plugins.batches") or BatchesOptions()
        if options.concurrency < 1 or options.max_lines < 1 or options.interactive_priority < 1:
            raise ConfigError("plugins.batches: concurrency, max_lines and interactive_priority must be at least 1")

    @hookimpl
    def tollway_startup(self, gateway: Gateway):
        return self._start(gateway)

    async def _start(self, gateway: Gateway) -> None:
        self.gateway = gateway
        order = [impl.plugin_name for impl in reversed(gateway.pm.hook.tollway_settle.get_hookimpls())]
        if "builtin:quotas" in order and "builtin:batches" in order and \
                order.index("builtin:quotas") < order.index("builtin:batches"):
            raise ConfigError("plugins.enabled: list batches after quotas (a batch line's answer is stored before "
                              "its charge, so a crash never charges a line twice)")
        await migrate(gateway.store, "batches", MIGRATIONS)
        accounts = gateway.services.get(ACCOUNTS)
        if accounts is None and any(p in gateway.config.plugins.enabled for p in ("auth", "quotas", "ledger")):
            accounts = await gateway.services.open(ACCOUNTS)
        options = gateway.config.section("plugins.batches") or BatchesOptions()
        self.runner = Runner(gateway, accounts, options)
        self.routes.attach(gateway, accounts, self.runner, options)
        if gateway.serving:
            await self.runner.lead()  # (the first instance of a fleet: the others take over if it ends)
            self.task = asyncio.get_running_loop().create_task(self.runner.run(), name="tollway-batches")

    @hookimpl
    def tollway_shutdown(self, gateway: Gateway):
        return stop_task(self.task)

    @hookimpl(tryfirst=True)
    async def tollway_admit(self, call: Call) -> None:
        # A batch line pays the batch share of the price of the model that serves it (a group
        # or auto names others), known before the quotas plugin holds its worst case.
        if BATCH_LINE in call.state and call.route is not None:
            call.billing.price_multiplier = call.route.config.price.batch_multiplier

    @hookimpl(tryfirst=True)
    async def tollway_reroute(self, call: Call, previous: Route) -> None:
        await self.tollway_admit(call)  # a fallback's own batch share, before its hold is grown

    @hookimpl(tryfirst=True)
    async def tollway_settle(self, call) -> None:
        # Before the quotas plugin charges the line (its settle runs after this one): the
        # answer is stored first, so a crash can lose a charge (recovered at start) but
        # never store a charge without its answer. A run whose answer another run stored
        # first (around a change of the instance running batches) is not charged at all.
        if BATCH_LINE in call.state and call.response.status != 429 and self.gateway is not None \
                and not await store_answer(self.gateway, call):
            forgo_charge(call, self.runner.accounts if self.runner is not None else None)

    @hookimpl
    def tollway_routes(self, gateway: Gateway) -> list:
        return self.routes.routes()

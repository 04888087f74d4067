"""Pricing: the exact cost of each answer, told to the client.

Implements ``tollway_usage``: from the upstream's usage and the served
model's ``price`` (USD per 1M input, output and cached-input tokens; cached
input defaults to input) it sets ``call.billing.cost_micro`` (integer micro-USD,
rounded UP to the micro-USD), adds ``cost`` (USD) to the usage object the
client sees (JSON ``usage.cost``; on streams the final usage chunk, when the
client asked for usage) and, on non-stream answers, the ``x-tollway-cost``
header (USD, six decimals). ``call.billing.price_multiplier`` (e.g. set by the cache
on a hit) scales the cost. Cost = uncached prompt x input + cached x
cached_input + completion x output, computed in integers (see
``plugins/accounts/money.py``).
"""

from __future__ import annotations

from proxy import Call, hookimpl
from proxy.gateway import Gateway

from .accounts.money import PriceBook, format_usd


class Plugin:
    def __init__(self) -> None:
        self.prices: PriceBook | None = None

    @hookimpl
    def tollway_startup(self, gateway: Gateway) -> None:
        self.prices = PriceBook(gateway.config.models)

    @hookimpl
    async def tollway_usage(self, call: Call) -> None:
        usage = call.billing.usage
        if usage is None or call.route is None:
            return
        cost = self.prices.cost_of(call)
        call.billing.cost_micro = cost
        call.billing.usage_extra["cost"] = cost / 1_000_000
        if not call.stream:
            call.response.headers["x-tollway-cost"] = format_usd(cost)

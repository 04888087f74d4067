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

When the upstream never said what an answer used (a stream cut, timed
out, or left by its client before the usage event; an upstream that sends
no usage), the output that went out is counted (``counted_usage``: a
tokenizer over the output actually produced, capped by what was reserved),
priced the same way, told to the client the same way, and marked
``billing.usage_estimated`` (the ledger's ``estimated`` column). If counting
fails (a tokenizer error, text it cannot read), the bytes are counted instead
(``byte_usage``: four a token, capped the same way), still marked estimated.
A usage that names the prompt count but no output count (``Usage.completion_unknown``)
is counted the same way for its output, with the upstream's prompt counts kept; with
no output to count it costs that prompt (and the output floor it named), estimated.
One that names the output count but no prompt count (``Usage.prompt_unknown``) keeps
the output count and counts the request's prompt, estimated.
Output that went to a client is never free; nor is the prompt of an answer the upstream
finished with no output and no usage (its counted prompt is billed, estimated: see
``accounts/estimate.py`` for what stays free).

Images, speech and transcriptions are priced by the unit where the model's
``price`` names it (``images``, ``characters``, ``audio_minute``: see
``accounts/units.py``), else by the tokens the upstream reports. When such a
model priced by tokens (gpt-4o-transcribe, gpt-image-1, gpt-4o-mini-tts)
answers without ``usage``, the gateway has nothing to count its input with
(audio, images), so the answer is billed the tokens its reservation is made
of: the request's prompt bound (a token a byte of the upload, at most the
model's ``context_window``) and its output bound (``max_tokens``, else the
model's ``max_output_tokens``, else ``plugins.quotas.default_max_tokens``),
but a transcript's output, its text, is counted (capped by that bound:
``estimate.unit_output``); marked estimated: with the quotas plugin or without
it, the same amount. A usage there without an output count bills the output the
same way, with the upstream's input count.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import replace

from proxy import Call, Gateway, Snapshot, Usage, hookimpl
from proxy.logs import throttled

from .accounts.estimate import byte_usage, counted_prompt, counted_usage, prompt_bound, unit_output
from .accounts.money import MICRO, PriceBook, multiplier_ppm, tell_cost
from .accounts.options import QuotasOptions
from .accounts.tokens import preload
from .accounts.units import AUDIO_ENDPOINTS, billed_seconds, unit_cost

log = logging.getLogger("tollway.pricing")


class Plugin:
    def __init__(self) -> None:
        self.prices: PriceBook | None = None
        self.gateway: Gateway | None = None
        self.default_cap = 4096

    @hookimpl
    def tollway_startup(self, gateway: Gateway):
        self.gateway = gateway
        billing = gateway.config.section("billing")  # declared by quotas; absent: USD
        self.prices = PriceBook(gateway.config.models, billing.usd_rate if billing is not None else 1.0)
        self.default_cap = (gateway.config.section("plugins.quotas") or QuotasOptions()).default_max_tokens
        return preload() if gateway.serving else None  # the tokenizer, in a thread: ready before it is needed

    @hookimpl
    def tollway_reload(self, snapshot: Snapshot):
        billing = snapshot.config.section("billing")  # declared by quotas; absent: USD
        prices = PriceBook(snapshot.config.models, billing.usd_rate if billing is not None else 1.0)
        default_cap = (snapshot.config.section("plugins.quotas") or QuotasOptions()).default_max_tokens

        def apply() -> None:
            self.prices, self.default_cap = prices, default_cap

        return apply

    @hookimpl
    def tollway_usage(self, call: Call) -> Awaitable[None] | None:
        billing = call.billing
        if call.route is None:
            return None
        cost = None
        if billing.units is not None:  # images, speech, transcriptions: by the unit where the model says so
            ppm = MICRO if billing.price_multiplier == 1.0 else multiplier_ppm(billing.price_multiplier)
            cost = unit_cost(call, self.prices.of(call.route, call.billing.caller_key), ppm)
            if cost is not None and call.endpoint in AUDIO_ENDPOINTS:  # the ledger's audio_ms: the length billed
                billing.units.audio_seconds = billed_seconds(call)
        if cost is None:
            told = billing.usage
            if told is None or told.completion_unknown or told.prompt_unknown:
                return self._count_and_price(call, told)  # (the rare answer without usage: it awaits)
            cost = self.prices.cost_of(call)
        tell_cost(call, cost)
        return None

    async def _count_and_price(self, call: Call, told: Usage | None) -> None:
        await self._count(call, told)
        if call.billing.usage is not None:
            tell_cost(call, self.prices.cost_of(call))

    async def _count(self, call: Call, told: Usage | None) -> None:
        """The gateway's count of what the upstream did not say (its usage, its output count:
        ``told.completion_unknown``, or its prompt count: ``told.prompt_unknown``), set as
        ``billing.usage``, marked estimated; left None when there is nothing to bill."""
        billing = call.billing
        if told is not None and told.prompt_unknown:
            # The upstream's output count and no prompt count: the request's prompt is counted.
            prompt = max(await counted_prompt(call), told.prompt_tokens)
            billing.usage = replace(told, prompt_tokens=prompt, prompt_unknown=False)
        elif billing.units is not None:
            # A unit endpoint on a model priced by tokens, answered without usage (or without its
            # output count): its input cannot be counted (audio, images), so it costs its bound,
            # what quotas reserved for it (the upstream's prompt count, when told); its output, its
            # bound too, but for a transcript's text, counted (``unit_output``).
            throttled(log, logging.WARNING, f"unit_usage:{call.model}", "model %r answered %s without usage: "
                      "billed its bounds as estimated tokens (price it per unit to bill less)", call.model,
                      call.endpoint)
            bound = prompt_bound(call)
            billing.usage = Usage(prompt_tokens=min(told.prompt_tokens, bound) if told is not None else bound,
                                  completion_tokens=await unit_output(call, self.default_cap),
                                  cached_tokens=told.cached_tokens if told is not None else 0)
        else:
            if told is not None:  # the prompt's counts, kept: only the output is counted
                billing.partial_usage, billing.usage = told, None
            try:
                billing.usage = await counted_usage(call, self.gateway.dialects[call.dialect], self.default_cap)
            except Exception:  # a count that fails must not make output free
                throttled(log, logging.ERROR, "counted_usage_failed", "counting usage failed; billed on bytes",
                          exc_info=True)
                billing.usage = byte_usage(call, self.default_cap)
            if billing.usage is None:
                if told is None:
                    return  # no output went out, and nothing was said: nothing to bill
                # Nothing went out to count: the upstream's prompt and output floor, as it said them.
                billing.usage = replace(told, completion_unknown=False)
        billing.usage_estimated = True
        billing.usage_extra["estimated"] = True

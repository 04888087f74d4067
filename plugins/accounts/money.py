"""Money: integers in micro-units, exact prices, cost rounded up to the micro-unit.

The unit is a millionth of ``billing.currency`` (USD unless the operator
sells in another currency; the ``*_micro_usd`` names of columns and fields
are kept for compatibility and hold micro-units of that currency). Model
prices are USD and are converted at the fixed ``billing.usd_rate``, exactly.

A price in USD per 1M tokens is, numerically, micro-USD per token. Prices are
held as integers in femto-USD per token (``price * 10**9``), so a cost is
``ceil(sum(tokens * price_f) / 10**9)`` micro-USD, computed in integers: no
float ever touches a balance. Prices may have up to 9 decimal places.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING

from multidict import istr

if TYPE_CHECKING:
    from proxy import Call

MICRO = 1_000_000
FEMTO_PER_MICRO = 10**9
#: The largest amount (in the billing currency) one number may hold: a balance, a top-up,
#: a budget. Its micro-units fit 64-bit integers (the stores, JSON, Redis) many times over.
MAX_AMOUNT = 1_000_000_000


class MoneyError(ValueError):
    pass


def exact_scaled(value: float, scale: int, what: str) -> int:
    """``value * scale`` as an integer, refusing values it cannot hold exactly."""
    try:
        d = Decimal(str(value)) * scale
    except InvalidOperation:
        raise MoneyError(f"{what}: not a number") from None
    if d != d.to_integral_value():
        raise MoneyError(f"{what}: too many decimal places (at most {len(str(scale)) - 1})")
    return int(d)


def usd_to_micro(amount: float, what: str = "amount") -> int:
    """USD (a JSON/YAML number) -> micro-USD, exactly; at most 6 decimal places."""
    return exact_scaled(amount, MICRO, what)


def micro_to_usd(micro: int) -> float:
    return micro / MICRO


def format_usd(micro: int) -> str:
    """``1234567`` -> ``"1.234567"`` (exact, no float)."""
    if micro >= MICRO:
        text = str(micro)
        return f"{text[:-6]}.{text[-6:]}"
    if micro >= 0:
        return "0." + str(micro).zfill(6)
    whole, frac = divmod(-micro, MICRO)
    return f"-{whole}.{frac:06d}"


COST_HEADER = istr("x-tollway-cost")  # (an istr: see HEADER_NAMES in limit_headers.py)


def tell_cost(call: Call, micro: int) -> None:
    """Set a request's cost and what its client is told of it, together: ``usage.cost``
    (JSON, or a stream's final usage chunk) and, on a non-stream answer, ``x-tollway-cost``."""
    billing = call.billing
    billing.cost_micro = micro
    billing.usage_extra["cost"] = micro / 1_000_000
    if not call.stream:  # (format_usd's answer under a unit, inline: a call less)
        call.response.headers[COST_HEADER] = "0." + str(micro).zfill(6) if 0 <= micro < MICRO else format_usd(micro)


FEMTO_PER_USD = MICRO * FEMTO_PER_MICRO


def money_text(micro: int, currency: str = "USD") -> str:
    """``1500000`` -> ``$1.500000`` (USD) or ``1.500000 INR``: exact, for messages."""
    return "$" + format_usd(micro) if currency == "USD" else f"{format_usd(micro)} {currency}"


@dataclass(frozen=True, slots=True)
class PriceTable:
    """One model's prices in femto-USD per token (and per image, per character, per
    minute of audio where set; ``batch_ppm``: a batch line's share of the price, in ppm)."""

    input: int
    output: int
    cached_input: int
    cache_write: int
    images: dict[str, int] | None = None  # femto-USD per image, by "SIZE/QUALITY" or "SIZE"
    characters: int | None = None  # femto-USD per input character (speech)
    audio_minute: int | None = None  # femto-USD per minute of audio (transcriptions)
    batch_ppm: int = MICRO // 2
    divisor: int = FEMTO_PER_MICRO  # price units per micro-unit of money

    @classmethod
    def from_config(cls, price, where: str, rate_ppm: int = MICRO) -> PriceTable:
        """The prices of ``price`` (USD per 1M tokens), in the billing currency at
        ``rate_ppm`` (currency units per USD, in parts per million; exact)."""
        cached = price.cached_input if price.cached_input is not None else price.input
        write = price.cache_write if price.cache_write is not None else price.input
        images = getattr(price, "images", None)
        characters = getattr(price, "characters", None)
        minute = getattr(price, "audio_minute", None)
        scaled = [exact_scaled(v, FEMTO_PER_MICRO, f"{where}.{n}") for n, v in
                  (("input", price.input), ("output", price.output), ("cached_input", cached),
                   ("cache_write", write))]
        tiers = ({tier: exact_scaled(v, FEMTO_PER_USD, f"{where}.images.{tier}") for tier, v in images.items()}
                 if images else None)
        per_char = exact_scaled(characters, FEMTO_PER_MICRO, f"{where}.characters") if characters is not None else None
        per_minute = exact_scaled(minute, FEMTO_PER_USD, f"{where}.audio_minute") if minute is not None else None
        batch = multiplier_ppm(getattr(price, "batch_multiplier", 0.5))
        if rate_ppm == MICRO:
            return cls(*scaled, tiers, per_char, per_minute, batch)
        # Another currency: every price times the rate (in ppm), and a divisor a million times larger.
        return cls(*(v * rate_ppm for v in scaled),
                   {t: v * rate_ppm for t, v in tiers.items()} if tiers else None,
                   None if per_char is None else per_char * rate_ppm,
                   None if per_minute is None else per_minute * rate_ppm, batch,
                   divisor=FEMTO_PER_MICRO * MICRO)

    def cost(self, prompt: int, completion: int, cached: int = 0, multiplier_ppm: int = MICRO,
             cache_write: int = 0) -> int:
        """Micro-USD for these tokens (``prompt`` includes ``cached`` and
        ``cache_write``), rounded up.

        ``multiplier_ppm`` scales the cost in parts per million (1_000_000 = x1).
        """
        if not cached and not cache_write and prompt >= 0 and completion >= 0 and multiplier_ppm == MICRO:
            # The usual answer (no prompt cache, list price): the same sum without the clamps below.
            return -(-(prompt * self.input + completion * self.output) // self.divisor)
        if prompt < 0:
            prompt = 0
        if completion < 0:
            completion = 0
        if cached < 0:
            cached = 0
        elif cached > prompt:
            cached = prompt
        if cache_write < 0:
            cache_write = 0
        elif cache_write > prompt - cached:
            cache_write = prompt - cached
        femto = ((prompt - cached - cache_write) * self.input + cached * self.cached_input
                 + cache_write * self.cache_write + completion * self.output)
        if multiplier_ppm != MICRO:
            return -(-femto * multiplier_ppm // (self.divisor * MICRO))
        return -(-femto // self.divisor)


def multiplier_ppm(multiplier: float) -> int:
    """A price multiplier (e.g. 0.5 on a cache hit) in parts per million, >= 0."""
    if multiplier == 1.0:
        return MICRO
    value = Decimal(str(max(float(multiplier), 0.0))) * MICRO
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


class PriceBook:
    """Every configured model's ``PriceTable``; checked once, when the config is loaded.

    A route is priced from its own ``config`` (the ``ModelConfig`` it was made
    from): a request that started before a reload keeps its old Route, so it
    is billed at the prices it started with, not at the table's new ones.
    """

    MAX_OTHERS = 1024  # tables kept for routes from older configs or made up by plugins

    def __init__(self, models: dict, usd_rate: float = 1.0) -> None:
        from proxy.schema import ConfigError

        try:
            self.rate_ppm = exact_scaled(usd_rate, MICRO, "billing.usd_rate")
        except MoneyError as exc:
            raise ConfigError(str(exc)) from None
        # name -> (config, list prices, prices with the caller's own key (price.byok))
        self.tables: dict[str, tuple[object, PriceTable, PriceTable]] = {}
        for name, m in models.items():
            if m.price is None:
                continue  # a group or auto: each request is priced as the model that served it
            try:
                self.tables[name] = _entry(m, f"models.{name}.price", self.rate_ppm)
            except MoneyError as exc:
                raise ConfigError(str(exc)) from None
        # id(config) -> entry; the config is kept so that its id cannot be reused.
        self.others: dict[int, tuple[object, PriceTable, PriceTable]] = {}

    def of(self, route, byok: bool = False) -> PriceTable:
        """The prices of the model a route serves, from the config the route was made from;
        ``byok``: those of a request sent with the caller's own upstream key."""
        entry = self.tables.get(route.model)
        if entry is None or entry[0] is not route.config:
            entry = self.others.get(id(route.config))
            if entry is None or entry[0] is not route.config:
                if len(self.others) >= self.MAX_OTHERS:
                    self.others.clear()
                entry = self.others[id(route.config)] = _entry(route.config, f"models.{route.model}.price",
                                                               self.rate_ppm)
        return entry[2] if byok else entry[1]

    def cost_of(self, call) -> int:
        """Micro-USD for a call's usage (which must be known) at its route's prices,
        times ``call.billing.price_multiplier``."""
        billing = call.billing
        usage = billing.usage
        multiplier = billing.price_multiplier
        route = call.route
        entry = self.tables.get(route.model)  # (of()'s usual answer, inline: a call less)
        table = entry[1] if entry is not None and entry[0] is route.config and not billing.caller_key else \
            self.of(route, billing.caller_key)
        return table.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                          MICRO if multiplier == 1.0 else multiplier_ppm(multiplier), usage.cache_write_tokens)


def _entry(config, where: str, rate_ppm: int) -> tuple[object, PriceTable, PriceTable]:
    listed = PriceTable.from_config(config.price, where, rate_ppm)
    return config, listed, byok_table(config.price, listed, where, rate_ppm)


def byok_table(price, listed: PriceTable, where: str, rate_ppm: int = MICRO) -> PriceTable:
    """The prices of a request sent with the caller's own upstream key: ``price.byok`` USD per 1M
    tokens of every kind, or ``{multiplier: M}`` of the list prices (rounded up); unset: the list
    prices (an operator who wants BYOK cheaper says by how much; a relay is never free by omission).
    (The upstream bills the caller for what it serves, so unit prices (images, audio) go too.)"""
    byok = getattr(price, "byok", None)
    if byok is None:
        return listed
    if isinstance(byok, (int, float)):
        flat = exact_scaled(byok, FEMTO_PER_MICRO, f"{where}.byok")
        if rate_ppm != MICRO:
            flat *= rate_ppm  # in the billing currency, as from_config does (listed.divisor matches)
        return replace(listed, input=flat, output=flat, cached_input=flat, cache_write=flat, images=None,
                       characters=None, audio_minute=None)
    factor = Decimal(str(byok.multiplier))

    def scaled(femto: int) -> int:
        return int((femto * factor).to_integral_value(rounding=ROUND_CEILING))

    return replace(listed, input=scaled(listed.input), output=scaled(listed.output),
                   cached_input=scaled(listed.cached_input), cache_write=scaled(listed.cache_write),
                   images={t: scaled(v) for t, v in listed.images.items()} if listed.images else None,
                   characters=None if listed.characters is None else scaled(listed.characters),
                   audio_minute=None if listed.audio_minute is None else scaled(listed.audio_minute))

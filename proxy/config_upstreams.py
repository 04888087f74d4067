"""The ``providers:`` and ``models:`` sections: what an upstream and a public model
are (frozen dataclasses) and how their YAML mappings are checked into them.

``proxy.config.build_config`` calls ``build_providers`` then ``build_models`` (a
model names its providers); everything here is re-exported by ``proxy.config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .http1 import header_problem
from .schema import ConfigError, build_dataclass, suggest


@dataclass(frozen=True)
class Timeouts:
    """Seconds; see ``proxy/upstream.py`` for what each one bounds."""

    connect: float = 5.0
    first_byte: float = 60.0
    idle: float = 60.0
    total: float = 600.0


@dataclass(frozen=True)
class ProviderConfig:
    """Options every provider kind has; kind-specific ones go in ``options``.

    ``api_keys`` is a key pool: the keys are used in turn, and one that answered
    429 rests until its ``Retry-After`` (``proxy/keypool.py``); ``api_key`` is then
    the pool's first key."""

    kind: str
    base_url: str | None = None
    api_key: str | None = None
    api_keys: list[str] = field(default_factory=list)
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 1000  # streams hold a connection each for their whole length
    headers: dict[str, str] = field(default_factory=dict)
    options: Any = None  # built from the adapter's Options dataclass
    #: The ${VAR} that ``api_key`` was read from, if any (for the start-up warning when it is empty).
    api_key_env: str | None = field(default=None, metadata={"internal": True})


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens. ``cached_input`` (prompt-cache reads) and
    ``cache_write`` (prompt-cache writes, e.g. Anthropic's 1.25x) default to ``input``."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    #: USD per image, by ``"SIZE/QUALITY"`` (e.g. ``"1024x1024/standard"``) or ``"SIZE"``; unset:
    #: priced by the tokens the upstream reports.
    images: dict[str, float] | None = None
    audio_minute: float | None = None  # transcriptions and translations, USD per minute of audio
    characters: float | None = None  # speech, USD per 1M input characters
    batch_multiplier: float = 0.5  # batches, of the interactive price
    #: When the caller brings its own upstream key (the ``byok`` plugin): USD per 1M tokens of
    #: every kind, or ``{multiplier: M}`` of the prices above. Unset: the prices above (never free).
    byok: ByokPrice | float | None = None


@dataclass(frozen=True)
class ByokPrice:
    """``price.byok: {multiplier: M}``: the list price times M, when the caller brings its own upstream key."""

    multiplier: float


@dataclass(frozen=True)
class DeploymentConfig:
    """One upstream serving a model: its provider, the upstream's name for the model,
    a weight (0 drains it: no new requests) and the limits the upstream grants
    (requests and tokens per minute); ``price`` (USD per 1M tokens, what this
    upstream costs) only orders the ``cheapest`` strategy: clients pay the model's price."""

    provider: str
    model: str | None = None
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    price: Price | None = None


@dataclass(frozen=True)
class ModelConfig:
    """A public model. Either ``provider`` (+ ``model``) or ``deployments``; after
    validation ``deployments`` always lists the upstreams (one for the short form) and
    ``provider`` names the first one's provider. Or, with no upstream of its own, a
    ``group`` of other models, or ``auto`` (per request, the cheapest model that fits);
    these have no ``price``: each request pays the price of the model that served it."""

    price: Price | None = None
    provider: str | None = None
    model: str | None = None  # the upstream's name; defaults to the public name
    deployments: list[DeploymentConfig] = field(default_factory=list)
    strategy: Literal["weighted", "least_busy", "latency", "cheapest"] | None = None  # default: routing.strategy
    context_window: int | None = None
    max_output_tokens: int | None = None
    fallbacks: list[str] = field(default_factory=list)
    capabilities: list[str] | None = None  # what the model supports (tools, vision, json, stream)
    group: list[str] | None = None  # a public name for other models, tried in turn
    auto: Literal["cheapest"] | None = None  # per request, the cheapest model that fits
    name: str = ""  # filled in from the key under models:

    @property
    def upstream_model(self) -> str:
        return self.model or self.name

    @property
    def virtual(self) -> bool:
        """A group or ``auto``: a name for other models, with no upstream of its own."""
        return self.group is not None or self.auto is not None


#: An upstream's rpm/tpm above this is a typo, not a limit (the keys' limits have the same bound).
MAX_UPSTREAM_LIMIT = 10**12
def build_providers(raw: Any, option_types: dict[str, Any]) -> dict[str, ProviderConfig]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("providers: expected a mapping of provider names")
    common = set(ProviderConfig.__dataclass_fields__) - {"options", "api_key_env"}
    out = {}
    for name, item in raw.items():
        where = f"providers.{name}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping")
        kind = item.get("kind")
        if kind not in option_types:
            if kind is None:
                raise ConfigError(f"{where}.kind: required (one of {', '.join(sorted(option_types))})")
            raise ConfigError(f"{where}.kind: unknown kind {kind!r}{suggest(str(kind), option_types)} "
                              f"(known: {', '.join(sorted(option_types))})")
        options_type = option_types[kind]
        own = {k: v for k, v in item.items() if k in common}
        rest = {k: v for k, v in item.items() if k not in common}
        if options_type is None:
            for key in rest:
                raise ConfigError(f"{where}.{key}: unknown key{suggest(str(key), common)}")
            options = None
        else:
            try:
                options = build_dataclass(options_type, rest, where)
            except ConfigError as exc:
                msg = str(exc)
                if msg.endswith("unknown key"):  # no close option name: try the common ones
                    key = msg.split(":")[0].rsplit(".", 1)[-1]
                    msg += suggest(key, common | set(options_type.__dataclass_fields__))
                raise ConfigError(msg) from None
        config = build_dataclass(ProviderConfig, own, where)
        key_env = getattr(item.get("api_key"), "variables", ())
        if config.api_keys:
            if config.api_key:
                raise ConfigError(f"{where}: give either api_key (one key) or api_keys (a pool), not both")
            # Keys read from unset ${VAR}s are left out; none left: the provider warns as for an empty api_key.
            keys = [k for k in config.api_keys if k]
            key_env = tuple(v for k in item["api_keys"] for v in getattr(k, "variables", ()))
            config = ProviderConfig(**{**config.__dict__, "api_keys": keys, "api_key": keys[0] if keys else ""})
        if config.max_connections < 1:
            raise ConfigError(f"{where}.max_connections: must be at least 1")
        for header, value in config.headers.items():
            problem = header_problem(header, value)
            if problem:
                raise ConfigError(f"{where}.headers.{header}: {problem}")
        out[str(name)] = ProviderConfig(**{**config.__dict__, "options": options,
                                           "api_key_env": key_env[0] if key_env else None})
    return out


def _deployments(model: ModelConfig, providers: dict[str, ProviderConfig], where: str) -> list[DeploymentConfig]:
    """The model's upstreams: its ``deployments``, or the one its ``provider``/``model`` name."""
    if model.provider is not None and model.deployments:
        raise ConfigError(f"{where}: give either provider (one upstream) or deployments (several), not both")
    if model.provider is None and not model.deployments:
        raise ConfigError(f"{where}.provider: required (or list the model's upstreams under deployments)")
    if model.provider is not None:
        if model.provider not in providers:
            raise ConfigError(f"{where}.provider: unknown provider {model.provider!r}"
                              f"{suggest(model.provider, providers)}")
        return [DeploymentConfig(provider=model.provider, model=model.model)]
    out = []
    for i, dep in enumerate(model.deployments):
        here = f"{where}.deployments[{i}]"
        if dep.provider not in providers:
            raise ConfigError(f"{here}.provider: unknown provider {dep.provider!r}{suggest(dep.provider, providers)}")
        if not 0 <= dep.weight < 1e9:
            raise ConfigError(f"{here}.weight: must be a number from 0 (drained) up")
        for limit in ("rpm", "tpm"):
            value = getattr(dep, limit)
            if value is not None and not 1 <= value <= MAX_UPSTREAM_LIMIT:
                raise ConfigError(f"{here}.{limit}: must be from 1 to {MAX_UPSTREAM_LIMIT} (leave it out for no "
                                  f"limit), got {value}")
        if dep.price is not None:
            _check_price(dep.price, f"{here}.price")
        out.append(DeploymentConfig(**{**dep.__dict__, "model": dep.model or model.model}))
    return out


def _check_price(price: Price, where: str) -> None:
    for k in ("input", "output", "cached_input", "cache_write", "audio_minute", "characters"):
        v = getattr(price, k)
        if v is not None and v < 0:
            raise ConfigError(f"{where}.{k}: must not be negative")
    for tier, v in (price.images or {}).items():
        if v < 0:
            raise ConfigError(f"{where}.images.{tier}: must not be negative")
    if not 0 <= price.batch_multiplier <= 1:
        raise ConfigError(f"{where}.batch_multiplier: must be between 0 and 1 (0.5: half price)")
    byok = price.byok
    if isinstance(byok, ByokPrice) and byok.multiplier < 0 or isinstance(byok, float) and byok < 0:
        raise ConfigError(f"{where}.byok{'.multiplier' if isinstance(byok, ByokPrice) else ''}: must not be negative")


def build_models(raw: Any, providers: dict[str, ProviderConfig]) -> dict[str, ModelConfig]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("models: expected a mapping of model names")
    out = {}
    for name, item in raw.items():
        where = f"models.{name}"
        model = build_dataclass(ModelConfig, item, where)
        if model.virtual:
            _check_virtual(model, where)
            out[str(name)] = ModelConfig(**{**model.__dict__, "name": str(name)})
            continue
        deployments = _deployments(model, providers, where)
        if model.price is None:
            raise ConfigError(f"{where}.price: required (USD per 1M tokens: input, output)")
        _check_price(model.price, f"{where}.price")
        for i, cap in enumerate(model.capabilities or ()):
            if cap not in CAPABILITIES:
                raise ConfigError(f"{where}.capabilities[{i}]: unknown capability {cap!r}{suggest(cap, CAPABILITIES)} "
                                  f"(known: {', '.join(CAPABILITIES)})")
        out[str(name)] = ModelConfig(**{**model.__dict__, "name": str(name), "deployments": deployments,
                                        "provider": deployments[0].provider})
    for name, model in out.items():
        for i, fb in enumerate(model.fallbacks):
            if fb not in out:
                raise ConfigError(f"models.{name}.fallbacks[{i}]: unknown model {fb!r}{suggest(fb, out)}")
            if out[fb].virtual:
                raise ConfigError(f"models.{name}.fallbacks[{i}]: {fb!r} is a group or auto; name models with "
                                  "an upstream")
        for i, member in enumerate(model.group or ()):
            if member not in out:
                raise ConfigError(f"models.{name}.group[{i}]: unknown model {member!r}{suggest(member, out)}")
            if out[member].virtual:
                raise ConfigError(f"models.{name}.group[{i}]: {member!r} is a group or auto itself; "
                                  "list models with an upstream")
    return out


CAPABILITIES = ("tools", "vision", "json", "stream")


def _check_virtual(model: ModelConfig, where: str) -> None:
    if model.group is not None and model.auto is not None:
        raise ConfigError(f"{where}: give either group or auto, not both")
    kind = "group" if model.group is not None else "auto"
    for own in ("provider", "model", "price", "context_window", "max_output_tokens", "capabilities"):
        if getattr(model, own) is not None:
            raise ConfigError(f"{where}.{own}: a {kind} has none of its own (its models' apply)")
    if model.deployments or model.fallbacks:
        what = "deployments" if model.deployments else "fallbacks"
        raise ConfigError(f"{where}.{what}: a {kind} has none of its own (its models' apply)")
    if model.group is not None and not model.group:
        raise ConfigError(f"{where}.group: list at least one model")

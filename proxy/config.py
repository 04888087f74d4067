"""The YAML config: read, interpolate ${VAR}, validate into frozen dataclasses.

Nothing here runs at import time: ``read_yaml`` reads a file (``${VAR}``
interpolated) and ``build_config`` validates the result into a ``Config``;
``proxy.gateway.load_gateway`` does both for the CLI, ``build_gateway`` the
second for tests. The section names are a contract (the shipped
``config/tollway.yaml`` and the README show them).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .http1 import header_problem
from .schema import ConfigError, EnvString, build, build_dataclass, suggest

__all__ = ["ClientTimeouts", "Config", "ConfigError", "DeploymentConfig", "ModelConfig", "Price", "ProviderConfig",
           "Timeouts", "read_yaml", "build_config"]


@dataclass(frozen=True)
class Timeouts:
    """Seconds; see ``proxy/upstream.py`` for what each one bounds."""

    connect: float = 5.0
    first_byte: float = 60.0
    idle: float = 60.0
    total: float = 600.0


@dataclass(frozen=True)
class DisconnectDrain:
    """After a client hangs up mid-stream, keep reading the upstream this long
    (or this many bytes) so its usage can still be billed."""

    seconds: float = 30.0
    max_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class ClientTimeouts:
    """Seconds a client connection may take; see ``proxy/connection.py``.

    ``header_read``: to send a whole request head, from accept (or from the
    first byte of a later request on a kept-alive connection); ``body_read``:
    to send the whole body once the head is in (408 otherwise);
    ``keepalive_idle``: an idle kept-alive connection is closed after it;
    ``client_write``: a client that takes no bytes for this long is gone.
    Defaults are nginx's and the config contract's.
    """

    header_read: float = 10.0
    body_read: float = 60.0
    keepalive_idle: float = 75.0
    client_write: float = 30.0


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    admin_key: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    max_upload_bytes: int = 25 * 1024 * 1024  # multipart uploads (audio, image edits, batch files)
    default_model: str | None = None  # a model request without "model" uses it
    access_log: Literal["text", "json", "off"] = "text"
    shutdown_timeout: float = 30.0
    disconnect_drain: DisconnectDrain = field(default_factory=DisconnectDrain)
    timeouts: ClientTimeouts = field(default_factory=ClientTimeouts)
    base_path: str | None = None  # the API under the operator's own prefix (e.g. /api/v1), as well as /v1
    keep_v1: bool = True  # false: the API only under base_path


@dataclass(frozen=True)
class ErrorsConfig:
    """``errors:``: the fields an operator's error contract promises."""

    extra_fields: bool = False  # limit, used and resetAt on limit and budget errors
    numeric_code: bool = False  # "code" is the HTTP status; the named code moves to "reason"


@dataclass(frozen=True)
class StorageConfig:
    url: str = "sqlite:///tollway.db"
    counters: str = "memory"
    #: While Redis (``counters``) cannot be reached: ``refuse`` what needs it (503
    #: counters_unavailable), or ``local``: unmetered keys' limits are enforced by each
    #: instance at limit / instances (metered requests are refused either way).
    on_counters_down: Literal["refuse", "local"] = "refuse"


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


@dataclass(frozen=True)
class PluginsConfig:
    enabled: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CatalogConfig:
    public: bool = False  # GET /api/models, and /v1/models with the auth plugin, answer without a key


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    storage: StorageConfig
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
    plugins: PluginsConfig
    sections: dict[str, Any]  # plugin-declared sections, by dotted path
    path: Path | None = None
    unset_env: tuple[str, ...] = ()
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    errors: ErrorsConfig = field(default_factory=ErrorsConfig)

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def section(self, dotted: str, default: Any = None) -> Any:
        return self.sections.get(dotted, default)


#: An upstream's rpm/tpm above this is a typo, not a limit (the keys' limits have the same bound).
MAX_UPSTREAM_LIMIT = 10**12
_CORE_SECTIONS = ("server", "storage", "providers", "models", "plugins", "catalog", "errors")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def read_yaml(path: str | Path) -> tuple[dict, tuple[str, ...]]:
    """Parse the file and interpolate ${VAR} / ${VAR:-default} in its strings.

    Returns the data and the names of variables that were unset without a
    default (they read as empty text).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    unset: list[str] = []
    return _interpolate(data, unset), tuple(dict.fromkeys(unset))


def _interpolate(value: Any, unset: list[str]) -> Any:
    if isinstance(value, str) and "${" in value:
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            got = os.environ.get(name)
            if got is None or (got == "" and default is not None):
                if default is None:
                    unset.append(name)
                return default or ""
            return got
        text = EnvString(_VAR.sub(sub, value))
        text.variables = tuple(m.group(1) for m in _VAR.finditer(value))
        return text
    if isinstance(value, dict):
        return {k: _interpolate(v, unset) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, unset) for v in value]
    return value


def build_config(raw: dict, *, schemas: dict[str, Any], provider_options: dict[str, Any],
                 path: Path | None = None, unset_env: tuple[str, ...] = ()) -> Config:
    """Validate parsed YAML into a Config.

    ``schemas`` are the plugin sections (from ``tollway_config_schema``);
    ``provider_options`` maps each known provider kind to its Options
    dataclass (or None).
    """
    claimed_top = {p.split(".")[0] for p in schemas if not p.startswith("plugins.")}
    for key in raw:
        if key not in _CORE_SECTIONS and key not in claimed_top:
            if key == "keys":
                raise ConfigError("keys: no enabled plugin reads this section "
                                  "(add 'auth' to plugins.enabled, or the keys are not enforced)")
            raise ConfigError(f"{key}: unknown section{suggest(str(key), (*_CORE_SECTIONS, *claimed_top))}")

    server_raw = raw.get("server")
    if isinstance(server_raw, dict) and server_raw.get("access_log") is False:
        server_raw = {**server_raw, "access_log": "off"}  # YAML reads a bare `off` as false
    server = build_dataclass(ServerConfig, server_raw, "server")
    storage = build_dataclass(StorageConfig, raw.get("storage"), "storage")
    providers = _build_providers(raw.get("providers"), provider_options)
    models = _build_models(raw.get("models"), providers)
    plugins_raw = raw.get("plugins") or {}
    if not isinstance(plugins_raw, dict):
        raise ConfigError("plugins: expected a mapping")
    plugins = build_dataclass(PluginsConfig, {"enabled": plugins_raw.get("enabled", [])}, "plugins")

    sections: dict[str, Any] = {}
    for dotted, tp in schemas.items():
        top, _, rest = dotted.partition(".")
        value = plugins_raw.get(rest) if top == "plugins" else raw.get(dotted)
        sections[dotted] = build(tp, value, dotted)
    declared = {p.split(".", 1)[1] for p in schemas if p.startswith("plugins.")}
    for key in plugins_raw:
        if key != "enabled" and key not in declared:
            raise ConfigError(f"plugins.{key}: no enabled plugin reads this section"
                              f"{suggest(str(key), declared)}")
    if server.workers < 1:
        raise ConfigError("server.workers: must be at least 1")
    for name, seconds in server.timeouts.__dict__.items():
        if not 0 < seconds < 1e6:  # also refuses NaN and .inf, which the event loop's timers cannot hold
            raise ConfigError(f"server.timeouts.{name}: must be a positive number of seconds")
    if server.default_model is not None and server.default_model not in models:
        raise ConfigError(f"server.default_model: unknown model {server.default_model!r}"
                          f"{suggest(server.default_model, models)}")
    if server.max_body_bytes < 1024:
        raise ConfigError("server.max_body_bytes: must be at least 1024")
    if server.max_upload_bytes < 1024:
        raise ConfigError("server.max_upload_bytes: must be at least 1024")
    catalog = build_dataclass(CatalogConfig, raw.get("catalog"), "catalog")
    check_base_path(server.base_path, server.keep_v1)
    errors = build_dataclass(ErrorsConfig, raw.get("errors"), "errors")
    return Config(server, storage, providers, models, plugins, sections, path, unset_env, catalog=catalog,
                  errors=errors)


def check_base_path(base: str | None, keep_v1: bool) -> None:
    if base is None:
        if not keep_v1:
            raise ConfigError("server.keep_v1: false needs a server.base_path to serve the API under")
        return
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", base):
        raise ConfigError(f"server.base_path: {base!r} is not a path like /api/v1 (a leading '/', no trailing "
                          "'/', letters, digits, '.', '_', '~' and '-')")
    if base == "/v1" or base.split("/")[1] in ("v1", "admin", "health", "dashboard", "metrics"):
        raise ConfigError(f"server.base_path: {base!r} would overlap the gateway's own paths (/v1, /admin, "
                          "/health, /dashboard, /metrics); use a prefix of your own such as /api/v1")


def _build_providers(raw: Any, option_types: dict[str, Any]) -> dict[str, ProviderConfig]:
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


def _build_models(raw: Any, providers: dict[str, ProviderConfig]) -> dict[str, ModelConfig]:
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

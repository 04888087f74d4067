"""The YAML config: read, interpolate ${VAR}, validate into frozen dataclasses.

The ``providers:`` and ``models:`` sections' types and checks are in
``proxy/config_upstreams.py`` (re-exported here).

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

from .config_upstreams import (
    ByokPrice,
    DeploymentConfig,
    ModelConfig,
    Price,
    ProviderConfig,
    Timeouts,
    build_models,
    build_providers,
)
from .schema import ConfigError, EnvString, build, build_dataclass, suggest

__all__ = ["ByokPrice", "ClientTimeouts", "Config", "ConfigError", "DeploymentConfig", "ModelConfig", "Price",
           "ProviderConfig", "Timeouts", "read_yaml", "build_config"]


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
    providers = build_providers(raw.get("providers"), provider_options)
    models = build_models(raw.get("models"), providers)
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


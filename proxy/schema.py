"""Build typed, frozen values from parsed YAML, naming the path of every mistake.

``build(tp, value, path)`` accepts dataclasses (fields with defaults are
optional), ``list[T]``, ``dict[str, T]``, ``T | None``, ``Literal[...]``,
``int``, ``float``, ``str``, ``bool`` and ``Any``. Errors read like
``models.gpt-4o.price.inptu: unknown key (did you mean 'input'?)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

__all__ = ["ConfigError", "RestartRequired", "StartRefused", "build", "build_dataclass", "suggest"]


class ConfigError(Exception):
    """A mistake in the configuration; the message is one line naming the path."""

    label = "config error"  # how the command line introduces the message


class StartRefused(ConfigError):
    """The configuration is valid, but starting now would be unsafe (e.g. the store is in use)."""

    label = "cannot start"


class RestartRequired(ConfigError):
    """A valid config that a running gateway cannot take by reloading (a ``tollway_reload`` hook
    raises it naming the path); the running config stays."""

    label = "restart required"


class EnvString(str):
    """A string that came from ${VAR} interpolation: may stand for a number or a bool.
    ``variables`` names the environment variables it was read from."""

    variables: tuple[str, ...] = ()


def suggest(word: str, candidates: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return repr(value)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against ``tp`` and build it; raise ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return build(arg, value, path)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: expected one of {', '.join(map(repr, choices))}, got {_describe(value)}"
                              + (suggest(str(value), map(str, choices)) if isinstance(value, str) else ""))
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_describe(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        return [build(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_describe(value)}")
        _, item = typing.get_args(tp) or (str, Any)
        return {str(k): build(item, v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path)
    return _scalar(tp, value, path)


def build_dataclass(cls: type, value: Any, path: str, extra_ok: bool = False) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping, got {_describe(value)}")
    hints = _hints(cls)
    # Fields marked internal are filled in by the code that builds the section, never from YAML.
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")}
    kwargs = {}
    for key, item in value.items():
        key = str(key)
        where = f"{path}.{key}" if path else key
        if key not in fields:
            if extra_ok:
                continue
            raise ConfigError(f"{where}: unknown key{suggest(key, fields)}")
        kwargs[key] = build(hints[key], item, where)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path + '.' if path else ''}{name}: required")
    return cls(**kwargs)


def _scalar(tp: Any, value: Any, path: str) -> Any:
    if isinstance(value, EnvString):
        value = _from_env(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a model named 4 or a version 2023-06-01 read as text
        raise ConfigError(f"{path}: expected text, got {_describe(value)}")
    raise ConfigError(f"{path}: unsupported type {tp!r} in schema")


def _from_env(tp: Any, value: str, path: str) -> Any:
    text = value.strip()
    try:
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{path}: expected a number, got {value!r} from the environment") from None
    if tp is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off", ""):
            return False
        raise ConfigError(f"{path}: expected true or false, got {value!r} from the environment")
    return value

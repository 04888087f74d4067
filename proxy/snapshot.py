"""The config a request runs under: an immutable snapshot, swapped whole on reload.

A ``Snapshot`` is the validated ``Config`` and the provider adapters built from
it. The gateway holds the current one (``gateway.snapshot``); every request
takes the one current when it arrived (``call.snapshot``) and keeps it to the
end, so a reload (``proxy/reload.py``) never changes a request half-way: a
stream in flight finishes on the routes and prices it started with, the next
request gets the new ones. Nothing in a snapshot is changed after it is made;
a reload makes a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config
    from .provider import Provider

__all__ = ["RELOADABLE_SERVER", "RESTART_ONLY", "Snapshot", "changed_paths", "config_changes"]

#: What a running gateway cannot change: it is bound to the listening socket,
#: the worker processes, the store's connections or the plugin manager.
#: (Under ``server``, everything but ``RELOADABLE_SERVER`` is bound at start-up.)
RESTART_ONLY = ("storage", "plugins.enabled")
RELOADABLE_SERVER = frozenset(("admin_key", "shutdown_timeout", "disconnect_drain"))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One version of the config and what was built from it, never changed."""

    config: Config
    providers: Mapping[str, Provider]  # by provider name; read-only
    version: int = 1  # 1 at start-up, +1 per reload that took effect

    @classmethod
    def make(cls, config: Config, providers: Mapping[str, Provider], version: int = 1) -> Snapshot:
        return cls(config, MappingProxyType(dict(providers)), version)


def config_changes(old: Config, new: Config) -> list[str]:
    """Every dotted path where ``new`` differs from ``old`` (plugin sections under their own path)."""
    out: list[str] = []
    for f in fields(old):
        if f.name not in ("sections", "path", "unset_env"):
            out += changed_paths(getattr(old, f.name), getattr(new, f.name), f.name)
    return out + changed_paths(old.sections, new.sections)


def changed_paths(old: Any, new: Any, path: str = "") -> list[str]:
    """The dotted paths where two configs (or parts of them) differ, as deep as
    the dataclasses and mappings go (``models.echo.price.input``)."""
    if type(old) is not type(new):
        return [path]
    if is_dataclass(old) and not isinstance(old, type):
        out: list[str] = []
        for f in fields(old):
            if f.metadata.get("internal"):
                continue
            out += changed_paths(getattr(old, f.name), getattr(new, f.name), f"{path}.{f.name}" if path else f.name)
        return out
    if isinstance(old, dict):
        out = []
        for key in (*old, *(k for k in new if k not in old)):
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                out.append(where)
            else:
                out += changed_paths(old[key], new[key], where)
        return out
    return [] if old == new else [path]

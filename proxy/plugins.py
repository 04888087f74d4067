"""The plugin manager: which plugins load, and the request-time dispatch tuples.

Plugins load in this order (later ones run first at request time):

1. the always-on built-ins: ``routing`` (the YAML models table) and
   ``providers`` (the openai, mock, anthropic and gemini adapters);
2. the names in ``plugins.enabled``: a built-in name (``auth``, ``ratelimit``,
   ``quotas``, ``pricing``, ``ledger``, ``cache``, ``dashboard``, ``metrics``, ``alerts``) or a
   dotted module path; and the built-ins that a top-level section of their own turns
   on (``metrics:``, ``alerts:``), whether listed or not (see ``section_plugins``);
3. setuptools entry points in the group ``tollway``.

A module that defines a class named ``Plugin`` is registered as an instance of
it (so a plugin's state lives on the instance, not in module globals);
otherwise the module itself is registered.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .hookcallers import Gated, HookCaller, first_answer_caller, hook_caller, impl_name, is_async, maybe_await
from .schema import ConfigError, suggest

ALWAYS_ON = {"routing": "plugins.routing", "providers": "plugins.providers"}
BUILTINS = {
    "auth": "plugins.auth",
    "ratelimit": "plugins.ratelimit",
    "quotas": "plugins.quotas",
    "pricing": "plugins.pricing",
    "ledger": "plugins.ledger",
    "cache": "plugins.cache",
    "dashboard": "plugins.dashboard",
    "batches": "plugins.batches",
    "metrics": "plugins.metrics",
    "alerts": "plugins.alerts",
    "byok": "plugins.byok",
}
# Built-ins that their own top-level YAML section turns on (``metrics: {enabled: true}``):
# the section is theirs to validate, so they load whenever it is present.
SECTION_PLUGINS = ("metrics", "alerts")
ENTRY_POINT_GROUP = "tollway"

REQUEST_HOOKS = ("authenticate", "resolve", "admit", "lookup", "stream_filter", "usage", "settle",
                 "finish", "visible_models", "attempt", "retry", "reroute")
# The arguments of request-time hooks that take more than the call, in the order the core passes them.
_HOOK_ARGS = {"visible_models": ("call", "models"), "attempt": ("call", "route", "error"), "retry": ("call", "error"),
             "reroute": ("call", "previous")}
# The hooks whose implementations may be marked ``only_if`` (their callers check the mark before each call),
# and of those, the ones where an implementation raising does not stop the next.
GATED_HOOKS = ("admit", "usage", "settle", "finish")
# The "first non-None answer wins" hooks the core calls through a compiled caller (``first_answer_caller``).
FIRST_ANSWER_HOOKS = ("authenticate", "resolve")
ISOLATED_HOOKS = ("settle", "finish")


@dataclass(frozen=True, slots=True)
class Hooks:
    """Each request-time hook's implementations, in call order, as async callables (a plain
    ``def`` implementation wrapped: ``_as_async``)."""

    authenticate: tuple[Callable, ...]
    resolve: tuple[Callable, ...]
    admit: tuple[Callable, ...]
    lookup: tuple[Callable, ...]
    stream_filter: tuple[Callable, ...]
    usage: tuple[Callable, ...]
    settle: tuple[Callable, ...]
    settle_before_end: tuple[Callable, ...]  # those of ``settle`` marked ``settles_before_end``
    finish: tuple[Callable, ...]
    visible_models: tuple[Callable, ...]
    attempt: tuple[Callable, ...]
    retry: tuple[Callable, ...]
    reroute: tuple[Callable, ...]
    # What the core calls for admit, usage, settle (and settle_before_end), finish and attempt: each
    # implementation in order, those marked ``only_if`` only when their key says so; None, or what
    # is left to await (``proxy/hookcallers.py``).
    call_admit: HookCaller
    call_usage: HookCaller
    call_settle: HookCaller
    call_settle_before_end: HookCaller
    call_finish: HookCaller
    call_attempt: HookCaller
    # The first answer of authenticate and resolve, or the coroutine whose value it is (``first_answer_caller``).
    first_authenticate: Callable[[Any], Any]
    first_resolve: Callable[[Any], Any]


def section_plugins(raw: dict, enabled: Iterable[str]) -> list[str]:
    """The built-ins a top-level section of the config turns on, beyond ``enabled``."""
    listed = {name for name in enabled if isinstance(name, str)}
    return [name for name in SECTION_PLUGINS if name in raw and name not in listed]


def make_plugin_manager(enabled: Iterable[str] = (), extra: Iterable[Any] = (),
                        load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the built-ins, ``enabled`` and entry points registered.

    ``extra`` are plugin objects registered last (tests use it for ad-hoc plugins).
    """
    pm = pluggy.PluginManager("tollway")
    pm.add_hookspecs(hookspecs)
    for name, module_name in ALWAYS_ON.items():
        _register(pm, importlib.import_module(module_name), f"builtin:{name}")
    for i, name in enumerate(enabled):
        where = f"plugins.enabled[{i}]"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: expected a plugin name or dotted path")
        if name in BUILTINS:
            try:
                module = importlib.import_module(BUILTINS[name])
            except ImportError as exc:
                raise ConfigError(f"{where}: the built-in plugin {name!r} cannot be loaded: {exc} "
                                  f"(is its extra installed? e.g. pip install 'tollway[{name}]')") from None
            _register(pm, module, f"builtin:{name}")
            continue
        if "." not in name:
            raise ConfigError(f"{where}: unknown plugin {name!r}{suggest(name, BUILTINS)} "
                              f"(built-ins: {', '.join(BUILTINS)}; or give a dotted module path)")
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"{where}: cannot import {name!r}: {exc}") from None
        _register(pm, module, name)
    if load_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if pm.has_plugin(ep.name):
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                raise ConfigError(f"entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from None
            _register(pm, obj, ep.name)
    for i, obj in enumerate(extra):
        _register(pm, obj, f"extra:{i}:{getattr(obj, '__name__', type(obj).__name__)}")
    return pm


def _register(pm: pluggy.PluginManager, obj: Any, name: str) -> None:
    if pm.has_plugin(name):
        raise ConfigError(f"plugins.enabled: plugin {name!r} is listed twice")
    plugin_class = getattr(obj, "Plugin", None) if inspect.ismodule(obj) else None
    if inspect.isclass(plugin_class):
        obj = plugin_class()
    try:
        pm.register(obj, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise ConfigError(f"plugin {name!r} does not fit the hook contract: {exc}") from None
    _plain_dict(obj)


def _plain_dict(obj: Any) -> None:
    """Give a plugin instance a plain copy of its ``__dict__``. pluggy reads the instance's
    ``__dict__`` to find its hooks, and on CPython 3.11 that turns the instance's attributes into
    a split dict, on which every ``self.x`` read misses its specialization (``LOAD_ATTR_WITH_HINT``
    deoptimizes): ~270 instructions a read more, a dozen or more reads a request in the business
    plugins. A plain dict keeps the reads specialized. (Modules and classes are left alone.)"""
    if inspect.ismodule(obj) or inspect.isclass(obj):
        return
    try:
        obj.__dict__ = dict(obj.__dict__)
    except (AttributeError, TypeError):
        pass  # no __dict__ (slots), or one that cannot be replaced


def compile_hooks(pm: pluggy.PluginManager) -> Hooks:
    """Freeze the request-time hooks into tuples (call order) and the gated hooks' callers."""
    compiled: dict[str, Any] = {}
    early: list[Gated] = []
    for short in REQUEST_HOOKS:
        caller = getattr(pm.hook, f"tollway_{short}")
        fns: list[Gated] = []
        for impl in reversed(caller.get_hookimpls()):  # pluggy's own call order
            fn = impl.function
            key, present = getattr(fn, "tollway_only_if", (None, True))
            if key is not None and short not in GATED_HOOKS:
                raise ConfigError(f"plugin {impl.plugin_name!r}: only_if marks implementations of "
                                  f"{', '.join('tollway_' + h for h in GATED_HOOKS)}, not tollway_{short}")
            fns.append((_adapt(fn, impl.argnames, short), key, present))
            if short == "settle" and getattr(fn, "tollway_before_end", False):
                early.append(fns[-1])
        # The tuples hold async callables whatever the implementations' kind; the gated hooks'
        # callers call plain ``def``s directly (``proxy/hookcallers.py``).
        compiled[short] = tuple(f if is_async(f) else _as_async(f, short) for f, _, _ in fns)
        if short in GATED_HOOKS or short == "attempt":
            compiled[f"call_{short}"] = hook_caller(short, fns, short in ISOLATED_HOOKS, ", ".join(_HOOK_ARGS.get(
                short, ("call",))))
        elif short in FIRST_ANSWER_HOOKS:
            compiled[f"first_{short}"] = first_answer_caller(short, [f for f, _, _ in fns])
    return Hooks(**compiled, settle_before_end=tuple(f for f, _, _ in early),
                 call_settle_before_end=hook_caller("settle", early, isolated=True))


def only_if(key: Any, present: bool = True) -> Callable[[Callable], Callable]:
    """Mark a request-time implementation (of ``tollway_admit``, ``tollway_usage``,
    ``tollway_settle`` or ``tollway_finish``; under ``@hookimpl``) as idle for a request unless
    ``key`` (a ``proxy.StateKey``) is in ``call.state`` when its turn comes (``present=False``:
    unless it is not): the core then does not call it. For an implementation that has nothing
    to do on most requests; calling it would cost a coroutine (~1.5k instructions) to learn
    that. Whatever makes it needed must put the key in ``call.state`` (or take it out) by then;
    the implementation itself is unchanged and may still check."""
    def mark(fn: Callable) -> Callable:
        fn.tollway_only_if = (key, present)  # type: ignore[attr-defined]
        return fn
    return mark


def settles_before_end(fn: Callable) -> Callable:
    """Mark a ``tollway_settle`` implementation to run also right before the answer's last
    bytes when a plugin set ``call.response.settle_before_end`` (see ``proxy.answers.before_end``):
    it must then be idempotent, as it runs again after the answer."""
    fn.tollway_before_end = True  # type: ignore[attr-defined]
    return fn


def _adapt(fn: Callable, argnames: tuple[str, ...], short: str) -> Callable:
    """Let an implementation take fewer arguments than the spec (pluggy's rule)."""
    full = _HOOK_ARGS.get(short, ("call",))
    if argnames == full:
        return fn
    adapted = lambda *args: fn(**{k: v for k, v in zip(full, args, strict=True) if k in argnames})  # noqa: E731
    adapted.__wrapped__ = fn  # type: ignore[attr-defined]  # (its kind, async or not: ``is_async``)
    return adapted


# The request-time hooks whose implementations return None (the others answer a value, or None).
_RETURN_NONE = frozenset({*GATED_HOOKS, "attempt", "reroute"})


def _as_async(fn: Callable, short: str) -> Callable:
    """A plain ``def`` implementation as an async callable: its result awaited when it is an
    awaitable; a value where the hook returns None is a bug (``maybe_await`` names it)."""
    name, none_only = impl_name(fn), short in _RETURN_NONE

    async def run(*args: Any) -> Any:
        result = fn(*args)
        if result is None or (not none_only and not inspect.isawaitable(result)):
            return result
        return await maybe_await(result, short, name)
    return run


def collect(results: Iterable[Any]) -> dict:
    """Merge the dicts a start-up hook returned (earlier-registered first, so later ones win)."""
    merged: dict = {}
    for result in reversed(list(results)):
        if result:
            merged.update(result)
    return merged

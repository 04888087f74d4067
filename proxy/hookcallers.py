"""Each "all run, in order" request-time hook as one coroutine function, made at start-up.

``tollway_admit``, ``tollway_usage``, ``tollway_settle`` and ``tollway_finish`` run every
implementation in call order, each only when its ``only_if`` mark (``proxy.only_if``) says it
has work, checked at its turn. This module is the one place that rule is written: for each of
these hooks it writes, once, the source of a coroutine function that awaits the
implementations one after another, unrolled, with the marks as plain ``in`` tests, and compiles
it (as ``dataclasses`` writes its ``__init__``). The core awaits that one function per hook:
a loop over (function, key, present) triples costs ~15 bytecodes a turn before the call it
makes, which on the request path (~10 implementations a request) was more than the coroutine
the whole caller costs (measured in benchmarks/RESULTS.md, "Item 12, seventh pass").

For ``tollway_settle`` and ``tollway_finish`` an implementation that raises does not stop the
others: its exception is logged (throttled) and the next one runs; for ``tollway_admit`` and
``tollway_usage`` it propagates (a ``ProxyError`` there is the request's answer).

An implementation may be ``async def`` or a plain ``def`` (datasette's ``await_me_maybe``): the
kind is known at start-up, so an ``async def`` is awaited as it always was, and a plain one is
called, its result awaited only when it is not None (it must then be awaitable: ``maybe_await``).
A plain ``def`` that never awaits saves the coroutine an ``async def`` costs (~1.2k
instructions a call; benchmarks/RESULTS.md, "twelfth pass").
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .logs import throttled

log = logging.getLogger("tollway")

#: One implementation with its ``only_if`` mark: (the function, the StateKey or None, whether it must be present).
Gated = tuple[Callable, Any, bool]
#: A hook's caller: awaits its implementations for one call.
HookCaller = Callable[[Any], Awaitable[None]]


def hook_caller(hook: str, impls: Sequence[Gated], isolated: bool) -> HookCaller:
    """The caller of ``tollway_<hook>``'s ``impls`` (call order). ``isolated``: an implementation
    raising is logged and the next one still runs (settle, finish)."""
    names: dict[str, Any] = {"failed": _failure_logger(hook), "maybe_await": maybe_await}
    lines = [f"async def call_{hook}(call):"]
    if any(key is not None for _, key, _ in impls):
        lines.append("    state = call.state")
    for i, (fn, key, present) in enumerate(impls):
        names[f"fn{i}"] = fn
        indent = "    "
        if key is not None:
            names[f"key{i}"] = key
            lines.append(f"    if key{i} {'in' if present else 'not in'} state:")
            indent += "    "
        if is_async(fn):
            run = [f"await fn{i}(call)"]
        else:
            names[f"name{i}"] = impl_name(fn)
            run = [f"r = fn{i}(call)", "if r is not None:", f"    await maybe_await(r, {hook!r}, name{i})"]
        if isolated:
            lines += [f"{indent}try:", *(f"{indent}    {line}" for line in run),
                      f"{indent}except Exception:", f"{indent}    failed()"]
        else:
            lines += [f"{indent}{line}" for line in run]
    if not impls:
        lines.append("    return")
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<tollway_{hook} caller>", "exec"), names)  # (the source is ours: names are indices)
    caller: HookCaller = names[f"call_{hook}"]
    caller.__doc__ = f"tollway_{hook}'s implementations, in order:\n\n{source}"
    return caller


def is_async(fn: Callable) -> bool:
    """Whether ``fn`` (or the function it adapts: ``__wrapped__``) is an ``async def``."""
    return inspect.iscoroutinefunction(inspect.unwrap(fn))


def impl_name(fn: Callable) -> str:
    """An implementation's name for an error message: its module and qualified name."""
    fn = inspect.unwrap(fn)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


async def maybe_await(result: Any, hook: str, name: str) -> Any:
    """What a plain ``def`` implementation of a hook that returns None gave instead: awaited when
    it is awaitable (a ``def`` may hand back a coroutine), else a bug named as one."""
    if inspect.isawaitable(result):
        return await result
    raise TypeError(f"{name} (tollway_{hook}) returned {result!r}: "
                    "an implementation of this hook returns None (or an awaitable)")


def _failure_logger(hook: str) -> Callable[[], None]:
    """Logs the exception being handled as tollway_<hook>'s failure (called in an ``except`` block)."""
    def failed() -> None:
        throttled(log, logging.ERROR, f"{hook}_failed", f"tollway_{hook} failed", exc_info=True)
    return failed

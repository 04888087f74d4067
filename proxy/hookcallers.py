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
"""

from __future__ import annotations

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
    names: dict[str, Any] = {"failed": _failure_logger(hook)}
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
        if isolated:
            lines += [f"{indent}try:", f"{indent}    await fn{i}(call)",
                      f"{indent}except Exception:", f"{indent}    failed()"]
        else:
            lines.append(f"{indent}await fn{i}(call)")
    if not impls:
        lines.append("    return")
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<tollway_{hook} caller>", "exec"), names)  # (the source is ours: names are indices)
    caller: HookCaller = names[f"call_{hook}"]
    caller.__doc__ = f"tollway_{hook}'s implementations, in order:\n\n{source}"
    return caller


def _failure_logger(hook: str) -> Callable[[], None]:
    """Logs the exception being handled as tollway_<hook>'s failure (called in an ``except`` block)."""
    def failed() -> None:
        throttled(log, logging.ERROR, f"{hook}_failed", f"tollway_{hook} failed", exc_info=True)
    return failed

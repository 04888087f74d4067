"""The callers of the request-time hooks the core calls on every request, made at start-up.

``tollway_admit``, ``tollway_usage``, ``tollway_settle`` and ``tollway_finish`` run every
implementation in call order, each only when its ``only_if`` mark (``proxy.only_if``) says it
has work, checked at its turn; so does ``tollway_attempt`` (no marks). This module is the one
place that rule is written: for each of these hooks it writes, once, the source of a function
that calls the implementations one after another, unrolled, with the marks as plain ``in``
tests, and compiles it (as ``dataclasses`` writes its ``__init__``): a loop over (function,
key, present) triples costs ~15 bytecodes a turn before the call it makes (benchmarks/RESULTS.md,
"Item 12, seventh pass").

For ``tollway_settle`` and ``tollway_finish`` an implementation that raises does not stop the
others: its exception is logged (throttled) and the next one runs; for ``tollway_admit``,
``tollway_usage`` and ``tollway_attempt`` it propagates (a ``ProxyError`` there is the
request's answer).

An implementation may be ``async def`` or a plain ``def`` (datasette's ``await_me_maybe``): the
kind is known at start-up. The caller is a plain function: it calls the implementations in
turn as long as each is a plain ``def`` that returns None, and returns None; the first one
that is an ``async def``, or a plain one that returns something (it must be awaitable:
``maybe_await``), hands the call over to a coroutine that awaits that and runs the rest as the
caller would have, and the caller returns that coroutine for the core to await. So a hook whose
implementations never await costs no coroutine at all (~1.2k instructions each: the caller's
own and each ``async def`` implementation's; benchmarks/RESULTS.md, "twelfth pass"), and the
core awaits only what is awaitable: ``r = hooks.call_admit(call)``, ``if r is not None: await r``.

``tollway_authenticate`` and ``tollway_resolve`` ("the first non-None answer wins") get the
same kind of caller from ``first_answer_caller``: the answer itself, or the coroutine that
finishes the call.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import CoroutineType, GeneratorType
from typing import Any

from .logs import throttled

log = logging.getLogger("tollway")

#: One implementation with its ``only_if`` mark: (the function, the StateKey or None, whether it must be present).
Gated = tuple[Callable, Any, bool]
#: A hook's caller: runs its implementations for one call; what is left to await, or None.
HookCaller = Callable[..., Awaitable[None] | None]


def hook_caller(hook: str, impls: Sequence[Gated], isolated: bool, args: str = "call") -> HookCaller:
    """The caller of ``tollway_<hook>``'s ``impls`` (call order): a plain function of ``args``
    that returns None when every implementation it ran was a plain ``def`` that returned None,
    else the coroutine that finishes the call (the rest of the implementations, from the
    first one with something to await). ``isolated``: an implementation raising is logged and
    the next one still runs (settle, finish)."""
    names: dict[str, Any] = {"failed": _failure_logger(hook), "maybe_await": maybe_await,
                             "CoroutineType": CoroutineType}
    rest = [f"async def rest_{hook}({args}, pending, turn):"]
    now = [f"def call_{hook}({args}):"]
    if any(key is not None for _, key, _ in impls):
        rest.append("    state = call.state")
        now.append("    state = call.state")
    # (a coroutine, an async def's above all, awaited as it is: no checking coroutine around it)
    waited = ["if type(pending) is CoroutineType:", "    await pending", "else:",
              f"    await maybe_await(pending, {hook!r}, names[turn])"]
    rest += _guarded(waited, "    ", isolated)
    for i, (fn, key, present) in enumerate(impls):
        names[f"fn{i}"] = fn
        indent = "    "
        gate: list[str] = []
        if key is not None:
            names[f"key{i}"] = key
            gate = [f"if key{i} {'in' if present else 'not in'} state:"]
        # the rest: this implementation, when the call was handed over before its turn
        if is_async(fn):
            run = [f"await fn{i}({args})"]
        else:
            run = [f"r = fn{i}({args})", "if r is not None:", f"    await maybe_await(r, {hook!r}, names[{i}])"]
        if i:  # (the first one's turn is never after the hand-over)
            rest.append(f"    if turn < {i}:")
            rest += [f"        {line}" for line in gate]
            rest += _guarded(run, "        " + ("    " if gate else ""), isolated)
        # now: called at once; anything to await hands the call over to the rest
        now += [f"    {line}" for line in gate]
        indent = "    " + ("    " if gate else "")
        hand_over = f"return rest_{hook}({args}, r, {i})"
        if is_async(fn):
            now += _guarded([f"r = fn{i}({args})"], indent, isolated, [hand_over])
        else:
            now += _guarded([f"r = fn{i}({args})"], indent, isolated, ["if r is not None:", f"    {hand_over}"])
    now.append("    return None")
    names["names"] = tuple(impl_name(fn) for fn, _, _ in impls)
    source = "\n".join(rest) + "\n\n\n" + "\n".join(now) + "\n"
    exec(compile(source, f"<tollway_{hook} caller>", "exec"), names)  # (the source is ours: names are indices)
    caller: HookCaller = names[f"call_{hook}"]
    caller.__doc__ = f"tollway_{hook}'s implementations, in order:\n\n{source}"
    return caller


def _guarded(lines: list[str], indent: str, isolated: bool, after: Sequence[str] = ()) -> list[str]:
    """``lines`` at ``indent``, then ``after`` when they did not raise; ``isolated``: an
    exception they raise is logged (``failed()``) instead of propagating."""
    if not isolated:
        return [f"{indent}{line}" for line in (*lines, *after)]
    out = [f"{indent}try:", *(f"{indent}    {line}" for line in lines), f"{indent}except Exception:",
           f"{indent}    failed()"]
    if after:
        out += [f"{indent}else:", *(f"{indent}    {line}" for line in after)]
    return out


def first_answer_caller(hook: str, impls: Sequence[Callable]) -> Callable[[Any], Any]:
    """The caller of a "first non-None answer wins" hook (``tollway_authenticate``,
    ``tollway_resolve``): a plain function of the call that returns the first answer of
    ``impls`` (call order), or None, as long as the implementations it ran were plain ``def``s
    that answered at once; when one is an ``async def``, or a plain one returns an awaitable
    (``inspect.isawaitable``), it returns the coroutine that finishes the call (awaits that,
    then asks the rest), whose value is the answer. An answer is never a coroutine, so
    ``type(result) is CoroutineType`` tells the two apart."""
    names: dict[str, Any] = {"answers": _ANSWER_TYPES, "awaits": _awaits}
    rest = [f"async def rest_{hook}(call, pending, turn):", "    r = await pending",
            "    if r is not None:", "        return r"]
    now = [f"def first_{hook}(call):"]
    handed_over = False
    for i, fn in enumerate(impls):
        names[f"fn{i}"] = fn
        if i:  # (the first one's turn is never after the hand-over)
            rest += [f"    if turn < {i}:", f"        r = fn{i}(call)"]
            if is_async(fn):
                rest += ["        r = await r"]
            else:
                rest += ["        if type(r) not in answers and awaits(r):", "            r = await r"]
            rest += ["        if r is not None:", "            return r"]
        if handed_over:
            continue  # (its turn: the coroutine's)
        if is_async(fn):
            now.append(f"    return rest_{hook}(call, fn{i}(call), {i})")
            handed_over = True
        else:
            now += [f"    r = fn{i}(call)", "    if r is not None:", "        if type(r) not in answers and awaits(r):",
                    f"            return rest_{hook}(call, r, {i})", "        return r"]
    if not handed_over:
        now.append("    return None")
    rest.append("    return None")
    source = "\n".join(rest) + "\n\n\n" + "\n".join(now) + "\n"
    exec(compile(source, f"<tollway_{hook} caller>", "exec"), names)  # (the source is ours: names are indices)
    caller: Callable[[Any], Any] = names[f"first_{hook}"]
    caller.__doc__ = f"tollway_{hook}'s first answer:\n\n{source}"
    return caller


#: The types of the answers plain implementations gave that were not awaitable (a Route, a key
#: record, ...): one set lookup tells the next one of them apart (``isawaitable`` tests an ABC).
_ANSWER_TYPES: set[type] = set()


def _awaits(answer: Any) -> bool:
    """Whether a plain implementation's answer is an awaitable (a ``def`` may hand one back);
    when not, its type is remembered (``_ANSWER_TYPES``)."""
    if inspect.isawaitable(answer):
        return True
    if type(answer) is not GeneratorType and len(_ANSWER_TYPES) < 256:  # (a generator may be awaitable or not)
        _ANSWER_TYPES.add(type(answer))
    return False


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

"""The hook callers (``proxy/hookcallers.py``): what the core awaits for ``tollway_admit``,
``tollway_usage``, ``tollway_settle`` and ``tollway_finish``.

Held against the loops they replaced (the gated ``(fn, key, present)`` loops of
``proxy/pipeline.py`` before, copied here) on generated hooks: the same implementations called
in the same order with the same ``call.state`` at each turn, the same exception out of admit and
usage, the same failures logged (and the others still run) in settle and finish. Then through the
real server: a settle and a finish implementation that raise are logged with their traceback and
the implementations after them still run, and the answer is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import random
from functools import partial
from types import CoroutineType, SimpleNamespace

import openai
from conftest import base_config

import proxy.hookcallers
from proxy import hookimpl
from proxy.hookcallers import first_answer_caller, hook_caller, is_async
from proxy.plugins import _as_async

KEYS = ("a", "b", "c")


async def _old_plain(gated, call) -> None:
    """admit / usage before: the gated loop, an exception propagating."""
    state = call.state
    for hook, key, present in gated:
        if key is None or (key in state) is present:
            await hook(call)


async def _old_isolated(gated, call, failed) -> None:
    """settle / finish before: the gated loop, each implementation's exception logged."""
    state = call.state
    for hook, key, present in gated:
        if key is not None and (key in state) is not present:
            continue
        try:
            await hook(call)
        except Exception:
            failed()


KINDS = ("async", "plain", "plain returning a coroutine", "plain returning a value")


def _impls(rng: random.Random, log: list, answers: bool = False) -> list:
    """Up to six implementations, each marked or not (not for ``answers``), of one of the
    ``KINDS``; each notes its turn (and the state it saw), may put a key in the state or take
    one out, and may raise. With ``answers`` (a first-answer hook), each may answer a value."""
    impls = []
    for i in range(rng.randrange(7)):
        key = None if answers else rng.choice((None, None, *KEYS))
        present = rng.random() < 0.6
        adds = rng.choice((None, *KEYS))
        drops = rng.choice((None, *KEYS))
        raises = rng.choice((None, None, None, ValueError, KeyError))
        kind = rng.choice(KINDS if answers else KINDS + KINDS[:3])  # (a value where None is due: rarer)
        answer = rng.choice((None, None, f"answer {i}")) if answers else None

        def work(call, i=i, adds=adds, drops=drops, raises=raises, answer=answer):
            log.append((i, tuple(sorted(call.state))))
            if adds is not None:
                call.state[adds] = True
            if drops is not None:
                call.state.pop(drops, None)
            if raises is not None:
                raise raises(i)
            return answer

        async def deferred(call, work=work):
            return work(call)

        if kind == "async":
            impl = deferred
        elif kind == "plain":
            impl = work
        elif kind == "plain returning a coroutine":
            def impl(call, deferred=deferred):
                return deferred(call)
        else:
            def impl(call, work=work):
                work(call)
                return 5  # (not an awaitable: a bug the caller names)
        impls.append((impl, key, present))
    return impls


async def _error_of(start) -> str | None:
    """What a caller let out (admit, usage: an implementation's exception) when started with
    ``start()`` and its result awaited when there is one to await."""
    try:
        pending = start()
        if pending is not None:
            await pending
    except Exception as exc:
        return f"{type(exc).__name__}{exc.args}"
    return None


def _noting(failures: list):
    """A stand-in for ``throttled``: notes the line's key, message and exc_info."""
    def throttled(_log, _level, key, msg, exc_info=None) -> None:
        failures.append((key, msg, exc_info))
    return throttled


def test_hook_callers_call_what_the_loops_called(monkeypatch) -> None:
    async def check() -> None:
        rng = random.Random(24)
        for _ in range(3_000):
            seed = rng.random()
            start = {k: True for k in KEYS if rng.random() < 0.5}
            isolated = rng.random() < 0.5
            hook = "settle" if isolated else "admit"
            outcomes = []
            for new in (False, True):
                log: list = []
                failures: list = []
                impls = _impls(random.Random(seed), log)
                call = SimpleNamespace(state=dict(start))
                if new:
                    monkeypatch.setattr(proxy.hookcallers, "throttled", _noting(failures))
                    error = await _error_of(partial(hook_caller(hook, impls, isolated), call))
                else:
                    # (the loops awaited each implementation as the hook tuples still hold it: ``_as_async``)
                    impls = [(fn if is_async(fn) else _as_async(fn, hook), key, present) for fn, key, present in impls]
                    if isolated:
                        old_failed = partial(failures.append, ("settle_failed", "tollway_settle failed", True))
                        error = await _error_of(partial(_old_isolated, impls, call, old_failed))
                    else:
                        error = await _error_of(partial(_old_plain, impls, call))
                outcomes.append((log, failures, sorted(call.state), error))
            assert outcomes[0] == outcomes[1], (isolated, start)

    asyncio.run(check())


async def _old_first_answer(impls, call):
    """authenticate / resolve before: the loop over the async-wrapped implementations."""
    for fn in impls:
        answer = await fn(call)
        if answer is not None:
            return answer
    return None


def test_first_answer_callers_answer_what_the_loops_answered() -> None:
    async def check() -> None:
        rng = random.Random(7)
        for _ in range(3_000):
            seed = rng.random()
            outcomes = []
            for new in (False, True):
                log: list = []
                impls = [fn for fn, _, _ in _impls(random.Random(seed), log, answers=True)]
                call = SimpleNamespace(state={})
                try:
                    if new:
                        answer = first_answer_caller("resolve", impls)(call)
                        if type(answer) is CoroutineType:
                            answer = await answer
                    else:
                        answer = await _old_first_answer(
                            [fn if is_async(fn) else _as_async(fn, "resolve") for fn in impls], call)
                except Exception as exc:
                    answer = f"{type(exc).__name__}{exc.args}"
                outcomes.append((log, sorted(call.state), answer))
            assert outcomes[0] == outcomes[1], seed

    asyncio.run(check())


def test_the_attempt_caller_passes_its_three_arguments() -> None:
    seen = []

    def plain(call, route, error):
        seen.append(("plain", call, route, error))

    async def later(call, route, error):
        seen.append(("async", call, route, error))

    assert hook_caller("attempt", [(plain, None, True)], False, "call, route, error")("c", "r", None) is None
    pending = hook_caller("attempt", [(later, None, True), (plain, None, True)], False, "call, route, error")(
        "c", "r", "e")
    asyncio.run(pending)
    assert seen == [("plain", "c", "r", None), ("async", "c", "r", "e"), ("plain", "c", "r", "e")]


class Raising:
    """Settle and finish implementations that raise, run before the recorder's (tryfirst)."""

    @hookimpl(tryfirst=True)
    async def tollway_settle(self, call):
        raise RuntimeError("settle broke")

    @hookimpl(tryfirst=True)
    async def tollway_finish(self, call):
        raise RuntimeError("finish broke")


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    async def tollway_settle(self, call):
        self.seen.append(f"settle {call.response.status}")

    @hookimpl
    async def tollway_finish(self, call):
        self.seen.append(f"finish {call.response.status}")


async def test_a_raising_settle_or_finish_is_logged_and_the_next_ones_run(start_gateway, caplog) -> None:
    recorder = Recorder()
    running = await start_gateway(base_config(), plugins=[recorder, Raising()])
    with caplog.at_level(logging.ERROR, logger="tollway"):
        async with openai.AsyncOpenAI(base_url=running.url, api_key="k", max_retries=0) as client:
            r = await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "hi"
    assert recorder.seen == ["settle 200", "finish 200"]
    failed = {(rec.getMessage(), rec.exc_info[1].args[0]) for rec in caplog.records if rec.exc_info}
    assert failed == {("tollway_settle failed", "settle broke"), ("tollway_finish failed", "finish broke")}

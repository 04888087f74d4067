"""The rate limiter's admit takes ``tokens_estimate``'s estimate of a request's tokens, and its
settle corrects the tokens rules in memory as ``MemoryCounters.adjust`` does: held here to the
two functions, on generated bodies (caps of each kind, ``n``, a body changed by a plugin, a
unit-priced call) and usages (above, below and at the estimate, none, a failed answer)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import orjson

from plugins.accounts.claims import run_admission
from plugins.accounts.counters import MemoryCounters
from plugins.accounts.estimate import tokens_estimate
from plugins.accounts.model import Account, KeyRecord, Limits
from plugins.ratelimit import TAKEN, Plugin
from proxy.call import Call, Units, Usage


def _plugin() -> tuple[Plugin, MemoryCounters]:
    plugin = Plugin()
    counters = MemoryCounters()
    plugin.counters = counters
    plugin._tat_of = counters.tats.get
    account = Account("a", 10**12)
    plugin.accounts = SimpleNamespace(accounts={"a": account}, account_of=lambda key: account)  # type: ignore[assignment]
    return plugin, counters


KEY = KeyRecord(id="k", name="k", hash="h", prefix="p", account_id="a", models=None,
                limits=Limits(rpm=10**9, tpm=10**12, rpd=10**9), expires_at=None, disabled=False, metadata={},
                source="api", created_at=0.0)


def _body(rng: random.Random) -> dict:
    body: dict = {"model": "m", "messages": [{"role": "user", "content": "x" * rng.choice((0, 1, 3, 4, 5, 400))}]}
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if rng.random() < 0.3:
            body[name] = rng.choice((0, 1, 64, 4096, -3, True, 2.5, None))
    if rng.random() < 0.2:
        body["n"] = rng.choice((1, 2, 3, 129, "2"))
    return body


def test_the_estimate_taken_is_tokens_estimate() -> None:
    rng = random.Random(17)
    plugin, _ = _plugin()
    for i in range(3_000):
        body = _body(rng)
        raw = orjson.dumps(body) if rng.random() < 0.9 else b"{}"
        call = Call(None, "chat", body, raw)
        call.principal = KEY
        if rng.random() < 0.15:
            call.set_body({**body, "max_tokens": rng.choice((7, 900))})
        if rng.random() < 0.1:
            call.billing.units = Units(images=1)
        plugin.tollway_admit(call)
        assert run_admission(plugin.counters, call) is None
        assert call.state[TAKEN][1] == tokens_estimate(call), (i, body, call.body_changed, call.billing.units)


def test_settle_corrects_the_tokens_rules_as_adjust_does() -> None:
    rng = random.Random(19)
    plugin, counters = _plugin()
    reference = MemoryCounters()
    for i in range(3_000):
        body = _body(rng)
        call = Call(None, "chat", body, orjson.dumps(body))
        call.principal = KEY
        plugin.tollway_admit(call)
        run_admission(plugin.counters, call)
        rules, estimate = call.state[TAKEN]
        reference.tats = dict(counters.tats)
        if rng.random() < 0.1:  # a TAT the counters no longer have (forgotten): nothing to correct
            for rule in rules:
                counters.tats.pop(rule.state, None)
                reference.tats.pop(rule.state, None)
        call.response.status = rng.choice((200, 200, 200, 500))
        actual = rng.choice((0, 1, estimate - 1, estimate, estimate + 1, 10**6))
        call.billing.usage = Usage(actual // 2, actual - actual // 2) if rng.random() < 0.9 else None
        plugin.tollway_settle(call)
        usage = call.billing.usage
        if usage is not None:
            delta = usage.prompt_tokens + usage.completion_tokens - estimate
        elif call.response.status != 200:
            delta = -estimate
        else:
            delta = 0
        if delta:
            reference.adjust(rules, delta)
        assert counters.tats == reference.tats, i

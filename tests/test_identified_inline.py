"""``identified`` resolves a call through ``_resolved`` (it once wrote the usual way out inline):
held here to ``_resolved`` for every way out of it: a route answered at once,
none (404), one awaited, a call without a model (the caller's default), a Responses call."""

from __future__ import annotations

import asyncio
from types import CoroutineType, SimpleNamespace

import pytest

from proxy import ProxyError
from proxy.call import Call
from proxy.identify import NO_MODEL, _resolved, identified


def _gateway(answer: object) -> SimpleNamespace:
    async def later(call: Call) -> object:
        return answer

    def first_resolve(call: Call) -> object:
        return later(call) if isinstance(answer, str) and answer == "later" else answer

    return SimpleNamespace(hooks=SimpleNamespace(first_resolve=first_resolve, first_authenticate=lambda call: None),
                           config=SimpleNamespace(server=SimpleNamespace(default_model=None)))


def _outcome(fn, gateway: SimpleNamespace, call: Call) -> object:  # noqa: ANN001
    try:
        pending = fn(gateway, call)
    except ProxyError as exc:
        return ("error", exc.status, exc.code)
    if pending is not None:
        assert type(pending) is CoroutineType
        try:
            asyncio.run(pending)
        except ProxyError as exc:
            return ("later error", exc.status, exc.code)
        return ("later", call.route)
    return ("now", call.route)


@pytest.mark.parametrize("answer", ["route", None, "later"])
def test_identified_resolves_as_resolved_does(answer: object) -> None:
    for model in ("bench", ""):
        outcomes = []
        for fn in (lambda g, c: identified(g, c), _resolved):
            call = Call(None, "chat", {"model": model}, b"{}")
            call.principal = SimpleNamespace(id="k", account_id="a")
            outcomes.append(_outcome(fn, _gateway(answer), call))
        assert outcomes[0] == outcomes[1], (answer, model)
    assert identified(_gateway("route"), Call(None, "chat", {"model": "m"}, b"{}"), resolve=False) is None


def test_the_other_ways_still_go_through_resolved() -> None:
    call = Call(None, "chat", {"model": "m"}, b"{}")
    call.model = NO_MODEL  # no model in the body, no default anywhere: the dialect's own 400
    call.principal = SimpleNamespace(id="k", account_id="a", default_model=None)
    gateway = _gateway("route")
    gateway.dialects = {"openai": SimpleNamespace(validate=lambda body: None)}
    with pytest.raises(ProxyError) as exc:
        identified(gateway, call)
    assert exc.value.status == 400 and exc.value.code == "missing_model"

"""A new call's billing, response and timing, and the usual usage read from an upstream, are
made without their dataclasses' ``__init__`` (fields set in place, a Python frame less
each): they must be exactly what the dataclasses make, every field set, and the usage's
range checks the same as ``Usage.__post_init__``'s."""

from __future__ import annotations

import dataclasses
import random

from proxy.call import REQUEST_ID_HEADER, Billing, Call, ResponseState, Timing, Usage


def _fields(obj: object) -> dict:
    """Every field's value (a field left unset raises AttributeError here)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]


def test_a_new_call_has_the_dataclasses_defaults() -> None:
    call = Call(None, "chat", {"model": "m", "stream": True}, b"{}")
    assert type(call.billing) is Billing and _fields(call.billing) == _fields(Billing())
    assert type(call.response) is ResponseState
    assert _fields(call.response) == _fields(ResponseState({REQUEST_ID_HEADER: call.id}))
    assert type(call.timing) is Timing
    fresh = Timing()
    assert _fields(call.timing) == {**_fields(fresh), "started": call.timing.started}
    assert type(call.timing.started) is float and call.timing.started <= fresh.started
    # each call its own mutable parts
    other = Call(None, "chat", {"model": "m"}, b"{}")
    assert other.billing.usage_extra is not call.billing.usage_extra
    assert other.response.headers is not call.response.headers and list(other.response.headers) == [REQUEST_ID_HEADER]
    call.billing.usage_extra["cost"] = 1
    assert other.billing.usage_extra == {}


def _reference(usage: object) -> Usage | None:
    """``Usage.from_openai``'s answer for two integer counts, by the dataclass and its checks."""
    assert isinstance(usage, dict)
    try:
        return Usage(usage["prompt_tokens"], usage["completion_tokens"])
    except ValueError:
        return None


def test_the_usual_usage_is_what_the_dataclass_makes() -> None:
    top = Usage.MAX_TOKENS
    edges = [0, 1, 12, 52, 4096, top - 1, top, top + 1, -1, -(10**20), 10**30]
    rng = random.Random(11)
    for _ in range(5_000):
        usage = {"prompt_tokens": rng.choice(edges + [rng.randrange(0, top)]),
                 "completion_tokens": rng.choice(edges + [rng.randrange(0, top)])}
        if rng.random() < 0.2:
            usage["total_tokens"] = 3
        got = Usage.from_openai(usage)
        want = _reference(usage)
        assert got == want, usage
        if got is not None:
            assert type(got) is Usage and _fields(got) == _fields(want)
            assert got.total_tokens == usage["prompt_tokens"] + usage["completion_tokens"]


class _MyUsage(Usage):
    pass


def test_a_subclass_is_made_by_its_own_init() -> None:
    got = _MyUsage.from_openai({"prompt_tokens": 3, "completion_tokens": 4})
    assert type(got) is _MyUsage and got == _MyUsage(3, 4)

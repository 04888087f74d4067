"""The business plugins' per-request shortcuts answer what the code they replace answered.

``Limits.empty`` and ``Budgets.caps`` are plain attributes set at construction (they were
``cached_property``s, computed on the first read): each is held to that definition on
generated limits and budgets, an invalid cap still raises its error where ``caps`` is used,
and neither is a field (the config schema, ``==``, ``repr`` and ``dataclasses.replace`` see
what they saw). The rate limiter's plan memo is keyed by key id then model (no tuple a
request): a plan is reused for the same key, model and limits, and made again when any of
them changes."""

from __future__ import annotations

import dataclasses
import random

import pytest

from plugins.accounts.model import PERIODS, Budgets, KeyRecord, Limits, ModelLimits
from plugins.accounts.money import MoneyError, usd_to_micro
from plugins.ratelimit import NO_LIMITS, Plugin


def _old_empty(limits: Limits) -> bool:
    """``Limits.empty`` as the cached_property computed it."""
    return not limits.to_dict()


def _old_caps(budgets: Budgets) -> tuple[tuple[str, int], ...]:
    """``Budgets.caps`` as the cached_property computed it (raising for a cap that is no amount)."""
    return tuple((name, usd_to_micro(getattr(budgets, name))) for name in PERIODS
                 if getattr(budgets, name) is not None)


def test_limits_empty_is_what_it_was() -> None:
    rng = random.Random(3)
    values = [None, None, None, 1, 60, 10**12, 0, -1]
    for _ in range(5_000):
        models = {f"m{i}": ModelLimits(rpm=rng.choice(values), tpm=rng.choice(values), rpd=rng.choice(values))
                  for i in range(rng.choice((0, 0, 1, 2)))}
        limits = Limits(rpm=rng.choice(values), tpm=rng.choice(values), rpd=rng.choice(values),
                        concurrency=rng.choice(values), models=models)
        assert limits.empty is _old_empty(limits), limits
        again = dataclasses.replace(limits, rpm=rng.choice(values))
        assert again.empty is _old_empty(again), again
    assert Limits().empty is True and NO_LIMITS.empty is True
    assert Limits(models={"m": ModelLimits()}).empty is False  # (a model named, even without values: as before)


def test_budgets_caps_are_what_they_were_and_an_invalid_cap_raises_on_use() -> None:
    rng = random.Random(5)
    values = [None, None, 0, 0.5, 1, 12.25, 100.0, 0.000001, 10**6]
    for _ in range(5_000):
        budgets = Budgets(daily=rng.choice(values), weekly=rng.choice(values), monthly=rng.choice(values))
        assert budgets.caps == _old_caps(budgets), budgets
        assert type(budgets.caps) is tuple
    for bad in (0.0000001, float("nan")):
        budgets = Budgets(daily=5.0, monthly=bad)
        assert budgets.problems()  # reported as before
        with pytest.raises(MoneyError):
            _old_caps(budgets)
        with pytest.raises(MoneyError):
            bool(budgets.caps)
        with pytest.raises(MoneyError):
            list(budgets.caps)


def test_the_attributes_are_no_fields() -> None:
    assert [f.name for f in dataclasses.fields(Limits)] == ["rpm", "tpm", "rpd", "concurrency", "models"]
    assert [f.name for f in dataclasses.fields(Budgets)] == ["daily", "weekly", "monthly"]
    assert Limits(rpm=5) == Limits(rpm=5) and Limits(rpm=5) != Limits()
    assert repr(Budgets(daily=1.0)) == "Budgets(daily=1.0, weekly=None, monthly=None)"
    assert repr(Limits(rpm=5)) == "Limits(rpm=5, tpm=None, rpd=None, concurrency=None, models={})"
    assert dataclasses.replace(Budgets(daily=1.0), daily=2.0).caps == (("daily", 2_000_000),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Limits().empty = False  # type: ignore[misc]


def _key(kid: str, limits: Limits) -> KeyRecord:
    return KeyRecord(id=kid, name=kid, hash="h", prefix="p", account_id="a", models=None, limits=limits,
                     expires_at=None, disabled=False, metadata={}, source="api", created_at=0.0)


def test_the_plan_memo_by_key_then_model() -> None:
    plugin = Plugin()
    limits = Limits(rpm=10, tpm=1000, models={"m": ModelLimits(rpm=2)})
    a, b = _key("k1", limits), _key("k2", limits)
    plan = plugin._plan_of(a, "m")
    assert plugin._plan_of(a, "m") is plan
    assert [r.state for r in plan.rules] == [("k1", "", "rpm"), ("k1", "", "tpm"), ("k1", "m", "rpm")]
    other = plugin._plan_of(a, "n")
    assert other is not plan and [r.state for r in other.rules] == [("k1", "", "rpm"), ("k1", "", "tpm")]
    assert plugin._plan_of(a, "m") is plan  # (the other model's plan did not replace it)
    assert plugin._plan_of(b, "m") is not plan and plugin._plan_of(b, "m").rules[0].state == ("k2", "", "rpm")
    a.limits = Limits(rpm=20)  # a key edited: a new plan
    edited = plugin._plan_of(a, "m")
    assert edited is not plan and [(r.state, r.limit) for r in edited.rules] == [(("k1", "", "rpm"), 20)]
    shared = Limits(rpm=7)
    with_account = plugin._plan_of(a, "m", shared, "acme")
    assert with_account is not edited and with_account.rules[-1].state == ("acct:acme", "", "rpm")
    assert plugin._plan_of(a, "m", shared, "acme") is with_account
    assert plugin._planned == 3  # (k1/m, k1/n, k2/m: k1/m, made again twice, counts once)


def test_the_plan_memo_stays_bounded() -> None:
    plugin = Plugin()
    plugin._planned = 100_000 - 1
    first = plugin._plan_of(_key("k", Limits(rpm=1)), "m")
    assert plugin._planned == 100_000
    plugin._plan_of(_key("j", Limits(rpm=1)), "m")  # at the bound: the memo starts again
    assert plugin._planned == 1 and list(plugin._plans) == ["j"]
    assert plugin._plan_of(_key("k", Limits(rpm=1)), "m") is not first

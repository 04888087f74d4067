"""``proxy.only_if``: an implementation marked idle unless a state key is there (or is not)
is not called, and is called whenever the key says it has work; checked at its turn.

Through an ad-hoc plugin and the real server; then the built-ins that use it (the ledger's,
quotas' and the rate limiter's finish, both ``admit_claims``) still do their work when it is due.
"""

from __future__ import annotations

import openai
import pytest
from conftest import base_config

from plugins.accounts import ACCOUNTS
from plugins.accounts.counters import COUNTERS
from proxy import ConfigError, StateKey, hookimpl, only_if
from proxy.gateway import build_gateway

MESSAGES = [{"role": "user", "content": "hello there"}]
MARKED: StateKey[bool] = StateKey("test.marked")


class Marks:
    """Marks a call (in ``tollway_admit``) when its body's ``user`` is ``mark``; its other
    implementations say, by ``only_if``, which calls they are for, and note each call."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @hookimpl(tryfirst=True)
    async def tollway_admit(self, call):
        if call.body.get("user") == "mark":
            call.state[MARKED] = True

    @hookimpl(specname="tollway_admit")
    @only_if(MARKED)  # checked after the first admit ran: sees its mark
    async def admit_marked(self, call):
        self.seen.append(("admit", call.body.get("user", "")))

    @hookimpl
    @only_if(MARKED)
    async def tollway_usage(self, call):
        self.seen.append(("usage", call.body.get("user", "")))

    @hookimpl
    @only_if(MARKED, present=False)
    async def tollway_settle(self, call):
        self.seen.append(("settle", call.body.get("user", "")))

    @hookimpl
    @only_if(MARKED)
    async def tollway_finish(self, call):
        self.seen.append(("finish", call.body.get("user", "")))


async def test_only_if_calls_an_implementation_only_when_its_key_says_so(start_gateway):
    marks = Marks()
    running = await start_gateway(base_config(), plugins=[marks])
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k", max_retries=0) as client:
        for user in ("mark", "plain"):
            r = await client.chat.completions.create(model="echo", messages=MESSAGES, user=user)
            assert r.choices[0].message.content == "hello there"
    assert marks.seen == [("admit", "mark"), ("usage", "mark"), ("finish", "mark"), ("settle", "plain")]


class ResolvesOnlyIf:
    @hookimpl
    @only_if(MARKED)
    async def tollway_resolve(self, call):
        return None


def test_only_if_on_a_hook_the_core_does_not_gate_stops_start_up():
    with pytest.raises(ConfigError, match="only_if marks implementations of tollway_admit.*not tollway_resolve"):
        build_gateway(base_config(), extra_plugins=[ResolvesOnlyIf()])


def limited_config(**limits) -> dict:
    return base_config(
        plugins={"enabled": ["auth", "ratelimit", "quotas", "pricing", "ledger"]},
        keys=[{"name": "alice", "key": "sk-tollway-alice", "credits": 10.0, "limits": limits}],
    )


async def test_the_built_ins_idle_finish_still_frees_what_a_call_holds(start_gateway):
    """A key with a concurrency limit of 1: the slot is freed at each call's finish (the rate
    limiter's, marked only_if its slot is held), so calls one after another all pass; the
    credit held at admission is charged and released (quotas'); refusals before admission
    get their ledger row (the ledger's finish, marked only_if the call has none yet)."""
    running = await start_gateway(limited_config(concurrency=1))
    gateway = running.gw
    async with openai.AsyncOpenAI(base_url=running.url, api_key="sk-tollway-alice", max_retries=0) as client:
        for _ in range(3):
            r = await client.chat.completions.create(model="echo", messages=MESSAGES)
            assert r.choices[0].message.content == "hello there"
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=MESSAGES)
    counters = gateway.services.get(COUNTERS)
    accounts = gateway.services.get(ACCOUNTS)
    key = accounts.key_for("sk-tollway-alice")
    assert counters.in_flight.get(key.id, 0) == 0
    account = accounts.account_of(key)
    assert account.reserved == 0 and 0 < 10_000_000 - account.balance < 1_000
    await accounts.writer.flush()
    rows = await gateway.store.fetchall("select status from tollway_ledger order by time")
    assert [r[0] for r in rows] == [200, 200, 200, 404]

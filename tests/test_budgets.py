"""Budgets per key and per account: calendar periods in a time zone, 429 budget_exceeded
with a reset the headers and the message agree on, 402 for a suspended account, no
overspend under a burst, and what was spent before a restart still counts."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

import aiohttp
import openai
import orjson
import pytest
from business import ADMIN_HEADERS, admin, bearer, biz_config, chat, credits
from stores import ENGINES, fresh_database

from plugins.accounts import ACCOUNTS
from plugins.accounts.periods import period_at
from proxy.gateway import build_gateway
from proxy.schema import ConfigError

PRICE = 8000  # 8 completion tokens (the mock upstream's answer) at $1000 per 1M; input free
PARIS = ZoneInfo("Europe/Paris")
KEY_A, KEY_B = "sk-budget-key-a-0001", "sk-budget-key-b-0002"


def paid_config(upstream: str, keys: list[dict], **sections) -> dict:
    config = biz_config(upstream, keys=keys)
    config["models"]["up"]["price"] = {"input": 0, "output": 1000}
    config["billing"] = {"timezone": "Europe/Paris"}
    config.update(sections)
    return config


class Clock:
    """The budgets' clock, moved by the test (no sleeps)."""

    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def use_clock(running, clock: Clock) -> None:
    running.gw.services[ACCOUNTS].budgets.clock = clock


def next_year(month: int, day: int, hour: int, minute: int, second: int = 0) -> datetime:
    # A date in the future: the counters forget a period's total after its end (real time).
    return datetime(datetime.now().year + 1, month, day, hour, minute, second, tzinfo=PARIS)


async def paid(session, running, key: str, **kw):
    return await chat(session, running, key, model="up", max_tokens=8, **kw)


async def test_daily_key_budget_runs_out_and_resets_at_local_midnight(start_gateway, mock_upstream):
    config = paid_config(mock_upstream.url, [{"name": "a", "key": KEY_A, "credits": 1.0,
                                              "budgets": {"daily": 3 * PRICE / 1e6}}])
    running = await start_gateway(config)
    clock = Clock(next_year(3, 10, 23, 59, 30))  # 30 s before midnight in Paris
    use_clock(running, clock)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            status, _, body = await paid(s, running, KEY_A)
            assert status == 200, body
        status, headers, body = await paid(s, running, KEY_A)
        assert status == 429
        assert body["error"]["code"] == "budget_exceeded"
        assert body["error"]["type"] == "rate_limit_error"
        assert headers["Retry-After"] == "30"
        midnight = next_year(3, 11, 0, 0)
        assert headers["X-RateLimit-Reset"] == midnight.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
        message = body["error"]["message"]
        assert "daily budget of key 'a' is $0.024000" in message
        assert "$0.024000 of it is spent" in message
        assert midnight.isoformat() in message and "(in 30s)" in message

        # The customer sees the same reset on /v1/credits.
        mine = await credits(s, running, KEY_A)
        [budget] = mine["budgets"]
        assert (budget["period"], budget["limit_micro_usd"], budget["remaining_micro_usd"]) == ("daily", 3 * PRICE, 0)
        assert budget["resets_at"] == midnight.timestamp()

        clock.now = midnight.timestamp()  # the next day: the budget is whole again
        for _ in range(3):
            status, _, body = await paid(s, running, KEY_A)
            assert status == 200, body
        status, _, body = await paid(s, running, KEY_A)
        assert status == 429 and body["error"]["code"] == "budget_exceeded"
        assert (await credits(s, running, KEY_A))["spent_micro_usd"] == 6 * PRICE


async def test_account_budget_is_shared_by_its_keys_and_a_suspended_account_pays_nothing(start_gateway,
                                                                                       mock_upstream, close_at_end):
    keys = [{"name": "a", "key": KEY_A, "account": "acme"}, {"name": "b", "key": KEY_B, "account": "acme"}]
    accounts = {"acme": {"credits": 1.0, "budgets": {"weekly": 5 * PRICE / 1e6, "monthly": 100}},
                "frozen": {"credits": 1.0, "suspended": True}}
    keys.append({"name": "c", "key": "sk-budget-key-c-0003", "account": "frozen"})
    running = await start_gateway(paid_config(mock_upstream.url, keys, accounts=accounts))
    sunday = next(d for d in range(7, 14) if next_year(6, d, 12, 0).weekday() == 6)
    clock = Clock(next_year(6, sunday, 12, 0))  # a Sunday noon: the week ends at midnight
    use_clock(running, clock)
    sdk_a = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=KEY_A, max_retries=0))
    sdk_b = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=KEY_B, max_retries=0))
    for sdk in (sdk_a, sdk_b, sdk_a, sdk_b, sdk_a):
        await sdk.chat.completions.create(model="up", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as refused:
        await sdk_b.chat.completions.create(model="up", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "budget_exceeded"
    assert "weekly budget of account 'acme'" in refused.value.message
    monday = next_year(6, sunday + 1, 0, 0)
    assert refused.value.response.headers["Retry-After"] == str(int(monday.timestamp() - clock.now))

    sdk_c = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key="sk-budget-key-c-0003", max_retries=0))
    with pytest.raises(openai.APIStatusError) as suspended:
        await sdk_c.chat.completions.create(model="up", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert suspended.value.status_code == 402
    assert suspended.value.code == "account_suspended"

    async with aiohttp.ClientSession() as s:
        status, acme = await admin(s, running, "GET", "/admin/accounts/acme")
        assert status == 200
        assert acme["spent_micro_usd"] == 5 * PRICE and acme["balance_micro_usd"] == 1_000_000 - 5 * PRICE
        assert acme["keys"] == ["cfg_a", "cfg_b"] and acme["source"] == "config"
        weekly = next(b for b in acme["budget_status"] if b["period"] == "weekly")
        assert weekly["remaining_micro_usd"] == 0 and weekly["resets_at"] == monday.timestamp()
        status, _ = await admin(s, running, "PATCH", "/admin/accounts/acme", json={"suspended": True})
        assert status == 409  # defined in the YAML: changed there
    rows = await running.gw.store.fetchall("select status, error_code, cost_micro_usd from tollway_ledger")
    await running.gw.services[ACCOUNTS].writer.flush()
    rows = await running.gw.store.fetchall("select status, error_code, cost_micro_usd from tollway_ledger "
                                           "order by time")
    assert [r[0] for r in rows] == [200] * 5 + [429, 402]
    assert sum(r[2] for r in rows) == 5 * PRICE


async def test_a_burst_cannot_spend_past_a_budget(start_gateway, mock_upstream):
    config = paid_config(mock_upstream.url, [{"name": "a", "key": KEY_A, "credits": 10.0,
                                              "budgets": {"daily": 10 * PRICE / 1e6}}])
    config["providers"]["up"]["max_connections"] = 200
    running = await start_gateway(config)
    mock = {"chunk_delay": 0.002, "delay": 0.01}
    outcomes: list[int] = []
    told: list[int] = []  # the costs the clients were told
    refusals: list[str] = []

    async def one(s, i: int) -> None:
        stream = i % 2 == 0
        extra = {"stream_options": {"include_usage": True}} if stream else {}
        status, headers, body = await paid(s, running, KEY_A, stream=stream, mock=mock, content=f"q{i}", **extra)
        outcomes.append(status)
        if status != 200:
            refusals.append(body)
        if status == 200 and stream:
            usage = [orjson.loads(line[6:]) for line in body.splitlines() if line.startswith('data: {"')][-1]
            told.append(round(usage["usage"]["cost"] * 1e6))
        elif status == 200:
            told.append(round(float(headers["x-tollway-cost"]) * 1e6))

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(one(s, i) for i in range(80)))
    assert outcomes.count(200) == 10 and outcomes.count(429) == 70, refusals[:3]
    book = running.gw.services[ACCOUNTS]
    await book.writer.flush()
    [(spent,)] = await running.gw.store.fetchall("select sum(cost_micro_usd) from tollway_ledger")
    assert spent == 10 * PRICE == book.accounts["cfg_a"].spent == sum(told)
    assert book.accounts["cfg_a"].balance == 10_000_000 - spent and book.accounts["cfg_a"].reserved == 0
    [status] = await book.budget_status(book.by_id["cfg_a"])
    assert status["spent_micro_usd"] == 10 * PRICE and status["remaining_micro_usd"] == 0


async def test_an_account_budget_holds_under_a_burst_from_two_keys_with_hang_ups(start_gateway, mock_upstream):
    keys = [{"name": "a", "key": KEY_A, "account": "acme"}, {"name": "b", "key": KEY_B, "account": "acme"}]
    config = paid_config(mock_upstream.url, keys, accounts={"acme": {"credits": 1.0,
                                                                     "budgets": {"daily": 7.5 * PRICE / 1e6}}})
    config["providers"]["up"]["max_connections"] = 200
    running = await start_gateway(config)
    mock = {"chunk_delay": 0.003, "delay": 0.005}

    async def one(s, i: int) -> None:
        payload = {"model": "up", "stream": True, "max_tokens": 8, "mock": mock,
                   "messages": [{"role": "user", "content": f"q{i}"}]}
        async with s.post(running.url + "/chat/completions", json=payload,
                          headers=bearer(KEY_A if i % 2 else KEY_B)) as r:
            if r.status == 200 and i % 3 == 0:
                await r.content.readline()
                r.close()  # hangs up mid-stream: billed for what went out
                return
            await r.read()

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(one(s, i) for i in range(60)))
    book = running.gw.services[ACCOUNTS]
    acc = book.accounts["acme"]
    for _ in range(300):  # handlers draining the upstreams of the hung-up streams
        if acc.reserved == 0:
            break
        await asyncio.sleep(0.01)
    await book.writer.flush()
    [(spent,)] = await running.gw.store.fetchall("select sum(cost_micro_usd) from tollway_ledger")
    assert 0 < spent <= 7.5 * PRICE
    assert spent == acc.spent and acc.balance == 1_000_000 - spent >= 0 and acc.reserved == 0
    [status] = await book.budget_status(book.by_id["cfg_a"])
    assert status["spent_micro_usd"] == spent


@pytest.mark.parametrize("engine", ENGINES)
async def test_spend_before_a_restart_or_before_the_budget_was_set_counts(start_gateway, mock_upstream, engine,
                                                                         tmp_path):
    async with fresh_database(engine, tmp_path) as url:
        await restart_case(start_gateway, mock_upstream, url)


async def restart_case(start_gateway, mock_upstream, url: str) -> None:
    config = paid_config(mock_upstream.url, [{"name": "a", "key": KEY_A, "credits": 1.0,
                                              "budgets": {"monthly": 5 * PRICE / 1e6}}])
    config["billing"] = {"timezone": "UTC"}
    config["storage"] = {"url": url}
    first = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            assert (await paid(s, first, KEY_A))[0] == 200
        await first.server.close()  # flushes the ledger
        second = await start_gateway(config)
        assert [(await paid(s, second, KEY_A))[0] for _ in range(3)] == [200, 200, 429]

        # A key made without a budget spends; a budget set later counts that spend at once.
        status, made = await admin(s, second, "POST", "/admin/keys", json={"name": "late", "credits": 1.0})
        assert status == 201
        for _ in range(2):
            assert (await paid(s, second, made["key"]))[0] == 200
        status, patched = await admin(s, second, "PATCH", f"/admin/keys/{made['id']}",
                                      json={"budgets": {"monthly": 3 * PRICE / 1e6}})
        assert status == 200 and patched["budgets"] == {"monthly": 3 * PRICE / 1e6}
        status, shown = await admin(s, second, "GET", f"/admin/keys/{made['id']}")
        [budget] = shown["budget_status"]
        assert (budget["spent_micro_usd"], budget["remaining_micro_usd"]) == (2 * PRICE, PRICE)
        assert [(await paid(s, second, made["key"]))[0] for _ in range(2)] == [200, 429]


async def test_accounts_through_the_admin_api(start_gateway, mock_upstream):
    running = await start_gateway(paid_config(mock_upstream.url, []))
    clock = Clock(next_year(1, 31, 23, 0))
    use_clock(running, clock)
    async with aiohttp.ClientSession() as s:
        status, body = await admin(s, running, "POST", "/admin/accounts",
                                   json={"id": "team", "credits": 1.0, "budgets": {"daily": 2 * PRICE / 1e6}})
        assert status == 201 and body["budgets"] == {"daily": 2 * PRICE / 1e6} and body["source"] == "api"
        status, again = await admin(s, running, "POST", "/admin/accounts", json={"id": "team"})
        assert status == 409 and again["error"]["code"] == "account_exists"
        status, bad = await admin(s, running, "POST", "/admin/accounts", json={"id": "x", "budgets": {"daily": -1}})
        assert status == 400 and bad["error"]["param"] == "budgets.daily"
        status, made = await admin(s, running, "POST", "/admin/keys",
                                   json={"name": "t1", "account": "team", "credits": 0})
        assert status == 201
        assert [(await paid(s, running, made["key"]))[0] for _ in range(3)] == [200, 200, 429]
        status, body = await admin(s, running, "PATCH", "/admin/accounts/team",
                                   json={"budgets": {"daily": 3 * PRICE / 1e6}})
        assert status == 200 and body["budget_status"][0]["remaining_micro_usd"] == PRICE
        assert (await paid(s, running, made["key"]))[0] == 200
        status, body = await admin(s, running, "PATCH", "/admin/accounts/team", json={"suspended": True})
        assert status == 200 and body["suspended"] is True
        status, _, body = await paid(s, running, made["key"])
        assert status == 402 and body["error"]["code"] == "account_suspended"
        await admin(s, running, "PATCH", "/admin/accounts/team", json={"suspended": False, "budgets": {}})
        assert (await paid(s, running, made["key"]))[0] == 200
        status, body = await admin(s, running, "POST", "/admin/accounts/team/credits", json={"amount": 2})
        assert status == 200 and body["account"]["balance_micro_usd"] == 3_000_000 - 4 * PRICE
        async with s.get(running.root + "/admin/accounts", headers=bearer(KEY_A)) as r:
            assert r.status == 403
        async with s.get(running.root + "/admin/accounts/nope", headers=ADMIN_HEADERS) as r:
            assert r.status == 404


async def test_a_request_bigger_than_the_whole_budget_is_a_400(start_gateway, mock_upstream):
    config = paid_config(mock_upstream.url, [{"name": "a", "key": KEY_A, "credits": 1.0,
                                              "budgets": {"daily": PRICE / 2 / 1e6}}])
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, headers, body = await paid(s, running, KEY_A)
    assert status == 400
    assert body["error"]["code"] == "budget_too_small" and body["error"]["param"] == "max_tokens"
    assert "Retry-After" not in headers


@pytest.mark.parametrize(("change", "message"), [
    ({"billing": {"timezone": "Mars/Olympus"}}, "billing.timezone: unknown time zone 'Mars/Olympus'"),
    ({"accounts": {"acme": {"budgets": {"daily": -1}}}}, "accounts.acme.budgets.daily: must be at least 0"),
    ({"accounts": {"acme": {"budgets": {"dayly": 1}}}}, "accounts.acme.budgets.dayly: unknown key"),
    ({"accounts": {"acme": {"refill": {"every": "year", "amount": 1}}}}, "accounts.acme.refill.every"),
    ({"accounts": {"acme": {"limits": {"concurrency": 2}}}}, "accounts.acme.limits: an account shares"),
    ({"keys": [{"name": "a", "key": KEY_A, "budgets": {"weekly": 0.0000001}}]},
     "keys[0].budgets.weekly: too many decimal places"),
])
def test_config_mistakes_name_their_path(tmp_path, change, message):
    config = biz_config(**{})
    config.update(change)
    config["storage"] = {"url": f"sqlite:///{tmp_path}/t.db"}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build_gateway(config, path=tmp_path / "tollway.yaml")


def test_periods_follow_the_local_calendar():
    # Paris leaves summer time on the last Sunday of October: that day has 25 hours.
    day = period_at("daily", datetime(2026, 10, 25, 12, 0, tzinfo=PARIS).timestamp(), PARIS)
    assert day.label == "2026-10-25" and day.end - day.start == 25 * 3600
    week = period_at("weekly", datetime(2027, 1, 1, 12, 0, tzinfo=PARIS).timestamp(), PARIS)
    assert week.label == "2026-W53" and datetime.fromtimestamp(week.start, PARIS) == datetime(2026, 12, 28,
                                                                                              tzinfo=PARIS)
    month = period_at("month", datetime(2026, 12, 31, 23, 59, tzinfo=PARIS).timestamp(), PARIS)
    assert month.label == "2026-12"
    assert datetime.fromtimestamp(month.end, PARIS) == datetime(2027, 1, 1, tzinfo=PARIS)
    kolkata = ZoneInfo("Asia/Kolkata")
    day = period_at("day", datetime(2026, 5, 1, 0, 10, tzinfo=kolkata).timestamp(), kolkata)
    assert day.start % 3600 == 1800  # a half-hour zone: its midnight is not on a UTC hour

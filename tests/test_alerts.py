"""Alerts: signed webhooks from a durable outbox, delivered at least once, never on a request's path."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time

import aiohttp
import orjson
import pytest
from aiohttp import web
from business import DEMO, biz_config, chat
from stores import ENGINES, fresh_database

from proxy import Event, hookimpl

SECRET = "whsec-test-0123456789"


class Receiver:
    """A webhook receiver that answers ``fail`` 500s first, then 200s; keeps every delivery."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.got: list[tuple[dict, bytes]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((dict(request.headers), body))
        self.arrived.set()
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=500, text="not now")
        return web.Response(status=204)

    async def until(self, count: int, seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while len(self.got) < count:
            assert time.monotonic() < deadline, f"only {len(self.got)} of {count} deliveries arrived"
            self.arrived.clear()
            try:
                async with asyncio.timeout(0.2):
                    await self.arrived.wait()
            except TimeoutError:
                pass


@pytest.fixture
async def receiver(aiohttp_server):
    async def start(fail: int = 0, path: str = "/hook") -> tuple[Receiver, str]:
        rec = Receiver(fail)
        app = web.Application()
        app.router.add_post(path, rec.handle)
        server = await aiohttp_server(app)
        return rec, str(server.make_url(path))
    return start


def alerts_config(url: str, **alerts) -> dict:
    config = biz_config(keys=[{"name": "demo", "key": DEMO, "credits": 1.0}])
    config["alerts"] = {"webhooks": [{"url": url, "secret": SECRET}], "check_seconds": 0.05,
                        "poll_seconds": 0.05, "retry": {"first_delay": 0.05, "max_delay": 0.2}, **alerts}
    return config


def verified(headers: dict, body: bytes) -> dict:
    """What a receiver does: recompute the HMAC over the raw body, compare in constant time."""
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Tollway-Signature"], expected)
    return orjson.loads(body)


async def test_a_receiver_that_fails_twice_gets_the_alert_three_times_with_one_id(start_gateway, receiver,
                                                                                    caplog):
    rec, url = await receiver(fail=2)
    running = await start_gateway(alerts_config(url, balance_below=2.0))
    await rec.until(3)
    await asyncio.sleep(0.3)  # no fourth delivery after the 2xx
    assert "/hook" not in caplog.text and "retrying" in caplog.text  # the URL's path may hold a secret
    assert len(rec.got) == 3
    events = [verified(h, b) for h, b in rec.got]
    assert len({e["id"] for e in events}) == 1
    assert [h["X-Tollway-Delivery-Attempt"] for h, _ in rec.got] == ["1", "2", "3"]
    assert {h["X-Tollway-Event-Id"] for h, _ in rec.got} == {events[0]["id"]}
    event = events[0]
    assert event["type"] == "balance_low"
    assert event["data"]["account"] == "cfg_demo" and event["data"]["keys"] == ["demo"]
    assert event["data"]["balance_usd"] == "1.000000" and event["data"]["threshold_usd"] == "2.000000"
    assert event["data"]["balance_micro_usd"] == 1_000_000
    rows = await running.gw.store.fetchall("select state, attempts, delivered_at from tollway_alerts")
    assert [(r[0], r[1]) for r in rows] == [("delivered", 3)] and rows[0][2] is not None


async def test_a_tampered_body_fails_the_signature_check(start_gateway, receiver):
    rec, url = await receiver()
    await start_gateway(alerts_config(url, balance_below=2.0))
    await rec.until(1)
    headers, body = rec.got[0]
    with pytest.raises(AssertionError):
        verified(headers, body.replace(b"1.000000", b"9.000000"))


class Emitter:
    """A plugin that emits one event at start-up (gateway.emit calls every tollway_event), as
    routing does when a breaker opens."""

    def __init__(self, event: Event) -> None:
        self.event = event

    @hookimpl
    def tollway_startup(self, gateway):
        gateway.emit(self.event)


@pytest.mark.parametrize("engine", ENGINES)
async def test_an_alert_survives_a_restart(start_gateway, receiver, tmp_path, engine):
    """Emitted while the receiver fails; the gateway stops; the next start delivers it, once."""
    rec, url = await receiver(fail=10**6)
    async with fresh_database(engine, tmp_path) as store_url:
        config = alerts_config(url, key_expiring_days=None)
        config["storage"] = {"url": store_url}
        event = Event("deployment_opened", {"model": "gpt-4o", "deployment": "azure-east"}, key="azure-east:1")
        first = await start_gateway(config, plugins=[Emitter(event)])
        await rec.until(1)
        await first.server.close()
        failed = len(rec.got)
        rec.fail = 0
        second = await start_gateway(config)  # emits nothing: only the outbox can send it
        await rec.until(failed + 1)
        await asyncio.sleep(0.3)
        got = [verified(h, b) for h, b in rec.got]
        assert len(got) == failed + 1
        assert {g["id"] for g in got} == {event.id}
        assert got[-1]["type"] == "deployment_opened" and got[-1]["data"]["deployment"] == "azure-east"
        assert await second.gw.store.fetchall("select state, attempts from tollway_alerts") == [
            ("delivered", failed + 1)]
        await second.server.close()


async def test_the_same_event_twice_is_one_alert(start_gateway, receiver):
    rec, url = await receiver()
    event = Event("budget", {"account": "acme", "percent": 80}, key="acme:daily:2026-12-02:80")
    again = Event("budget", {"account": "acme", "percent": 80}, key="acme:daily:2026-12-02:80")
    await start_gateway(alerts_config(url), plugins=[Emitter(event), Emitter(again)])
    await rec.until(1)
    await asyncio.sleep(0.3)
    assert len(rec.got) == 1 and verified(*rec.got[0])["id"] == event.id == again.id


async def test_webhooks_get_only_the_events_they_asked_for(start_gateway, receiver):
    budget, budget_url = await receiver(path="/budget")
    everything, all_url = await receiver(path="/all")
    config = alerts_config(budget_url, balance_below=2.0)
    config["alerts"]["webhooks"] = [{"url": budget_url, "secret": SECRET, "events": ["budget", "deployment"]},
                                    {"url": all_url, "secret": SECRET}]
    closed = Event("deployment_closed", {"deployment": "azure-east"})
    await start_gateway(config, plugins=[Emitter(closed)])
    await everything.until(2)
    await budget.until(1)
    await asyncio.sleep(0.2)
    assert sorted(verified(*g)["type"] for g in everything.got) == ["balance_low", "deployment_closed"]
    assert [verified(*g)["type"] for g in budget.got] == ["deployment_closed"]


async def test_a_key_expiring_soon_is_announced_once(start_gateway, receiver):
    rec, url = await receiver()
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400))
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30 * 86400))
    config = alerts_config(url, key_expiring_days=7)
    config["keys"] = [{"name": "soon", "key": "sk-test-soon-0001", "credits": 1.0, "expires_at": soon},
                      {"name": "later", "key": "sk-test-later-001", "credits": 1.0, "expires_at": later}]
    running = await start_gateway(config)
    await rec.until(1)
    async with aiohttp.ClientSession() as s:  # requests go on as usual meanwhile
        assert (await chat(s, running, "sk-test-soon-0001"))[0] == 200
    await asyncio.sleep(0.3)  # several more looks: still one alert
    assert len(rec.got) == 1
    event = verified(*rec.got[0])
    assert event["type"] == "key_expiring" and event["data"]["name"] == "soon"
    assert event["data"]["expires_at"] == soon and 2.9 < event["data"]["days_left"] <= 3


@pytest.mark.parametrize("alerts, message", [
    ({"webhooks": [{"url": "ftp://x", "secret": "s"}]}, r"alerts.webhooks\[0\].url: must start with http"),
    ({"webhooks": [{"url": "http://x", "secret": ""}]}, r"alerts.webhooks\[0\].secret: required"),
    ({"webhooks": [{"url": "http://x", "secret": "s", "events": ["balance_lwo"]}]},
     r"alerts.webhooks\[0\].events\[0\]: unknown event 'balance_lwo' \(did you mean 'balance_low'\?\)"),
    ({"webhooks": [{"url": "http://x"}]}, r"alerts.webhooks\[0\].secret"),
    ({"retry": {"max_attempts": 0}}, r"alerts.retry"),
])
def test_bad_alert_config_names_the_path(alerts, message):
    from proxy import ConfigError
    from proxy.gateway import build_gateway

    config = biz_config()
    config["alerts"] = alerts
    with pytest.raises(ConfigError, match=message):
        build_gateway(config)


async def test_a_budget_at_half_its_cap_is_announced_once(start_gateway, receiver):
    """A key's daily budget of $1: a request that costs $0.50 reaches 50 % (one alert);
    the next one, which could cost $0.75, is refused."""
    rec, url = await receiver()
    config = alerts_config(url, key_expiring_days=None)
    config["alerts"]["webhooks"][0]["events"] = ["budget"]
    config["models"]["echo"]["price"] = {"input": 0, "output": 250_000}  # $0.25 per output token
    config["keys"] = [{"name": "capped", "key": "sk-test-capped-01", "credits": 5.0, "budgets": {"daily": 1.0}}]
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await chat(s, running, "sk-test-capped-01", max_tokens=3)  # "hello there": 2 tokens
        assert status == 200 and headers["x-tollway-cost"] == "0.500000"
        await rec.until(1)
        assert (await chat(s, running, "sk-test-capped-01", max_tokens=3))[0] == 429
    await asyncio.sleep(0.3)  # several more looks: still one alert
    assert len(rec.got) == 1
    event = verified(*rec.got[0])
    assert event["type"] == "budget"
    fields = ("scope", "id", "name", "period", "percent", "spent", "limit", "currency")
    assert {k: event["data"][k] for k in fields} == {
        "scope": "key", "id": "cfg_capped", "name": "capped", "period": "daily", "percent": 50,
        "spent": "0.500000", "limit": "1.000000", "currency": "USD"}
    assert event["data"]["resets_at"].endswith("T00:00:00Z")

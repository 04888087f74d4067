"""billing.currency with a fixed usd_rate: money stays integer micro-units (of that
currency), prices convert exactly, the client and the ledger see the same amounts."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from business import bearer, biz_config, chat
from test_budgets import KEY_A

from plugins.accounts import ACCOUNTS
from plugins.accounts.money import PriceBook
from proxy.config import Price
from proxy.gateway import build_gateway
from proxy.schema import ConfigError, StartRefused

COST = 668_000  # 8 completion tokens at $1000 per 1M tokens, at 83.5 INR per USD: 0.668 INR


def inr_config(upstream: str, credits: float = 10.0) -> dict:
    config = biz_config(upstream, keys=[{"name": "a", "key": KEY_A, "credits": credits}])
    config["models"]["up"]["price"] = {"input": 0, "output": 1000}
    config["billing"] = {"currency": "INR", "usd_rate": 83.5, "billing_url": "/pay"}
    return config


async def test_an_inr_gateway_bills_in_micro_rupees(start_gateway, mock_upstream, close_at_end):
    running = await start_gateway(inr_config(mock_upstream.url))
    sdk = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=KEY_A, max_retries=0))
    raw = await sdk.chat.completions.with_raw_response.create(model="up", max_tokens=8,
                                                              messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-tollway-cost"] == "0.668000"
    assert raw.parse().usage.model_extra["cost"] == pytest.approx(0.668)
    async with aiohttp.ClientSession() as s, s.get(running.url + "/credits", headers=bearer(KEY_A)) as r:
        mine = await r.json()
    assert mine["currency"] == "INR" and mine["balance_micro_usd"] == 10_000_000 - COST
    await running.gw.services[ACCOUNTS].writer.flush()
    [(cost,)] = await running.gw.store.fetchall("select cost_micro_usd from tollway_ledger")
    assert cost == COST


async def test_messages_name_the_currency_and_a_change_of_currency_is_refused(start_gateway, mock_upstream):
    config = inr_config(mock_upstream.url, credits=0.5)
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, _, body = await chat(s, running, KEY_A, model="up", max_tokens=8)
    assert status == 402
    assert "needs up to 0.668000 INR" in body["error"]["message"] and "0.500000 INR left" in body["error"]["message"]
    await running.server.close()
    config["billing"]["currency"] = "EUR"
    config["billing"]["usd_rate"] = 0.92
    with pytest.raises(StartRefused, match="this store's balances and ledger are in INR, not EUR"):
        await start_gateway(config)


def test_prices_convert_exactly():
    book = PriceBook({}, usd_rate=83.123457)
    from plugins.accounts.money import PriceTable

    table = PriceTable.from_config(Price(input=0.15, output=0.6), "p", book.rate_ppm)
    # 1M input tokens at $0.15 = 12.46851855 INR -> rounded up to the micro-rupee.
    assert table.cost(1_000_000, 0) == 12_468_519
    assert table.cost(0, 3) == 150  # 3 * 0.6 * 83.123457 = 149.6222226 micro-INR, rounded up
    # Unit prices convert too: an image at $0.04, a minute of audio at $0.006, at 83.5 INR per USD.
    from plugins.accounts.units import _micro

    price = Price(input=0, output=0, images={"1024x1024": 0.04}, audio_minute=0.006)
    inr = PriceTable.from_config(price, "p", 83_500_000)
    assert _micro(inr.images["1024x1024"], 1_000_000, inr.divisor) == 3_340_000
    assert _micro(inr.audio_minute, 1_000_000, inr.divisor) == 501_000


@pytest.mark.parametrize(("billing", "message"), [
    ({"currency": "rupees"}, "billing.currency: use a 3-letter ISO 4217 code"),
    ({"currency": "INR", "usd_rate": 0}, "billing.usd_rate: must be more than 0"),
    ({"usd_rate": 2}, "billing.usd_rate: must be 1 when billing.currency is USD"),
    ({"currency": "INR", "usd_rate": 83.1234567}, "billing.usd_rate: too many decimal places"),
])
def test_billing_mistakes(tmp_path, billing, message):
    config = biz_config()
    config["billing"] = billing
    config["storage"] = {"url": f"sqlite:///{tmp_path}/t.db"}
    with pytest.raises(ConfigError, match=message):
        build_gateway(config, path=tmp_path / "tollway.yaml")


async def test_the_dashboard_shows_the_currency(start_gateway, mock_upstream):
    from test_dashboard import client, sign_in

    config = inr_config(mock_upstream.url)
    config["plugins"]["enabled"].append("dashboard")
    running = await start_gateway(config)
    async with client() as s:
        await sign_in(s, running, KEY_A)
        async with s.get(running.root + "/dashboard/usage") as r:
            page = await r.text()
    assert 'data-currency="INR"' in page and "10.00 INR" in page and "$" not in page.split("<main")[1]

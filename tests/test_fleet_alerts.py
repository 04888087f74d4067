"""Budget alerts in a fleet: real ``tollway serve`` processes on one Redis and one PostgreSQL.

The alerts plugin looked at each budget as its own process last saw the total (its own
requests' replies, or what the store said at its start). A key that spent past 80 % of its
budget through instance A, whose next look was still to come (``check_seconds``, 60 s by
default; or A stopped first, a deploy), was never alerted: the instances that looked had
not served it and saw 0 %. Each look reads the fleet's totals from Redis now, and the
instances that see the share reached make the same event: one alert for the fleet."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
from business import bearer, biz_config
from fleet import fleet_of, kill_all
from test_alerts import SECRET, receiver, verified  # noqa: F401 (receiver: the fixture)
from test_lifecycle import Server

pytestmark = pytest.mark.fleet

KEY = "sk-test-fleet-alerts-0001"
CAP = 2000  # micro-USD: the key's daily budget ($0.002); a request costs 70, holds ~300 (its worst case)


async def test_a_budget_crossed_on_one_instance_is_alerted_once_by_the_fleet(tmp_path, receiver):  # noqa: F811
    got, url = await receiver()
    config = biz_config(keys=[{"name": "k", "key": KEY, "credits": 1.0, "budgets": {"daily": CAP / 1e6}}])
    config["server"].update(host="127.0.0.1", access_log="off", shutdown_timeout=5)
    config["alerts"] = {"webhooks": [{"url": url, "secret": SECRET, "events": ["budget"]}],
                        "key_expiring_days": None, "check_seconds": "${ALERTS_CHECK_S}", "poll_seconds": 0.05,
                        "retry": {"first_delay": 0.05, "max_delay": 0.2}}
    # A looks at start (before any spend) and not again during the test.
    async with fleet_of(tmp_path, config, 1, env={**os.environ, "ALERTS_CHECK_S": "3600"}) as fleet, \
            aiohttp.ClientSession() as s:
        [a] = fleet.servers
        watchers: list[Server] = []
        try:
            # B and C look every 50 ms; neither serves the key.
            watchers = [Server(fleet.path, env={**os.environ, "ALERTS_CHECK_S": "0.05"}) for _ in range(2)]
            await asyncio.gather(*(w.wait_ready() for w in watchers))
            told = 0
            payload = {"model": "echo", "max_tokens": 20, "messages": [{"role": "user", "content": "hello " * 30}]}
            for share, alerts in ((50, 1), (80, 2)):  # past 50 % (B or C alerts it), then past 80 %
                while told * 100 < share * CAP:
                    async with s.post(a.url + "/v1/chat/completions", json=payload, headers=bearer(KEY)) as r:
                        assert r.status == 200, await r.text()
                        told += round(float(r.headers["x-tollway-cost"]) * 1e6)
                assert told * 100 < (share + 30) * CAP  # (not the next share yet)
                await got.until(alerts, 20)
            await asyncio.sleep(1.0)  # twenty more looks by B and C: still one alert per share
        finally:
            kill_all(watchers)
    events = sorted((verified(*g) for g in got.got), key=lambda e: e["data"]["percent"])
    assert [(e["type"], e["data"]["scope"], e["data"]["percent"]) for e in events] == [("budget", "key", 50),
                                                                                        ("budget", "key", 80)]
    assert round(float(events[1]["data"]["spent"]) * 1e6) == told

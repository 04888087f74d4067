"""The dashboard's sign-in limit holds against a burst: guesses sent all at once
(before any failure is written) are not each let through to the key check."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
from business import ADMIN
from test_dashboard import dash_config


async def test_a_burst_of_guesses_gets_no_more_tries_than_the_limit(start_gateway):
    running = await start_gateway(dash_config(sign_in_attempts=3, sign_in_window=600))

    async def guess(s: aiohttp.ClientSession, i: int) -> int:
        async with s.post(running.root + "/dashboard/login", data={"key": f"sk-guess-{i:04d}"},
                          allow_redirects=False) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession() as s:
        burst = Counter(await asyncio.gather(*[guess(s, i) for i in range(40)]))
        assert set(burst) <= {401, 429} and burst[401] <= 3, burst  # 401: a guess whose key was checked
        after = Counter([await guess(s, 100 + i) for i in range(10)])
        assert burst[401] + after[401] == 3, (burst, after)  # three guesses in all, then only refusals
        async with s.post(running.root + "/dashboard/login", data={"key": ADMIN}, allow_redirects=False) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) > 590  # even the right key, for the window

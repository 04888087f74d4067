"""Time every dashboard page and data call on a big ledger (see ``dashboard_data``).

    flock /work/bench.lock python -m benchmarks.dashboard_bench --url sqlite:////tmp/dash.db [--runs 15]

Serves the gateway (auth, ledger, dashboard) on the given store in this
process, signs in as the operator and as the data set's ``customer`` key,
requests each URL ``--runs`` times after one warm-up, and prints a Markdown
table of the server-side answer time (median, p95, max) per URL. Not a test:
nothing asserts a time; the figures go in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.app import make_app
from proxy.gateway import build_gateway

from .dashboard_data import CUSTOMER_KEY

ADMIN = "bench-admin-key"


def config(url: str) -> dict:
    return {"server": {"admin_key": ADMIN, "access_log": "off"}, "storage": {"url": url},
            "providers": {"local": {"kind": "mock"}},
            "models": {name: {"provider": "local", "price": {"input": 1, "output": 1}}
                       for name in ("gpt-4o-mini", "gpt-4o", "claude-sonnet", "claude-haiku", "gemini-flash", "echo")},
            "plugins": {"enabled": ["auth", "ledger", "dashboard"]}}


async def first_cursor(session: aiohttp.ClientSession, base: str) -> str:
    """The second page of the request log (its cursor is in the first page's "Older" link)."""
    async with session.get(base + "/dashboard/log") as r:
        text = await r.text()
    marker = 'id="older" href="'
    start = text.index(marker) + len(marker)
    return text[start:text.index('"', start)].replace("&amp;", "&")


def urls(top_key: str, older: str) -> list[tuple[str, str]]:
    """(who, path) for every page and data call."""
    admin = ["/dashboard?range=24h", "/dashboard?range=7d", "/dashboard?range=7d&step=hour", "/dashboard?range=30d",
             "/dashboard?range=90d", "/dashboard?range=365d&step=month", "/dashboard/api/overview?range=30d"]
    admin += [f"/dashboard/spend?range=30d&by={by}" for by in ("key", "account", "model", "provider")]
    admin += ["/dashboard/spend?range=30d&by=key&sort=p95", "/dashboard/spend?range=24h&by=key",
              "/dashboard/errors?range=30d", "/dashboard/errors?range=24h", "/dashboard/latency?range=30d",
              "/dashboard/latency?range=24h", "/dashboard/cache?range=30d", "/dashboard/keys",
              "/dashboard/keys?q=team-01", f"/dashboard/keys/{top_key}", "/dashboard/accounts", "/dashboard/log",
              older, f"/dashboard/log?key={top_key}", "/dashboard/log?model=claude-sonnet",
              "/dashboard/log?status=502", "/dashboard/log?status=errors&model=gpt-4o",
              "/dashboard/log?since=2000-01-01&until=2000-01-02", "/dashboard/api/keys"]
    customer = ["/dashboard/usage", "/dashboard/usage?range=24h", "/dashboard/usage?range=365d&step=month",
                "/dashboard/api/usage"]
    return [("admin", u) for u in admin] + [("customer", u) for u in customer]


async def run(url: str, runs: int) -> list[tuple[str, str, float, float, float, int]]:
    gw = build_gateway(config(url), path=Path.cwd() / "bench.yaml")
    runner = web.AppRunner(make_app(gw, access_log=False), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    results = []
    try:
        sessions = {}
        for who, key in (("admin", ADMIN), ("customer", CUSTOMER_KEY)):
            s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
            async with s.post(base + "/dashboard/login", data={"key": key}) as r:
                assert r.status == 200 and str(r.url).endswith(("/dashboard", "/usage")), (who, r.status, r.url)
            sessions[who] = s
        top = await gw.store.fetchone("select key_id from tollway_rollup_day group by key_id "
                                      "order by sum(cost_micro_usd) desc limit 1")
        older = await first_cursor(sessions["admin"], base)
        for who, path in urls(top[0], older):
            s = sessions[who]
            times = []
            size = 0
            for i in range(runs + 1):
                started = time.perf_counter()
                async with s.get(base + path, allow_redirects=False) as r:
                    body = await r.read()
                    assert r.status == 200, (path, r.status, body[:300])
                if i:
                    times.append((time.perf_counter() - started) * 1000)
                size = len(body)
            times.sort()
            results.append((who, path, statistics.median(times), times[int(0.95 * (len(times) - 1))], times[-1],
                            size))
            print(f"{who:8} {path:60} median {results[-1][2]:7.1f} ms  p95 {results[-1][3]:7.1f}  "
                  f"max {results[-1][4]:7.1f}  {size:,} B", flush=True)
        for s in sessions.values():
            await s.close()
    finally:
        await runner.cleanup()
    return results


def table(results, title: str) -> str:
    lines = [f"**{title}**", "", "| who | URL | median ms | p95 ms | max ms | bytes |", "|---|---|---|---|---|---|"]
    for who, path, med, p95, worst, size in results:
        lines.append(f"| {who} | `{path}` | {med:.1f} | {p95:.1f} | {worst:.1f} | {size:,} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--title", default="")
    args = p.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    results = asyncio.run(run(args.url, args.runs))
    print()
    print(table(results, args.title or args.url))


if __name__ == "__main__":
    main()

"""The routing plugin's own cost per request, in-process: resolve + attempt + finish
for a model with one deployment and for one with three, against a bare dict lookup
(what routing cost before deployments). ``python -m benchmarks.routing_bench``."""

from __future__ import annotations

import asyncio
import time

from proxy import Call
from proxy.gateway import build_gateway


def config() -> dict:
    providers = {f"p{i}": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "k"} for i in range(3)}
    price = {"input": 1, "output": 2}
    return {"server": {"access_log": "off"}, "storage": {"url": "sqlite:///:memory:"}, "providers": providers,
            "models": {"one": {"provider": "p0", "price": price},
                       "three": {"deployments": [{"provider": f"p{i}", "weight": i + 1} for i in range(3)],
                                 "price": price}},
            "plugins": {"enabled": []}}


async def main(n: int = 200_000) -> None:
    gw = build_gateway(config())
    await gw.start(serving=False)
    resolve, attempt, finish = gw.hooks.resolve[-1], gw.hooks.attempt[-1], gw.hooks.finish[-1]
    body = {"model": "one", "messages": [{"role": "user", "content": "hi"}]}
    tables = {"one": object()}

    async def bare() -> None:
        for _ in range(n):
            call = Call(None, "chat", body, b"")
            tables.get(call.model)

    async def routed(model: str) -> None:
        b = {**body, "model": model}
        for _ in range(n):
            call = Call(None, "chat", b, b"")
            route = await resolve(call)
            call.route = route
            call.upstream_attempts = 1
            call.timing.attempt_started = time.perf_counter()
            await attempt(call, route, None)
            await finish(call)

    for label, run in (("Call + dict lookup (before)", bare()), ("one deployment", routed("one")),
                       ("three deployments (weighted)", routed("three"))):
        t = time.perf_counter()
        await run
        print(f"{label:32} {(time.perf_counter() - t) / n * 1e6:6.2f} us/request")
    await gw.close()


if __name__ == "__main__":
    asyncio.run(main())

"""What the metrics plugin costs per request, measured in-process (``python -m benchmarks.metrics_cost``).

The request-time part is one ``tollway_finish`` call (``Tally.record``): timed here
on its own, in CPU time, as the fastest of several repeats, so other load on the
machine adds little. The scrape-time part (``export`` into prometheus-client, then rendering) is
timed for a gateway with ``--series`` label sets, as it runs once per scrape.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import timeit

from prometheus_client import CollectorRegistry, generate_latest

from plugins.metrics import Plugin
from plugins.metrics.families import Families
from plugins.metrics.tally import Tally
from proxy.call import Call, Route, Usage


class _Provider:
    name = "mock"


def finished_call(stream: bool, model: str = "bench", status: int = 200) -> Call:
    call = Call(None, "chat", {"model": model, "stream": stream}, b"{}")
    call.route = Route(model, model, _Provider(), None)  # type: ignore[arg-type]
    call.response.status = status
    call.billing.usage = Usage(120, 400)
    call.billing.cost_micro = 258
    call.timing.first_byte_at = call.timing.started + 0.05
    call.timing.ended_at = call.timing.started + 1.2
    return call


def per_request(plugin: Plugin, call: Call, n: int) -> float:
    """µs of CPU per awaited tollway_finish (the hook as the core awaits it), best of 5
    (process time: time the process spent waiting for a CPU on a busy machine is left out)."""
    finish = plugin.tollway_finish

    async def run() -> None:
        for _ in range(n):
            await finish(call)

    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        asyncio.run(run())
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=200_000)
    p.add_argument("--series", type=int, default=200, help="label sets at a scrape (models x statuses...)")
    args = p.parse_args()

    plugin = Plugin()
    plugin.tally = Tally()
    empty = Plugin()  # a finish hook that does nothing: the await alone
    for label, stream in (("non-stream", False), ("stream", True)):
        cost = per_request(plugin, finished_call(stream), args.n)
        floor = per_request(empty, finished_call(stream), args.n)
        print(f"tollway_finish, {label}: {cost:.2f} us per request ({cost - floor:.2f} us above an empty hook)")

    registry = CollectorRegistry()
    families = Families(registry)
    tally = Tally()
    for i in range(args.series):
        tally.record(finished_call(i % 2 == 0, model=f"model-{i // 4}", status=(200, 429, 502, 200)[i % 4]))
    start = time.process_time()
    families.add(tally)
    text = generate_latest(registry)
    took = time.process_time() - start
    again = min(timeit.repeat(lambda: generate_latest(registry), number=1, repeat=5, timer=time.process_time))
    print(f"scrape with {args.series} label sets: first {took * 1e3:.1f} ms, then {again * 1e3:.1f} ms to render "
          f"{len(text) // 1024} KiB")


if __name__ == "__main__":
    main()

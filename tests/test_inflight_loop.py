"""InFlight.enter remembers its loop (current_task(loop): no getpid a request); a gateway
used from another loop afterwards still registers each call's task."""

from __future__ import annotations

import asyncio

from proxy.inflight import InFlight


def _enter_in_new_loop(inflight: InFlight) -> tuple[bool, bool]:
    async def handler() -> tuple[bool, bool]:
        task = inflight.enter(object())  # type: ignore[arg-type]
        registered = task is asyncio.current_task() and inflight.calls.get(task) is not None
        inflight.leave(task)
        return registered, not inflight.calls

    return asyncio.run(handler())


def test_enter_registers_the_current_task_in_each_loop_it_is_used_from() -> None:
    inflight = InFlight()
    assert _enter_in_new_loop(inflight) == (True, True)
    # A second loop (the first is closed): the remembered loop has no current task there.
    assert _enter_in_new_loop(inflight) == (True, True)
    assert _enter_in_new_loop(inflight) == (True, True)


def test_enter_in_one_loop_registers_concurrent_tasks_apart() -> None:
    inflight = InFlight()

    async def main() -> int:
        seen: set[asyncio.Task] = set()

        async def one() -> None:
            task = inflight.enter(object())  # type: ignore[arg-type]
            assert task is asyncio.current_task()
            seen.add(task)
            await asyncio.sleep(0)
            assert len(inflight.calls) >= 1
            inflight.leave(task)

        await asyncio.gather(*(one() for _ in range(5)))
        return len(seen)

    assert asyncio.run(main()) == 5
    assert not inflight.calls

"""Background tasks the core and plugins run beside the requests (writers, flushers)."""

from __future__ import annotations

import asyncio

__all__ = ["stop_task"]

RECANCEL_S = 1.0  # a task still running this long after a cancel is cancelled again


async def stop_task(task: asyncio.Task | None) -> None:
    """Cancel ``task`` and wait until it has ended (None: nothing to do); its failure, if it
    failed otherwise, is raised. A cancel can be lost (``asyncio.wait_for`` on Python 3.11
    returns the result when it ends in the same turn as the cancel; some client libraries
    catch it): a task still running ``RECANCEL_S`` later is cancelled again, so a stop never
    waits forever for a loop that went on."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_S)
    if not task.cancelled():
        task.result()

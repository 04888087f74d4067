"""Background tasks the core and plugins run beside the requests (writers, flushers)."""

from __future__ import annotations

import asyncio

__all__ = ["stop_task"]


async def stop_task(task: asyncio.Task | None) -> None:
    """Cancel ``task`` and wait until it has ended (None: nothing to do)."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass

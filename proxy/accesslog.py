"""One access log line per request, written off the hot path.

A request appends a small tuple to a list (no formatting, no I/O); a
background task formats and writes the batch every ``interval`` seconds and
once more at shutdown.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, TextIO

import orjson

from .background import stop_task

if TYPE_CHECKING:
    from .call import Call


class AccessLog:
    def __init__(self, fmt: str = "text", stream: TextIO | None = None, interval: float = 0.2) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self.interval = interval
        self._pending: list[tuple] = []
        self._task: asyncio.Task | None = None

    def record(self, call: Call) -> None:
        req = call.request
        principal = call.principal
        usage = call.billing.usage
        response = call.response
        self._pending.append((
            time.time(), req.remote if req is not None else None, req.method if req is not None else "",
            req.path if req is not None else "", response.status, call.model, call.provider_name, call.stream,
            getattr(principal, "name", None), usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None, call.billing.cost_micro, call.timing.latency_ms,
            call.timing.ttfb_ms, response.error_code or (response.error.code if response.error else None),
            response.cache_status, response.client_gone,
        ))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._pending:
                self.flush()

    def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        lines = [self._format(row) for row in batch]
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _format(self, row: tuple) -> str:
        (ts, remote, method, path, status, model, provider, stream, key, p_tok, c_tok, cost, latency, ttfb,
         error, cache, gone) = row
        if self.fmt == "json":
            return orjson.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z",
                "remote": remote, "method": method, "path": path, "status": status, "model": model or None,
                "provider": provider, "stream": stream, "key": key, "prompt_tokens": p_tok,
                "completion_tokens": c_tok, "cost_micro_usd": cost, "latency_ms": round(latency, 3),
                "ttfb_ms": round(ttfb, 3) if ttfb is not None else None, "error": error, "cache": cache,
                "client_gone": gone,
            }).decode() + "\n"
        parts = [time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)), str(remote), f'"{method} {path}"',
                 str(status), f"{latency:.1f}ms"]
        for name, value in (("model", model), ("provider", provider), ("key", key), ("stream", stream or None),
                            ("tokens", f"{p_tok}/{c_tok}" if p_tok is not None else None),
                            ("cost_micro", cost), ("ttfb", f"{ttfb:.1f}ms" if ttfb is not None else None),
                            ("error", error), ("cache", cache), ("client_gone", gone or None)):
            if value not in (None, ""):
                parts.append(f"{name}={value}")
        return " ".join(parts) + "\n"

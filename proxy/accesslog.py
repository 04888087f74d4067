"""One access log line per request, written off the hot path.

Every line ends with the request's id (``id=`` in text, ``request_id`` in JSON): the
``x-tollway-request-id`` its client got and its ledger row's id, so an operator can go
from a complaint to the log line to the row.

A request's line is formatted when it ends (a few f-strings: the time of day
is formatted once a second, not once a line) and appended to a list; a
background task writes the batch every ``interval`` seconds and once more at
shutdown. Formatting per request, not per batch, keeps the cost even: a batch
of a thousand lines formatted at once held the event loop for milliseconds,
which every request that arrived then waited for (the p99 at concurrency 1).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from math import floor
from typing import TYPE_CHECKING, TextIO

import orjson
from aiohttp import web

from .background import stop_task
from .onewrite import AIOHTTP_314

#: aiohttp's request class, whose ``remote`` and ``path`` ``_text`` reads off their fields (aiohttp
#: 3.14's; under another version, no class: read through the properties).
_AIOHTTP_REQUEST: type | None = web.Request if AIOHTTP_314 else None

if TYPE_CHECKING:
    from .call import Call, Route


#: ``f"{ms:.1f}"`` of the times under a second, by tenths of a millisecond: "0.0" ... "999.9".
TENTHS = tuple(f"{n // 10}.{n % 10}" for n in range(10_000))
#: How far from a half tenth a time must be to be read off ``TENTHS`` (see ``_text``).
_NOT_HALF = 0.499


class AccessLog:
    def __init__(self, fmt: str = "text", stream: TextIO | None = None, interval: float = 0.2,
                 clock: Callable[[], float] = time.time) -> None:
        self.fmt = fmt
        self.clock = clock  # the time of each line (unix seconds)
        self.stream = stream or sys.stderr
        self.interval = interval
        self._pending: list[str] = []
        self._task: asyncio.Task | None = None
        self._second = -1  # the whole second _stamp was formatted for
        self._second_starts = self._second_ends = 0.0  # its bounds, [starts, ends) (cheaper than int(ts))
        self._stamp = ""
        # _text's last " model=... stream=True" and what it was made of (see _middle_of)
        self._route: object = None
        self._principal: object = None
        self._stream: object = None
        self._model: object = None
        self._middle = ""
        # and its ' REMOTE "METHOD PATH" STATUS ' (see _head_of)
        self._remote: object = None
        self._method: object = None
        self._path: object = None
        self._status: object = None
        self._head = ""

    def record(self, call: Call) -> None:
        """Add ``call``'s line to the batch. (The text line is built here, not in a method of its
        own: a Python frame less a request; ``_text`` gives the line alone.)"""
        if self.fmt == "json":
            self._pending.append(self._json_line(call))
            return
        # One f-string, read straight off the call (each field's text built once): about 12%
        # fewer instructions than appending each present field to the line, and a third fewer
        # than passing the fields through a tuple. The times are read off Timing's fields with
        # its properties' arithmetic (a property is a Python call: ~1k instructions each).
        req = call.request
        response = call.response
        billing = call.billing
        usage = billing.usage
        timing = call.timing
        begun = timing.started
        # The times as f"{ms:.1f}" wrote them, read off TENTHS under a second when not near a half
        # tenth (a float's formatting costs ~4k instructions, this a few hundred). Near a half,
        # ms * 10 may have rounded across it: the formatting decides (half to even, of the exact value).
        latency = ((timing.ended_at or time.perf_counter()) - begun) * 1000.0
        scaled = latency * 10.0
        n = floor(scaled + 0.5)
        took = TENTHS[n] if 0 <= n < 10_000 and -_NOT_HALF < scaled - n < _NOT_HALF else f"{latency:.1f}"
        first_byte = timing.first_byte_at
        ttfb = ""
        if first_byte is not None:
            ms = (first_byte - begun) * 1000.0
            scaled = ms * 10.0
            n = floor(scaled + 0.5)
            ttfb = TENTHS[n] if 0 <= n < 10_000 and -_NOT_HALF < scaled - n < _NOT_HALF else f"{ms:.1f}"
        cost = billing.cost_micro
        # " model=M provider=P key=K stream=True", kept while the route, key and stream flag stay the
        # last line's (identity tests) and the model asked is the same text: a key's traffic to one model
        route = call.route
        principal = call.principal
        stream = call.stream
        model = call.model
        if route is self._route and principal is self._principal and stream is self._stream and model == self._model:
            middle = self._middle
        else:
            middle = self._middle_of(model, route, principal, stream)
        ts = self.clock()
        stamp = self._stamp if self._second_starts <= ts < self._second_ends else self._seconds(ts)
        if req is None:
            remote, method, path = None, "", ""
        elif type(req) is _AIOHTTP_REQUEST:
            # aiohttp's ``remote`` and ``path`` are reify'd: the first read of each runs a Python function
            # (two frames a line; ``method`` is read, and kept, by the dispatch first). Read here off what
            # they are made of, or what a clone set (aiohttp 3.14's fields; tests/test_access_log_request.py).
            reified = req._cache
            if "remote" in reified:
                remote = reified["remote"]
            else:
                peer = req._transport_peername
                if type(peer) is tuple and type(host := peer[0]) is str:
                    remote = host
                else:
                    remote = None if peer is None else str(peer[0]) if isinstance(peer, (list, tuple)) else str(peer)
            method = req.method
            path = reified["path"] if "path" in reified else req._rel_url.path  # noqa: SIM401  (lazy)
        else:
            remote, method, path = req.remote, req.method, req.path
        # ' REMOTE "METHOD PATH" STATUS ', kept while the four are the last line's (equal): a client's
        # requests to one endpoint, answered alike (the status's text and seven pieces less to join)
        status = response.status
        if path == self._path and status == self._status and remote == self._remote and method == self._method:
            head = self._head
        else:
            head = self._head_of(remote, method, path, status)
        # (what the usual line has none of, tested once)
        error = response.error_code or (response.error.code if response.error is not None else None)
        cache = response.cache_status
        tail = "" if not error and not cache and not response.client_gone else (
            f'{" error=" + error if error else ""}{" cache=" + cache if cache else ""}'
            f'{" client_gone=True" if response.client_gone else ""}')
        if usage and cost is not None and first_byte is not None:  # (the usual line: one string built, not four)
            self._pending.append(f'{stamp}{head}{took}ms{middle} tokens={usage.prompt_tokens}/'
                                 f'{usage.completion_tokens} cost_micro={cost} ttfb={ttfb}ms{tail} id={call.id}\n')
        else:
            self._pending.append(f'{stamp}{head}{took}ms{middle}'
                                 f'{f" tokens={usage.prompt_tokens}/{usage.completion_tokens}" if usage else ""}'
                                 f'{f" cost_micro={cost}" if cost is not None else ""}'
                                 f'{f" ttfb={ttfb}ms" if first_byte is not None else ""}{tail} id={call.id}\n')

    def _text(self, call: Call) -> str:
        """The text line ``record`` adds for ``call`` (taken back out of the batch)."""
        self.record(call)
        return self._pending.pop()

    def _json_line(self, call: Call) -> str:
        req = call.request
        principal = call.principal
        usage = call.billing.usage
        response = call.response
        timing = call.timing
        error = response.error_code or (response.error.code if response.error is not None else None)
        return self._json(
            self.clock(), req.remote if req is not None else None, req.method if req is not None else "",
            req.path if req is not None else "", response.status, call.model, call.provider_name, call.stream,
            getattr(principal, "name", None), usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None, call.billing.cost_micro, timing.latency_ms,
            timing.ttfb_ms, error, response.cache_status, response.client_gone, call.id)

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
        try:
            self.stream.write("".join(batch))
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _seconds(self, ts: float) -> str:
        """``YYYY-MM-DDTHH:MM:SS`` (UTC) of ``ts``, formatted once per second."""
        second = int(ts)
        if second != self._second:
            self._second = second
            self._second_starts, self._second_ends = float(second), float(second + 1)
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._stamp

    def _head_of(self, remote: str | None, method: str, path: str, status: int) -> str:
        """The line's ' REMOTE "METHOD PATH" STATUS ', kept for the next line of the same four."""
        head = f' {remote} "{method} {path}" {status} '
        self._remote, self._method, self._path, self._status, self._head = remote, method, path, status, head
        return head

    def _middle_of(self, model: str, route: Route | None, principal: object, stream: bool) -> str:
        """The line's " model=... provider=... key=... stream=True" (each when there is one),
        kept for the next line of the same route, key, stream flag and model."""
        provider = route.provider.name if route is not None else None
        key = getattr(principal, "name", None)
        middle = (f'{" model=" + model if model else ""}{" provider=" + provider if provider else ""}'
                  f'{" key=" + key if key else ""}{" stream=True" if stream else ""}')
        self._route, self._principal, self._stream, self._model, self._middle = route, principal, stream, model, middle
        return middle

    def _json(self, ts: float, remote: str | None, method: str, path: str, status: int, model: str,
              provider: str | None, stream: bool, key: str | None, p_tok: int | None, c_tok: int | None,
              cost: int | None, latency: float, ttfb: float | None, error: str | None, cache: str | None,
              gone: bool, request_id: str) -> str:
        return orjson.dumps({
            "time": f"{self._seconds(ts)}.{int(ts % 1 * 1000):03d}Z", "remote": remote, "method": method,
            "path": path, "status": status, "model": model or None, "provider": provider, "stream": stream,
            "key": key, "prompt_tokens": p_tok, "completion_tokens": c_tok, "cost_micro_usd": cost,
            "latency_ms": round(latency, 3), "ttfb_ms": round(ttfb, 3) if ttfb is not None else None,
            "error": error, "cache": cache, "client_gone": gone, "request_id": request_id,
        }).decode() + "\n"

"""A model request's way through the hooks (the upstream's part: ``forward.py``; sending: ``answers.py``).

authenticate -> resolve -> admit -> lookup -> upstream -> usage -> settle -> finish.
Every failure becomes a ProxyError answered in the client's dialect; settle
runs for every request that reached admit, finish for every request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

import orjson
from aiohttp import web

from .answers import _json_response, _stream_response, before_end, send_error, usage_known
from .call import CachedResponse, Call
from .errors import ProxyError, error_for
from .forward import forward
from .identify import identified
from .inflight import shutdown_error, uncancel
from .logs import redact
from .streaming import completion_to_chunks, replay

if TYPE_CHECKING:
    from .gateway import Gateway


async def run_detached(gateway: Gateway, call: Call) -> tuple[int, bytes]:
    """Run a model call that no HTTP client waits for (a batch line): ``call.principal``
    is set by the caller (no authentication), the call must not stream, and every
    other hook runs as for a request. Returns the answer's status and body (an error's
    JSON body included)."""
    await run_model_call(gateway, None, call)
    return call.response.status, call.response.body or b""


async def run_model_call(gateway: Gateway, http: web.Request | None, call: Call) -> web.StreamResponse:
    """Answer one chat / embeddings / messages request (``http`` None: a detached call)."""
    # A detached call never streams: the only use of the request it reaches is _send, which takes None.
    request = cast(web.Request, http)
    hooks = gateway.hooks
    admitted = False
    resp: web.StreamResponse | None = None
    task = gateway.inflight.enter(call)
    try:
        try:
            pending = identified(gateway, call)
            if pending is not None:
                await pending
            admitted = True
            pending = hooks.call_admit(call)
            if pending is not None:
                await pending
            cached = None
            for lookup in hooks.lookup:
                cached = await lookup(call)
                if cached is not None:
                    break
            if cached is not None:
                resp = await answer_cached(gateway, request, call, cached)
            else:
                resp = await forward(gateway, request, call)
        except ProxyError as err:
            resp = await send_error(gateway, request, call, err)
        except asyncio.CancelledError:
            if not call.response.shutdown:
                raise
            uncancel()  # stopped at shutdown_timeout: answer it, bill it
            resp = await send_error(gateway, request, call, shutdown_error())
        except Exception as exc:
            resp = await send_error(gateway, request, call, await error_for(
                exc, "request_failed", "request failed: %s %s", call.endpoint,
                redact(http.path) if http is not None else "(detached)"))
        call.timing.ended_at = time.perf_counter()
        if admitted:
            pending = hooks.call_settle(call)
            if pending is not None:
                await pending
    finally:
        pending = finished(gateway, call)
        if pending is not None:
            await pending
        gateway.inflight.leave(task)
    return resp


async def finish(gateway: Gateway, call: Call) -> None:
    """The last step of every call: its end time, tollway_finish hooks, the access log."""
    pending = finished(gateway, call)
    if pending is not None:
        await pending


def finished(gateway: Gateway, call: Call) -> Awaitable[None] | None:
    """``finish``'s steps as far as they need no await: None when done, else the coroutine that
    does the rest."""
    call.timing.ended_at = call.timing.ended_at or time.perf_counter()
    pending = gateway.hooks.call_finish(call)
    if pending is not None:
        return _finished_later(gateway, call, pending)
    if gateway.access_log is not None:
        gateway.access_log.record(call)
    return None


async def _finished_later(gateway: Gateway, call: Call, pending: Awaitable[None]) -> None:
    await pending
    if gateway.access_log is not None:
        gateway.access_log.record(call)


async def answer_here(gateway: Gateway, request: web.Request, call: Call,
                      respond: Callable[[], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Answer a call the gateway answers itself (e.g. the models list): ``respond()``'s
    response, or the error it raised, recorded on the call; finish hooks run in every case."""
    try:
        try:
            return await respond()
        except ProxyError as err:
            return await send_error(gateway, request, call, err)
        except Exception as exc:
            return await send_error(gateway, request, call, await error_for(
                exc, "request_failed", "request failed: %s %s", request.method, redact(request.path)))
    finally:
        await finish(gateway, call)


async def refuse(gateway: Gateway, request: web.Request, call: Call, err: ProxyError) -> web.StreamResponse:
    """Answer a call refused before any hook ran (a malformed body): finish hooks still see it."""
    try:
        return await send_error(gateway, request, call, err)
    finally:
        await finish(gateway, call)


async def answer_cached(gateway: Gateway, request: web.Request, call: Call,
                        cached: CachedResponse) -> web.StreamResponse:
    """Render a lookup hit as the client asked: JSON or a replayed stream."""
    dialect = gateway.dialects[call.dialect]
    call.billing.usage = cached.usage
    if cached.headers:
        call.response.headers.update(cached.headers)
    pending = usage_known(gateway, call)
    if pending is not None:
        await pending
    if call.endpoint == "chat" or call.endpoint == "messages":
        if call.stream:
            resp = _stream_response(call)
            await resp.prepare(request)
            await replay(call, resp, dialect.encoder(call), completion_to_chunks(cached.body), call.billing.usage,
                         lambda c: before_end(gateway, c))
            return resp
        body = dialect.render_completion(call, dict(cached.body))
    else:
        body = dict(cached.body)
    if call.billing.usage_extra:
        dialect.add_usage_fields(body, call.billing.usage_extra)
    return await _json_response(request, call, orjson.dumps(body))

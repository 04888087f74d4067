"""A model request's way through the hooks and the upstream.

authenticate -> resolve -> admit -> lookup -> upstream -> usage -> settle -> finish.
Every failure becomes a ProxyError answered in the client's dialect; settle
runs for every request that reached admit, finish for every request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

import orjson
from aiohttp import hdrs, web
from multidict import istr

from .call import CachedResponse, Call, Route
from .clientwrite import CLIENT_WRITE_TIMEOUT, ClientStalled, send_whole
from .errors import ProxyError, error_for
from .gateway import GATEWAY_KEY
from .identify import identified
from .inflight import shutdown_error, uncancel
from .logs import redact, throttled
from .media import MEDIA_PATHS, forward_media
from .onewrite import end_whole, head_with_first_bytes
from .provider import UNREADABLE, caller_key_refused, loads_json, unreadable_answer
from .sse_start import start_stream
from .streaming import TranslatingCodec, completion_to_chunks, pump, replay, splice_usage_fields
from .wholeanswer import send_answer

if TYPE_CHECKING:
    from .gateway import Gateway
    from .upstream import UpstreamRequest, UpstreamResponse

log = logging.getLogger("tollway")

JSON = "application/json"
# (names as ``istr``s, aiohttp's own ``hdrs`` where it has one: the response's headers then do not
# fold each name's case again, ~600 instructions a name, every answer)
SSE_HEADERS: dict[str, str] = {hdrs.CONTENT_TYPE: "text/event-stream", hdrs.CACHE_CONTROL: "no-cache",
                               istr("X-Accel-Buffering"): "no"}
MAX_ERROR_BODY = 1024 * 1024


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


def on_usage(gateway: Gateway, call: Call) -> Awaitable[None]:
    """The usage is known: the ``tollway_usage`` implementations' turn; an awaitable in every
    case (``usage_known``'s, or one with nothing to wait for)."""
    return usage_known(gateway, call) or NOTHING_TO_AWAIT


def usage_known(gateway: Gateway, call: Call) -> Awaitable[None] | None:
    """The usage is known: the ``tollway_usage`` implementations' turn; None when they are done,
    else what is left to await."""
    if call.dialect == "responses":
        return _usage_of_stored_response(gateway, call)
    return gateway.hooks.call_usage(call)


class _NothingToAwait:
    """An awaitable that is done at once (cheaper to await than a coroutine that returns None)."""

    __slots__ = ()
    __await__ = ().__iter__  # (not a method: the type slot calls it without the instance)


NOTHING_TO_AWAIT: Awaitable[None] = _NothingToAwait()  # type: ignore[assignment]


async def _usage_of_stored_response(gateway: Gateway, call: Call) -> None:
    # A response is continued by its id from now on: known (in memory, and in a store other
    # instances read) before the client has the answer.
    written = gateway.stored_responses.remember_call(call)
    pending = gateway.hooks.call_usage(call)
    if pending is not None:
        await pending
    if written is not None:
        await gateway.stored_responses.stored(written)


async def before_end(gateway: Gateway, call: Call) -> None:
    """Right before an answer's last bytes are written, when a plugin asked for it
    (``call.response.settle_before_end``): the settle implementations marked
    ``settles_before_end`` run now (they run again after the answer, and do nothing then),
    so what they send elsewhere (a charge to shared counters) has left this process
    before the client can have the whole answer."""
    if not call.response.settle_before_end:
        return
    call.response.settle_before_end = False
    request = call.request
    transport = request.transport if request is not None else None
    if transport is None or transport.is_closing():
        call.response.client_gone = True  # (the write that follows would say so)
    pending = gateway.hooks.call_settle_before_end(call)
    if pending is not None:
        await pending


async def send_error(gateway: Gateway, request: web.Request | None, call: Call,
                     err: ProxyError) -> web.StreamResponse:
    """Answer ``err`` (in the client's dialect and terms); a detached call (``request`` None) keeps it."""
    err = gateway.dialects[call.dialect].client_error(call, err)
    out = call.response
    out.error = err
    if out.web_response is not None and out.web_response.prepared:
        # The answer has started (a stream): it was ended in-band; nothing more to send.
        return out.web_response
    out.status = err.status
    out.error_code = err.code
    headers = {**out.headers, **err.headers, "Content-Type": JSON}
    resp = web.Response(status=err.status, body=err.render(call.dialect, gateway.config.errors), headers=headers)
    await _send(request, call, resp)
    return resp


async def _send(request: web.Request | None, call: Call, resp: web.Response) -> web.Response:
    """Write a whole response now, so settle runs after the client has it (or
    after ``server.timeouts.client_write`` when the client does not take it);
    returns it. A detached call (no client: a batch line) keeps it in ``call.response.body``."""
    if request is None:
        body = resp.body
        call.response.body = body if isinstance(body, bytes) else b""
        return resp
    gateway = request.app[GATEWAY_KEY]
    if call.response.settle_before_end:
        await before_end(gateway, call)
    try:
        await send_whole(resp, request, gateway.config.server.timeouts.client_write)
    except ClientStalled:
        call.response.client_gone = True
        call.response.error_code = CLIENT_WRITE_TIMEOUT
    except (ConnectionError, RuntimeError):
        call.response.client_gone = True
    return resp


# -- upstream -------------------------------------------------------------------------

async def forward(gateway: Gateway, request: web.Request, call: Call) -> web.StreamResponse:
    """Try the route; while nothing has reached the client, a ``tollway_retry`` hook
    may name another route to try after a failure."""
    route = call.route
    if route is None:
        raise AssertionError("tollway_resolve set call.route; a later hook cleared it")
    retry_hooks = gateway.hooks.retry
    while True:
        call.upstream_attempts += 1
        try:
            if call.endpoint == "embeddings":
                return await forward_embeddings(gateway, request, call, route)
            if call.endpoint in MEDIA_PATHS:
                return await forward_media(gateway, request, call, route)
            return await forward_chat(gateway, request, call, route)
        except ProxyError as err:
            if call.response.status or not retry_hooks:
                raise
            route = await next_route(gateway, call, err)


async def next_route(gateway: Gateway, call: Call, err: ProxyError) -> Route:
    """The route to try after ``err`` (an attempt on ``call.route`` failed), set as
    ``call.route``; raises ``err`` when the retry hooks name none. A route a
    ``tollway_reroute`` hook refuses (the money it needs is not there) is passed over;
    when nothing else is left, that refusal is raised."""
    failed = call.route
    assert failed is not None
    answer = err
    while True:
        following: Route | None = None
        for retry in gateway.hooks.retry:
            following = await retry(call, err)
            if following is not None:
                break
        if following is None:
            call.route = failed  # the last route tried, for the ledger and the logs
            raise answer
        throttled(log, logging.WARNING, f"failover:{failed.model}", "route %s via %s failed (%s); trying %s via %s",
                  failed.model, failed.provider.name, err.code, following.model, following.provider.name)
        call.route = following
        try:
            for reroute in gateway.hooks.reroute:
                await reroute(call, failed)
        except ProxyError as refused:
            answer = refused
            continue
        if call.earlier_routes is None:
            call.earlier_routes = [failed]
        else:
            call.earlier_routes.append(failed)
        return following


async def open_upstream(gateway: Gateway, call: Call, route: Route, request: UpstreamRequest) -> UpstreamResponse:
    """Send the request; an error status becomes the ProxyError to answer. ``tollway_attempt``
    hooks hear of every outcome."""
    provider = route.provider
    attempted = gateway.hooks.call_attempt
    call.timing.attempt_started = time.perf_counter()
    try:
        upstream = await provider.send(call, request)
    except ProxyError as failed:
        pending = attempted(call, route, failed)
        if pending is not None:
            await pending
        raise
    if upstream.status >= 400:
        try:
            body = await upstream.read_all(MAX_ERROR_BODY)
        except ProxyError:
            body = b""
        finally:
            upstream.release()
        if call.billing.caller_key and upstream.status in (401, 403):
            err = caller_key_refused(provider.name, upstream.status)
        else:
            err = provider.error_for(call, upstream.status, upstream.headers, body)
        pending = attempted(call, route, err)
        if pending is not None:
            await pending
        raise err
    pending = attempted(call, route, None)
    if pending is not None:
        await pending
    return upstream


async def forward_chat(gateway: Gateway, request: web.Request, call: Call, route: Route) -> web.StreamResponse:
    provider = route.provider
    dialect = gateway.dialects[call.dialect]
    native = provider.speaks(call.dialect)
    canonical = None if native else dialect.canonical_request(call)
    upstream = await open_upstream(gateway, call, route, provider.chat_request(call, route, canonical))

    if call.stream:
        try:
            if native:
                codec = dialect.passthrough(call)
            else:
                codec = TranslatingCodec(provider.chat_stream(call), dialect.encoder(call))
            filters = []
            for hook in gateway.hooks.stream_filter:
                f = await hook(call)
                if f is not None:
                    filters.append(f)
        except BaseException:
            upstream.release()  # pump has not taken the upstream over: give its connection back
            raise
        resp = _stream_response(call)
        transport = request.transport
        if getattr(upstream, "complete", False) and transport is not None and not transport.is_closing():
            head_with_first_bytes(resp)  # (one write fewer: nothing to wait for upstream)
        try:
            if start_stream(resp, request) is None:  # (aiohttp's prepare in one plain call, where it can)
                await resp.prepare(request)
        except (ConnectionError, RuntimeError):
            call.response.client_gone = True
        server = gateway.config.server
        await pump(call, resp, upstream, codec, lambda c: on_usage(gateway, c), tuple(filters),
                   server.disconnect_drain, server.timeouts.client_write, lambda c: before_end(gateway, c))
        return resp

    try:
        raw = await upstream.read_all()
    finally:
        upstream.release()
    call.timing.first_byte_at = time.perf_counter()
    out: bytes | None  # the upstream's own bytes, when they can go to the client as they are
    try:
        if native:
            body = loads_json(raw, provider.name)
            call.billing.usage = dialect.answer_usage(call, body)
            call.response.answer = body
            if call.dialect == "openai":
                call.response.completion = body
            out = raw
        else:
            completion, call.billing.usage = provider.chat_response(call, raw)
            call.response.completion = completion
            body = dialect.render_completion(call, completion)
            out = None
    except UNREADABLE as exc:
        raise unreadable_answer(provider.name, exc) from None
    pending = usage_known(gateway, call)
    if pending is not None:
        await pending
    billing = call.billing
    if billing.usage_estimated and billing.usage is not None:
        # The upstream's usage (none, or unusable) is not what was billed: the answer tells the count billed.
        body["usage"] = {**dialect.usage_object(billing.usage), **billing.usage_extra}
        out = None
    elif billing.usage_extra:
        # Add the gateway's fields (cost) to the upstream's bytes; re-serialise only if that cannot be done.
        out = splice_usage_fields(out, billing.usage_extra) if out is not None else None
        if out is None:
            dialect.add_usage_fields(body, billing.usage_extra)
    return await _json_response(request, call, out if out is not None else orjson.dumps(body))


async def forward_embeddings(gateway: Gateway, request: web.Request, call: Call, route: Route) -> web.StreamResponse:
    provider = route.provider
    upstream = await open_upstream(gateway, call, route, provider.embeddings_request(call, route))
    try:
        raw = await upstream.read_all()
    finally:
        upstream.release()
    call.timing.first_byte_at = time.perf_counter()
    try:
        body, call.billing.usage = provider.embeddings_response(call, raw)
    except UNREADABLE as exc:
        raise unreadable_answer(provider.name, exc) from None
    pending = usage_known(gateway, call)
    if pending is not None:
        await pending
    if call.billing.usage_extra and isinstance(body.get("usage"), dict):
        body["usage"].update(call.billing.usage_extra)
    return await _json_response(request, call, orjson.dumps(body))


def _stream_response(call: Call) -> web.StreamResponse:
    """A streamed answer's response, kept on the call: from here on errors go in-band."""
    out = call.response
    resp = out.web_response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **out.headers})
    out.status = 200
    return resp


async def _json_response(request: web.Request | None, call: Call, body: bytes) -> web.Response:
    """A 200 JSON answer, sent: written from its dict of headers in one call (``send_answer``)
    where it can be, else through a ``web.Response`` (``_send``)."""
    out = call.response
    out.status = 200
    headers = {**out.headers, hdrs.CONTENT_TYPE: JSON}
    sent = send_answer(request, 200, headers, body) if request is not None and not out.settle_before_end else None
    if sent is None:
        return await _send(request, call, web.Response(status=200, body=body, headers=headers))
    resp, writer = sent
    if writer._protocol._paused:  # (send_whole's drain, as its one write does it)
        try:
            await writer.drain()
        except (ConnectionError, RuntimeError):
            out.client_gone = True
            return resp
    end_whole(resp, writer)
    return resp


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

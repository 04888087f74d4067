"""A model call's way to the upstream and back: the route tried (and the next one a
``tollway_retry`` hook names after a failure), the request sent (``open_upstream``: an error
status becomes the ProxyError to answer; ``tollway_attempt`` hooks hear of every outcome), and
the answer passed to the client: a stream pumped (``streaming.pump``), a whole answer read, its
usage known, and sent as JSON (``answers``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, NoReturn

import orjson
from aiohttp import web

from .answers import _json_response, _started_stream, _stream_response, before_end, on_usage, usage_known
from .call import Call, Route
from .errors import ProxyError
from .hookcallers import HookCaller
from .logs import throttled
from .media import MEDIA_PATHS, forward_media
from .onewrite import head_with_first_bytes
from .provider import UNREADABLE, caller_key_refused, loads_json, unreadable_answer
from .sse_start import start_stream
from .streaming import TranslatingCodec, pump, splice_usage_fields

if TYPE_CHECKING:
    from .gateway import Gateway
    from .upstream import UpstreamRequest, UpstreamResponse

log = logging.getLogger("tollway")

MAX_ERROR_BODY = 1024 * 1024


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
    hooks hear of every outcome. (``forward_chat`` has these steps written out.)"""
    attempted = gateway.hooks.call_attempt
    call.timing.attempt_started = time.perf_counter()
    try:
        upstream = await route.provider.send(call, request)
    except ProxyError as failed:
        await attempt_failed(attempted, call, route, failed)
        raise
    if upstream.status >= 400:
        await refused_upstream(attempted, call, route, upstream)
    pending = attempted(call, route, None)
    if pending is not None:
        await pending
    return upstream


async def attempt_failed(attempted: HookCaller, call: Call, route: Route, failed: ProxyError) -> None:
    """``tollway_attempt`` hooks hear of an attempt that got no answer (the caller raises ``failed``)."""
    pending = attempted(call, route, failed)
    if pending is not None:
        await pending


async def refused_upstream(attempted: HookCaller, call: Call, route: Route, upstream: UpstreamResponse) -> NoReturn:
    """An answer with an error status: its body read (bounded), the connection given back, the
    ProxyError to answer raised once ``tollway_attempt`` hooks heard of it."""
    provider = route.provider
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
    await attempt_failed(attempted, call, route, err)
    raise err


async def forward_chat(gateway: Gateway, request: web.Request, call: Call, route: Route) -> web.StreamResponse:
    provider = route.provider
    dialect = gateway.dialects[call.dialect]
    native = provider.speaks(call.dialect)
    canonical = None if native else dialect.canonical_request(call)
    # (open_upstream written out: one coroutine less, at its call and at the wake for the head)
    upstream_request = provider.chat_request(call, route, canonical)
    attempted = gateway.hooks.call_attempt
    call.timing.attempt_started = time.perf_counter()
    try:
        upstream = await provider.send(call, upstream_request)
    except ProxyError as failed:
        await attempt_failed(attempted, call, route, failed)
        raise
    if upstream.status >= 400:
        await refused_upstream(attempted, call, route, upstream)
    pending = attempted(call, route, None)
    if pending is not None:
        await pending

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
        transport = request.transport
        # (the head with the first bytes, one write fewer, when there is nothing to wait for upstream)
        held = getattr(upstream, "complete", False) and transport is not None and not transport.is_closing()
        resp = _started_stream(call, request, held)  # (prepare's steps in one call, the head from the dict)
        if resp is None:
            resp = _stream_response(call)
            if held:
                head_with_first_bytes(resp)
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

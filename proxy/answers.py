"""How the core sends an answer, and the usage step every answer shares.

``send_error`` (a ProxyError in the client's dialect), ``_json_response`` (a 200 JSON answer, in
one write from its dict of headers where it can be: ``wholeanswer``), ``_send`` (a whole
``web.Response``, settle after the client has it), ``_stream_response`` (a stream's response,
kept on the call; ``_started_stream``: started too), ``before_end`` (the settle steps a plugin
wants before the last bytes), and ``usage_known``/``on_usage`` (the ``tollway_usage``
implementations' turn). Used by the pipeline (``pipeline.py``), the upstream path
(``forward.py``) and the other endpoints (``media.py``, ``upstream_items.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from aiohttp import hdrs, web
from multidict import istr

from .call import Call
from .clientwrite import CLIENT_WRITE_TIMEOUT, ClientStalled, send_whole
from .errors import ProxyError
from .gateway import GATEWAY_KEY
from .onewrite import end_whole
from .sse_start import start_sse
from .wholeanswer import send_answer

if TYPE_CHECKING:
    from .gateway import Gateway

JSON = "application/json"
# (names as ``istr``s, aiohttp's own ``hdrs`` where it has one: the response's headers then do not
# fold each name's case again, ~600 instructions a name, every answer)
SSE_HEADERS: dict[str, str] = {hdrs.CONTENT_TYPE: "text/event-stream", hdrs.CACHE_CONTROL: "no-cache",
                               istr("X-Accel-Buffering"): "no"}


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


def _stream_response(call: Call) -> web.StreamResponse:
    """A streamed answer's response, kept on the call: from here on errors go in-band."""
    out = call.response
    resp = out.web_response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **out.headers})
    out.status = 200
    return resp


def _started_stream(call: Call, request: web.BaseRequest, held: bool) -> web.StreamResponse | None:
    """``_stream_response``'s response, started (its head kept for the first bytes when ``held``)
    in one call from its dict of headers (``sse_start.start_sse``); None: nothing done."""
    out = call.response
    resp = start_sse(request, 200, {**SSE_HEADERS, **out.headers}, held)
    if resp is not None:
        out.web_response = resp
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

"""A client connection's request loop, with each request's handler awaited in the connection's task.

aiohttp's ``RequestHandler.start`` reads a connection's requests one after another and, for
each, creates a task for ``_handle_request`` (the handler, then the answer's ``prepare`` and
``write_eof``) and awaits it: "a new task is used for copy context vars" (aiohttp #3406), so
that a context variable a handler sets is not seen by the next request on the connection. On
Python 3.11 (no eager tasks) that task is ~18k instructions a request under callgrind (its
creation, its first step scheduled and run by the loop, the connection's task woken by its
end), against ~2.5k for awaiting the same coroutine: 4.6% of what tollway-core spends on a
request, 2.7% of tollway-full's.

``serve_requests`` is aiohttp 3.14's ``start`` (the same steps, in the same order: keep-alive,
pipelining, lingering reads, the shutdown and disconnect paths) that awaits
``_handle_request`` in the connection's own task instead, as long as the handlers leave the
context alone: after each request it compares the task's context with the one it had before
the first (the same mapping: one pointer comparison). A handler that set a context variable
(a plugin's tracing, say) is seen to, and from then on each request on that connection runs
in a task of its own with a copy of the connection's context as it was before the first
request, as aiohttp runs it: so what a handler sees of the context is aiohttp's in every case.

What awaiting in the connection's task changes, and why that is the same to the request:
``asyncio.current_task()`` in a handler is the connection's task (aiohttp's
``request.task`` already was); cancelling it (``shutdown``'s last step, a disconnect with
``handler_cancellation``, ``InFlight.wind_down``) reaches the handler as cancelling the
connection's task reached the request's task through its ``await``, and a handler that takes
the cancellation back (``inflight.uncancel``) leaves the connection's task as it was.

In the connection's task the request is handled by ``handle_request`` (aiohttp's
``_handle_request``, which finishes an answer already sent to its end without the four
coroutines of ``finish_response``); in a task of its own, by aiohttp's ``_handle_request``.

Under another aiohttp than 3.14 this is aiohttp's own ``start``.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable
from contextvars import copy_context
from typing import Any

from aiohttp import web
from aiohttp.helpers import ceil_timeout
from aiohttp.http_writer import StreamWriter
from aiohttp.web_exceptions import HTTPException
from aiohttp.web_protocol import _PAYLOAD_ACCESS_ERROR, ERROR, RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from .heldwrites import held_writes_of
from .onewrite import AIOHTTP_314

__all__ = ["ENABLED", "serve_requests"]

#: Off (or under another aiohttp): aiohttp's ``start``, a task per request (the tests compare both).
ENABLED = AIOHTTP_314


async def serve_requests(self: RequestHandler) -> None:
    """Process incoming requests (aiohttp 3.14's ``RequestHandler.start``; see the module docstring)."""
    if not ENABLED:
        return await RequestHandler.start(self)
    loop = self._loop
    manager = self._manager
    assert manager is not None
    keepalive_timeout = self._keepalive_timeout
    resp = None
    assert self._request_factory is not None
    assert self._request_handler is not None
    context = copy_context()  # the connection's, before any handler ran
    inline = True  # until a handler changes the context
    # An answer's last write may wait for the end of the loop's pass (heldwrites.py): it goes out
    # before this loop writes anything else or closes (a pipelined request's answer, a close).
    held = held_writes_of(self)

    while not self._force_close:
        if not self._messages:
            try:
                # wait for next request
                self._waiter = loop.create_future()
                await self._waiter
            finally:
                self._waiter = None
        elif held is not None:
            held.flush()  # a pipelined request, handled without a wait: the last answer goes first
        message, payload = self._messages.popleft()

        # Free a parser slot; resume reading once drained to low water so
        # pipelining keeps flowing while this request is handled.
        if self._parser is not None:  # pragma: no branch
            self._parser.message_consumed()
        if self._buffer_paused and len(self._messages) <= self._msg_queue_resume_size:
            self._resume_reading_if_drained()

        # time is only fetched if logging is enabled as otherwise
        # its thrown away and never used.
        start = loop.time() if self._logging_enabled else None

        manager.requests_count += 1
        writer = StreamWriter(self, loop)
        if isinstance(message, _ErrInfo):
            # make request_factory work
            request_handler = self._make_error_handler(message)
            message = ERROR
        else:
            request_handler = self._request_handler

        request = self._request_factory(message, payload, self, writer,
                                        self._task_handler or asyncio.current_task(loop))  # type: ignore[arg-type]
        try:
            try:
                if inline:
                    resp, reset = await handle_request(self, request, start, request_handler)
                    if copy_context() != context:
                        inline = False  # a handler set a context variable: a task (and a clean copy) each from now on
                else:
                    resp, reset = await _in_own_task(loop, self._handle_request(request, start, request_handler),
                                                     context)
            except ConnectionError:
                self.log_debug("Ignored premature client disconnection")
                break

            if reset:
                self.log_debug("Ignored premature client disconnection 2")
                break

            # notify server about keep-alive
            self._keepalive = bool(resp.keep_alive)

            # check payload
            if not payload.is_eof():
                lingering_time = self._lingering_time
                if not self._force_close and lingering_time:
                    self.log_debug("Start lingering close timer for %s sec.", lingering_time)

                    now = loop.time()
                    end_t = now + lingering_time

                    try:
                        while not payload.is_eof() and now < end_t:
                            async with ceil_timeout(end_t - now):
                                # read and ignore
                                await payload.readany()
                            now = loop.time()
                    except (asyncio.CancelledError, TimeoutError):
                        if (t := asyncio.current_task()) and t.cancelling():
                            raise

                # if payload still uncompleted
                if not payload.is_eof() and not self._force_close:
                    self.log_debug("Uncompleted request.")
                    self.close()

            payload.set_exception(_PAYLOAD_ACCESS_ERROR)

        except asyncio.CancelledError:
            self.log_debug("Ignored premature client disconnection")
            self.force_close()
            raise
        except Exception as exc:
            self.log_exception("Unhandled exception", exc_info=exc)
            self.force_close()
        except BaseException:
            self.force_close()
            raise
        finally:
            request._task = None  # type: ignore[assignment] # Break reference cycle in case of exception
            if self.transport is None and resp is not None:
                self.log_debug("Ignored premature client disconnection.")

        if self._keepalive and not self._close and not self._force_close:
            # start keep-alive timer
            close_time = loop.time() + keepalive_timeout
            self._next_keepalive_close_time = close_time
            if self._keepalive_handle is None:
                self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
        else:
            break

    # remove handler, close transport if no handlers left
    if not self._force_close:
        self._task_handler = None
        if self.transport is not None:
            if held is not None:
                held.flush()
            self.transport.close()


#: The responses whose ``prepare`` and ``write_eof`` are aiohttp's own (both return at once once the end is sent).
_PLAIN_RESPONSES = (web.Response, web.StreamResponse)


async def handle_request(self: RequestHandler, request: BaseRequest, start_time: float | None,
                         request_handler: Callable[[BaseRequest], Awaitable[StreamResponse]]
                         ) -> tuple[StreamResponse, bool]:
    """aiohttp 3.14's ``RequestHandler._handle_request``, but an answer that has been sent to
    its end (``send_whole``, a stream's ``write_eof``) is finished at once: ``finish_response``
    would await its ``prepare`` and ``write_eof``, both of which return at once then, in two
    coroutines of its own (ClientConnection's and aiohttp's: four in all, ~2.7k instructions);
    what is left of it is ``request._finish()`` and ``log_access``. (``ClientConnection.finish_response``
    changes only an ``HTTPException``'s answer, which is never one of these.)"""
    self._request_in_progress = True
    try:
        try:
            self._current_request = request
            resp = await request_handler(request)
        finally:
            self._current_request = None
    except HTTPException as exc:
        resp, reset = await self.finish_response(request, exc, start_time)
    except asyncio.CancelledError:
        raise
    except TimeoutError as exc:
        self.log_debug("Request handler timed out.", exc_info=exc)
        resp = self.handle_error(request, 504)
        resp, reset = await self.finish_response(request, resp, start_time)
    except Exception as exc:
        resp = self.handle_error(request, 500, exc)
        resp, reset = await self.finish_response(request, resp, start_time)
    else:
        # Deprecation warning (See #2415)
        if getattr(resp, "__http_exception__", False):
            warnings.warn("returning HTTPException object is deprecated (#2415) and will be removed, "
                          "please raise the exception instead", DeprecationWarning, stacklevel=1)
        if type(resp) in _PLAIN_RESPONSES and resp._eof_sent and not self._upgraded:
            request._finish()
            self.log_access(request, resp, start_time)
            reset = False
        else:
            resp, reset = await self.finish_response(request, resp, start_time)
    finally:
        self._request_in_progress = False
        if self._handler_waiter is not None:
            self._handler_waiter.set_result(None)
    return resp, reset


def _in_own_task(loop: asyncio.AbstractEventLoop, coro: Any, context: Any) -> asyncio.Task:
    """``coro`` in a task of its own, in a copy of the connection's first ``context`` (aiohttp's way)."""
    return loop.create_task(coro, context=context.copy())

"""One client connection: aiohttp's RequestHandler with the bounds the edge needs.

aiohttp's server bounds only keep-alive idleness: a client that dribbles its
request head or body holds a socket, a file descriptor and a buffer for as
long as it likes. ``ClientConnection`` arms one timer per connection state
(never per byte) from ``server.timeouts``:

- head (``header_read``): from accept, and from the first byte of each later
  request on a kept-alive connection, until the head is complete. On expiry
  the client gets a 408 in the OpenAI error shape (if it sent anything) and
  the connection is closed.
- body (``body_read``): from the end of the head until the body is complete.
  On expiry the handler's read raises ``BodyReadTimeout`` (``read_json``
  answers it 408 in the client's dialect) and the connection closes after the
  answer.
- idle between requests (``keepalive_idle``): aiohttp's own keep-alive timer.
- while the handler answers: nothing here (the upstream's timeouts and
  ``client_write`` apply).

A head that arrives whole in one read, with its body, arms nothing: the
first request's head timer is the one armed at accept.

It also answers what aiohttp answers by itself (a malformed request, an
exception that escaped a handler) in the client's error shape instead of plain
text (Anthropic's on the Messages API: for a head the parser refused, its
request line is read from the bytes that failed), and logs it as one short,
masked, rate-limited line instead of a traceback that quotes the raw request
line and headers (keys included).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, cast
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, ContentEncodingError, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo

from .config import ClientTimeouts
from .dispatch import dispatcher
from .errors import ProxyError, dialect_of_path, internal_error
from .heldwrites import HeldWrites
from .logs import redact, throttled
from .onewrite import AIOHTTP_314
from .server_loop import serve_requests

__all__ = ["BodyReadTimeout", "ClientConnection", "GatewayRunner"]

log = logging.getLogger("tollway.server")

_HEAD, _BODY = 1, 2

#: ``resume_reading`` returns at once when nothing holds the connection's reading. aiohttp 3.14's
#: request body calls it at its end (``feed_eof``) and whenever a read leaves its buffer under the
#: low-water mark (the handler's read of the whole body: every request with a body): it clears
#: ``_reading_paused``, feeds the parser ``b""`` (``data_received``: bytes the parser kept when it
#: paused) and resumes the transport. The parser keeps bytes only when it paused: for a body past
#: its high-water mark (``pause_reading``: ``_reading_paused`` until this resume feeds them back),
#: or between messages when its count of requests not yet taken reaches aiohttp's queue size (32;
#: the protocol's ``_buffer_paused`` usually says so, but the parser's count can run one above the
#: queue's, so a connection that ever had two requests queued goes aiohttp's way from then on:
#: ``_pipelined``). The transport is paused only with one of those two flags. So with none of them
#: (nor ``_upgraded``) the call has nothing to do, and returning saves two calls and a parse of
#: nothing a request (~190 bytecodes, 5 Python frames). Off: aiohttp's own every time
#: (tests/test_resume_reading.py runs aiohttp's beside each shortcut, and both ways).
HELD_ONLY = AIOHTTP_314


class BodyReadTimeout(TimeoutError):
    """The request body did not arrive within ``server.timeouts.body_read``.

    A TimeoutError, so that aiohttp's lingering read of an unread body ends
    quietly on it too."""


def _head_timeout_answer(seconds: float, dialect: str = "openai") -> bytes:
    body = ProxyError(408, f"the request head did not arrive within {seconds:g} seconds "
                           "(server.timeouts.header_read)", code="header_read_timeout").render(dialect)
    return (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body


class ClientConnection(RequestHandler):
    """The protocol of one client connection (see the module docstring)."""

    __slots__ = ("_limits", "_timer", "_timer_kind", "_head_bytes", "_body", "_head_start", "_bad_target",
                 "_pipelined", "held_writes")

    def __init__(self, manager: ClientServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits: ClientTimeouts = manager.timeouts
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = 0
        self._head_bytes = False  # bytes of a head that is not complete yet arrived
        self._body: Any = None  # the payload the body timer is for
        self._head_start: bytes | None = None  # the first read of a head that came in several reads
        self._bad_target: str | None = None  # the path of a head the parser refused
        self._pipelined = False  # two requests were queued at once, once (see HELD_ONLY)
        # the server's: an answer's last write waits for the end of the loop's pass (heldwrites.py)
        self.held_writes: HeldWrites | None = manager.held_writes

    start = serve_requests  # aiohttp's request loop, each handler awaited without a task of its own

    def resume_reading(self, resume_parser: bool = True) -> None:
        """aiohttp's, except where it does nothing (see ``HELD_ONLY``)."""
        if HELD_ONLY and not (self._reading_paused or self._buffer_paused or self._upgraded or self._pipelined):
            return
        super().resume_reading(resume_parser)

    # -- the timers -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm(_HEAD, self._limits.header_read)
        server = cast(ClientServer, self._manager)
        server.open_count += 1
        if server.open_count > server.evict_above:
            server.make_room(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._body = None
        if self._manager is not None:
            cast(ClientServer, self._manager).open_count -= 1
        super().connection_lost(exc)

    def force_close(self) -> None:
        """aiohttp's, after the writes held in this pass (this connection's last answer may be one)."""
        if self.held_writes is not None:
            self.held_writes.flush()
        super().force_close()

    @property
    def waiting(self) -> bool:
        """Open, and not answering a request: a head still arriving, or idle between requests."""
        return (self.transport is not None and not self._request_in_progress and not self._force_close
                and (self._timer_kind == _HEAD or (self._waiter is not None and not self._messages)))

    def evict(self) -> None:
        """Close this waiting connection to make room (a 408 if part of a head had come)."""
        if self.held_writes is not None:
            self.held_writes.flush()  # (its last answer may be held: it goes first)
        if self._head_bytes and self._timer_kind == _HEAD and self.transport is not None:
            self.transport.write(self._head_timeout_answer())
        self.force_close()

    def data_received(self, data: bytes) -> None:
        timer = self._timer
        count = self._request_count
        body = self._body
        super().data_received(data)
        if self._request_count != count:
            messages = self._messages
            if len(messages) > 1:
                self._pipelined = True
            if self._head_start is not None or type(messages[-1][0]) is _ErrInfo:
                self._head_done(data)
            if body is not None and not body.is_eof():
                # The framing broke inside this body (a bad chunk): aiohttp queues the error as a
                # next message and leaves the body waiting for bytes that never come. Fail the body
                # (the handler answers 400) instead of leaving the request hanging.
                error = self._messages[-1][0] if self._messages else None
                body.set_exception(RequestPayloadError(getattr(error, "message", "") or "broken request framing"))
            # One or more heads completed in this read; only the newest may still have a body to come.
            if self._timer is not None:
                self._disarm()
            payload = messages[-1][1] if messages else None
            if payload is not None and not payload.is_eof():
                self._body = payload
                self._arm(_BODY, self._limits.body_read)
                payload.on_eof(self._body_done)
        elif timer is None:
            # Nothing was pending: these are the first bytes of the next request's head.
            if self._timer is None and data and not (self._close or self._force_close or self._upgraded):
                self._arm(_HEAD, self._limits.header_read)
                self._head_bytes = True
                self._head_start = data
        elif self._timer_kind == _HEAD:
            if not self._head_bytes:
                self._head_start = data
            self._head_bytes = True

    def _head_done(self, data: bytes) -> None:
        """A head completed in ``data`` (not the usual one: it came in several reads, or the
        parser refused it): what the error answer of a refused one needs, its path."""
        if type(self._messages[-1][0]) is _ErrInfo:
            self._bad_target = _target_path(data) or _target_path(self._head_start)
        self._head_start = None

    def _head_timeout_answer(self) -> bytes:
        server = cast(ClientServer, self._manager)
        path = _target_path(self._head_start)
        if path is not None and dialect_of_path(path, server.base_path) == "anthropic":
            return server.head_timeout_answer_anthropic
        return server.head_timeout_answer

    def _body_done(self) -> None:
        if self._timer_kind == _BODY:
            self._disarm()
        self._body = None

    def _arm(self, kind: int, seconds: float) -> None:
        self._timer = self._loop.call_at(self._loop.time() + seconds, self._expired)
        self._timer_kind = kind
        self._head_bytes = False

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_kind = 0

    def _expired(self) -> None:
        kind = self._timer_kind
        self._timer = None
        self._timer_kind = 0
        if kind == _BODY:
            payload, self._body = self._body, None
            if payload is not None and not payload.is_eof():
                seconds = self._limits.body_read
                payload.set_exception(BodyReadTimeout(f"the request body did not arrive within {seconds:g} "
                                                      "seconds (server.timeouts.body_read)"))
                self.close()  # answer (408), then close: the rest of the body is not worth waiting for
                throttled(log, logging.INFO, "body_read", "a client did not send its request body within "
                          "server.timeouts.body_read (%gs); answered 408", seconds)
            return
        if self._request_in_progress or self._messages:
            # Bytes of a next request arrived while this one is answered, and its head is late:
            # finish the answer, then close instead of waiting for the rest.
            self.close()
            return
        if self._head_bytes and self.transport is not None:
            self.transport.write(self._head_timeout_answer())
        throttled(log, logging.INFO, "header_read", "closed a client connection whose request head did not "
                  "arrive within server.timeouts.header_read (%gs)", self._limits.header_read)
        self.force_close()

    # -- what aiohttp answers and logs by itself ------------------------------------
    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A malformed request (400 from the parser) or an exception that escaped a
        handler (500; 504 for a TimeoutError), answered in the client's error shape."""
        if request.writer.output_size > 0:  # as aiohttp's: the answer has started, the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if status >= 500:
            if status == 504:
                err = ProxyError(504, "the gateway timed out answering this request", code="gateway_timeout")
            else:
                err = internal_error()
            throttled(log, logging.ERROR, "handler_error", "error answering %s %s", request.method,
                      redact(request.path), exc_info=exc)
        elif isinstance(exc, LineTooLong):  # (its message quotes the line's first 100 bytes: not repeated)
            err = ProxyError(431, f"the request line or a header is longer than the gateway's limit of {exc.args[1]} "
                                  "bytes", code="header_too_large")
        elif isinstance(exc, ContentEncodingError) and "install" in exc.message:  # a coding aiohttp lacks
            coding = next((f" {c!r}" for c in ("br", "zstd") if f"({c})" in exc.message), "")
            err = ProxyError(415, f"the request body's Content-Encoding{coding} is not supported: send the "
                                  "body uncompressed, or with Content-Encoding gzip or deflate",
                             code="unsupported_content_encoding")
        else:
            what = _first_line(message or (exc.message if isinstance(exc, HttpProcessingError) else "") or "")
            err = ProxyError(status, f"malformed HTTP request: {what or 'cannot be parsed'}",
                             code="bad_http_request")
            if not (self._request_count == 1 and isinstance(exc, BadHttpMethod)):  # not HTTP at all: aiohttp's rule
                throttled(log, logging.INFO, "bad_http", "malformed HTTP request from %s: %s", request.remote,
                          what)
        path = self._bad_target if status < 500 and self._bad_target is not None else request.path
        dialect = dialect_of_path(path, cast(ClientServer, self._manager).base_path)
        resp = web.Response(status=err.status, body=err.render(dialect), content_type="application/json")
        resp.force_close()
        return resp

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        """aiohttp's own error answers are plain text (an unroutable target such as
        CONNECT's ``host:port``, an Expect it does not know, a body over the size
        limit): answered here in the OpenAI error shape instead, headers kept."""
        # (the status first: a web.Response is an ABC's instance (MutableMapping), and isinstance on it
        # goes through ABCMeta.__instancecheck__ in Python, ~1.5k instructions an answer)
        if resp.status >= 400 and isinstance(resp, web.HTTPException):
            resp = _json_answer(request, resp)
        return await super().finish_response(request, resp, start_time)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error lines: a client's broken connection or body in one
        short line, anything else with its traceback; all rate-limited."""
        exc = kw.get("exc_info")
        if isinstance(exc, (ConnectionError, HttpProcessingError, RequestPayloadError, asyncio.TimeoutError)):
            throttled(log, logging.INFO, "client_io", "a client connection ended with an error: %s",
                      redact(_first_line(str(exc)) or type(exc).__name__))
            return
        msg, *rest = args
        throttled(log, logging.ERROR, f"aiohttp:{msg}", str(msg), *rest, exc_info=exc)


def _json_answer(request: web.BaseRequest, exc: web.HTTPException) -> web.Response:
    status, target = exc.status, redact(request.raw_path, limit=100)
    if status == 404:
        err = ProxyError(404, f"unknown endpoint {request.method} {target}", code="unknown_endpoint")
    elif status == 405:
        err = ProxyError(405, f"{request.method} is not allowed on {target}", code="method_not_allowed")
    else:
        text = exc.text or ""
        default = f"{status}: {exc.reason}"
        err = ProxyError(status, text if text and text != default else exc.reason or "error",
                         code=(exc.reason or "error").lower().replace(" ", "_").replace("-", "_"))
    err.headers.update((k, v) for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length"))
    manager = getattr(request.protocol, "_manager", None)
    dialect = dialect_of_path(request.path, getattr(manager, "base_path", None))
    resp = web.Response(status=status, body=err.render(dialect), headers=err.headers, content_type="application/json")
    if not exc.keep_alive:
        resp.force_close()
    return resp


# A request line: method, target, version (the target as sent: origin or absolute form).
_REQUEST_LINE = re.compile(rb"(?:^|\n)[!-~]+ ([^ \r\n]+) HTTP/")


def _target_path(data: bytes | None) -> str | None:
    """The path of the last request line in ``data`` (bytes of a head), or None."""
    lines: list[bytes] = _REQUEST_LINE.findall(data) if data else []
    if not lines:
        return None
    target = lines[-1].decode("latin-1")
    if not target.startswith("/"):
        target = urlsplit(target).path if "://" in target else ""
    return target.split("?", 1)[0]


def _first_line(text: str) -> str:
    """The reason of a parser message, without the raw bytes aiohttp quotes under it."""
    return redact(text.strip().split("\n", 1)[0].rstrip(":"), limit=120)


class ClientServer(web.Server):
    """aiohttp's connection factory, making ClientConnections.

    Over ``evict_above`` open client connections (half the process's file
    descriptor limit), each new one closes the oldest connection that is not
    answering a request: an idle kept-alive one, or one whose head is still
    dribbling in. nginx reuses idle keep-alive connections the same way when
    it runs out; without it, a few hundred slow clients hold every descriptor
    and new connections are refused until their timeouts run out.
    """

    timeouts: ClientTimeouts
    head_timeout_answer: bytes
    head_timeout_answer_anthropic: bytes
    base_path: str | None
    open_count: int
    evict_above: int
    held_writes: HeldWrites | None

    def __call__(self) -> RequestHandler:
        return ClientConnection(self, loop=self._loop, **self._kwargs)

    def make_room(self, newcomer: ClientConnection) -> None:
        for conn in self._connections:  # in accept order: the oldest first
            if conn is not newcomer and isinstance(conn, ClientConnection) and conn.waiting:
                conn.evict()
                throttled(log, logging.WARNING, "evicted", "more than %d client connections are open (half the "
                          "file descriptor limit): closed the oldest that was not in a request", self.evict_above)
                return


class GatewayRunner(web.AppRunner):
    """The runner ``tollway serve`` and the tests serve a gateway app with:
    aiohttp's, with ClientConnection as the protocol and ``server.timeouts``."""

    def __init__(self, app: web.Application, *, timeouts: ClientTimeouts, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", timeouts.keepalive_idle)
        super().__init__(app, **kwargs)
        self._timeouts = timeouts

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if isinstance(self._app, web.Application):
            # (its handler takes the Requests the app's request factory makes)
            server.request_handler = cast(Any, await dispatcher(self._app))  # the routes at fixed paths, directly
        # aiohttp builds its Server inside Application._make_handler; the Server's
        # __call__ is the one seam that chooses the connection class.
        server.__class__ = ClientServer
        client_server = cast(ClientServer, server)
        client_server.timeouts = self._timeouts
        client_server.head_timeout_answer = _head_timeout_answer(self._timeouts.header_read)
        client_server.head_timeout_answer_anthropic = _head_timeout_answer(self._timeouts.header_read, "anthropic")
        from .gateway import GATEWAY_KEY

        gateway = self._app.get(GATEWAY_KEY) if isinstance(self._app, web.Application) else None
        client_server.base_path = gateway.config.server.base_path if gateway is not None else None
        client_server.held_writes = gateway.held_writes if gateway is not None else None
        client_server.open_count = 0
        client_server.evict_above = _half_the_fd_limit()
        return client_server


def _half_the_fd_limit() -> int:
    """Half the process's soft RLIMIT_NOFILE (the other half for upstream
    connections, storage and files); at least 64."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 1 << 30
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 1 << 30
    return max(64, soft // 2)

"""ProxyError: every failure the gateway answers with, and its rendering.

Everything that goes wrong on a request ends as one ``ProxyError`` value,
rendered in the client's dialect (OpenAI shape; Anthropic shape on
``/v1/messages``). Model requests render theirs in the pipeline, where the
call's hooks must see it; every other route (health, the models list's
neighbours, plugin routes such as the admin API) just raises, and
``error_middleware`` renders it. Any other exception is logged with its
traceback (rate-limited) and answered with a bare 500.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import orjson
from aiohttp import web

from .logs import redact, throttled

log = logging.getLogger("tollway")

# status -> (OpenAI error type, Anthropic error type)
_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("authentication_error", "authentication_error"),
    402: ("insufficient_quota", "billing_error"),
    403: ("permission_error", "permission_error"),
    404: ("not_found_error", "not_found_error"),
    405: ("invalid_request_error", "invalid_request_error"),
    408: ("invalid_request_error", "timeout_error"),
    409: ("invalid_request_error", "invalid_request_error"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "invalid_request_error"),
    429: ("rate_limit_error", "rate_limit_error"),
    500: ("server_error", "api_error"),
    502: ("upstream_error", "api_error"),
    503: ("service_unavailable", "overloaded_error"),
    504: ("timeout_error", "timeout_error"),
}
_CLIENT_ERROR = ("invalid_request_error", "invalid_request_error")  # a 4xx not listed above
_SERVER_ERROR = ("api_error", "api_error")


class ErrorStyle(Protocol):
    """What of an error body the operator chose (``errors:`` in the config)."""

    @property
    def extra_fields(self) -> bool:
        """Render ``ProxyError.extra`` (limit, used, resetAt...) into the error object."""

    @property
    def numeric_code(self) -> bool:
        """``code`` is the HTTP status; the named code is ``reason``."""


class ProxyError(Exception):
    """An error answered to the client.

    ``status`` is the HTTP status, ``message`` says what to fix, ``code`` is a
    short machine-readable reason, ``param`` names the offending request field.
    ``headers`` are added to the response (``Retry-After``, rate-limit headers).
    ``extra`` holds fields an operator may add to the body (``errors.extra_fields``:
    ``limit``, ``used``, ``resetAt`` of the limit or budget that refused).
    ``style`` is the operator's ``errors:`` choice for an error rendered in-band (one
    that ends a stream): the core sets it (``styled``) before a stream encoder renders
    it, so an error chunk has the same numeric ``code`` and extra fields as the body
    the same error gets before a stream starts.
    """

    __slots__ = ("status", "message", "code", "param", "headers", "type", "extra", "style")

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        type: str | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers) if headers else {}
        self.type = type
        self.extra = extra
        self.style: ErrorStyle | None = None

    def styled(self, style: ErrorStyle | None) -> ProxyError:
        """This error, to be rendered in-band in the operator's ``errors:`` style."""
        self.style = style
        return self

    def __repr__(self) -> str:
        return f"ProxyError({self.status}, {self.message!r}, code={self.code!r})"

    def openai_type(self) -> str:
        return self.type or _TYPES.get(self.status, _CLIENT_ERROR if self.status < 500 else _SERVER_ERROR)[0]

    def anthropic_type(self) -> str:
        return _TYPES.get(self.status, _CLIENT_ERROR if self.status < 500 else _SERVER_ERROR)[1]

    def openai_body(self, style: ErrorStyle | None = None) -> dict:
        error: dict[str, object] = {"message": self.message, "type": self.openai_type(), "param": self.param,
                                    "code": self.code}
        return {"error": self.add_styled_fields(error, style)}

    def add_styled_fields(self, error: dict[str, object], style: ErrorStyle | None) -> dict[str, object]:
        """``error`` (an OpenAI-shaped error object, or a Responses stream's error event) with
        what the operator's ``errors:`` style adds: ``code`` as the HTTP status and the name
        as ``reason`` (``numeric_code``), and ``limit``/``used``/``resetAt``... (``extra_fields``)."""
        if style is not None:
            if style.numeric_code:
                error["code"] = self.status
                error["reason"] = self.code
            if style.extra_fields and self.extra:
                error.update(self.extra)
        return error

    def anthropic_body(self, style: ErrorStyle | None = None) -> dict:
        error: dict[str, object] = {"type": self.anthropic_type(), "message": self.message}
        if style is not None and style.extra_fields and self.extra:
            error.update(self.extra)
        return {"type": "error", "error": error}

    def render(self, dialect: str = "openai", style: ErrorStyle | None = None) -> bytes:
        """The JSON error body in the client's dialect, in the operator's ``errors:`` style."""
        body = self.anthropic_body(style) if dialect == "anthropic" else self.openai_body(style)
        return orjson.dumps(body)

    def sse_event(self, dialect: str = "openai") -> bytes:
        """The in-band error for a stream that already answered 200 (in ``self.style``)."""
        if dialect == "anthropic":
            return b"event: error\ndata: " + self.render("anthropic", self.style) + b"\n\n"
        return b"data: " + self.render("openai", self.style) + b"\n\n"


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ProxyError:
    """A 400 that names what to fix (``param``: the offending request field)."""
    return ProxyError(400, message, param=param, code=code)


def internal_error() -> ProxyError:
    """What a client sees when the gateway itself failed: no details, no traceback."""
    return ProxyError(500, "internal error in the gateway; the operator's log has details", code="internal_error")


def dialect_of(request: web.BaseRequest) -> str:
    """The error dialect of a route: Anthropic's on the Messages API (under /v1 or
    ``server.base_path``), OpenAI's elsewhere."""
    path = request.path
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.endswith("/messages") or "/messages/" in path:
        from .gateway import GATEWAY_KEY

        app = getattr(request, "app", None)
        gateway = app.get(GATEWAY_KEY) if app is not None else None
        return dialect_of_path(path, gateway.config.server.base_path if gateway is not None else None)
    return "openai"


def dialect_of_path(path: str, base_path: str | None) -> str:
    """``dialect_of`` a request path, with the operator's ``server.base_path``."""
    if path.startswith("/v1/messages") or (base_path and path.startswith(base_path + "/messages")):
        return "anthropic"
    return "openai"


def error_response(err: ProxyError, dialect: str = "openai", style: ErrorStyle | None = None) -> web.Response:
    """An error as a whole JSON response, with its headers (``Retry-After``, ``Allow``...)."""
    return web.Response(status=err.status, body=err.render(dialect, style),
                        headers={**err.headers, "Content-Type": "application/json"})


def style_of(request: web.BaseRequest | None) -> ErrorStyle | None:
    """The serving gateway's ``errors:`` style (None outside a gateway's app, or without a request)."""
    from .gateway import GATEWAY_KEY

    app = getattr(request, "app", None)
    gateway = app.get(GATEWAY_KEY) if app is not None else None
    return gateway.config.errors if gateway is not None else None


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Render what any route raised: a ProxyError as itself, anything else as a bare
    500 and one log line. aiohttp's own HTTP exceptions pass through unchanged."""
    try:
        return await handler(request)
    except ProxyError as err:
        return error_response(err, dialect_of(request), style_of(request))
    except web.HTTPException:
        raise
    except Exception as exc:
        return error_response(await error_for(exc, "route_failed", "%s %s failed", request.method,
                                               redact(request.path), store_of=request),
                              dialect_of(request), style_of(request))


async def error_for(exc: Exception, key: str, message: str, *args: object,
                    store_of: web.Request | None = None) -> ProxyError:
    """The answer to ``exc``, raised while serving a request and not a ProxyError: the client's
    fault (``client_fault``) as its 400; with ``store_of`` (the request), the store not answering
    as a 503 (one log line); else the gateway's own failure, logged with its traceback
    (``message % args``, rate-limited under ``key``) and answered with a bare 500."""
    fault = client_fault(exc)
    if fault is not None:
        return fault
    if store_of is not None and await _store_down(store_of, exc):
        throttled(log, logging.ERROR, "route_store_down", "%s %s: the store cannot be reached (%s: %s)",
                  store_of.method, redact(store_of.path), type(exc).__name__, exc)
        return storage_unavailable()
    throttled(log, logging.ERROR, key, message, *args, exc_info=exc)
    return internal_error()


def client_fault(exc: Exception) -> ProxyError | None:
    """The answer to an exception that is not a ProxyError but that the client caused and can fix:
    a value in the request (an id in the path, a query parameter, a field of the body or of an
    uploaded file) holding text the store cannot keep. None for the gateway's own failures (500)."""
    from .store import refuses_text

    if refuses_text(exc):
        return ProxyError(400, "a value in this request holds a NUL character (\\u0000) or text that is "
                          "not UTF-8, which the gateway's store cannot keep; remove it and send the request again",
                          code="invalid_text")
    return None


def storage_unavailable() -> ProxyError:
    """What a route that needs the store (the admin API, usage) answers while it cannot be reached."""
    return ProxyError(503, "the gateway's store (storage.url) cannot be reached; retry shortly",
                      code="storage_unavailable", headers={"Retry-After": "1"})


async def _store_down(request: web.Request, exc: Exception) -> bool:
    """``exc`` looks like the store's connection failing, and the store does not answer now."""
    from .gateway import GATEWAY_KEY
    from .store import unreachable

    if not unreachable(exc):
        return False
    app = getattr(request, "app", None)
    gateway = app.get(GATEWAY_KEY) if app is not None else None
    return gateway is not None and not await gateway.store.ping()

"""ProxyError: every failure the gateway answers with, and its rendering.

Everything that goes wrong on a request ends as one ``ProxyError`` value; the
routes render it once, in the client's dialect (OpenAI or Anthropic shape).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

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


class ProxyError(Exception):
    """An error answered to the client.

    ``status`` is the HTTP status, ``message`` says what to fix, ``code`` is a
    short machine-readable reason, ``param`` names the offending request field.
    ``headers`` are added to the response (``Retry-After``, rate-limit headers).
    """

    __slots__ = ("status", "message", "code", "param", "headers", "type")

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers) if headers else {}
        self.type = type

    def __repr__(self) -> str:
        return f"ProxyError({self.status}, {self.message!r}, code={self.code!r})"

    def openai_type(self) -> str:
        return self.type or _TYPES.get(self.status, ("api_error", "api_error"))[0]

    def anthropic_type(self) -> str:
        return _TYPES.get(self.status, ("api_error", "api_error"))[1]

    def openai_body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.openai_type(),
                "param": self.param,
                "code": self.code,
            }
        }

    def anthropic_body(self) -> dict:
        return {"type": "error", "error": {"type": self.anthropic_type(), "message": self.message}}

    def render(self, dialect: str = "openai") -> bytes:
        """The JSON error body in the client's dialect."""
        body = self.anthropic_body() if dialect == "anthropic" else self.openai_body()
        return orjson.dumps(body)

    def sse_event(self, dialect: str = "openai") -> bytes:
        """The in-band error for a stream that already answered 200."""
        if dialect == "anthropic":
            return b"event: error\ndata: " + self.render("anthropic") + b"\n\n"
        return b"data: " + self.render("openai") + b"\n\n"


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ProxyError:
    return ProxyError(400, message, param=param, code=code)


def internal_error() -> ProxyError:
    """What a client sees when the gateway itself failed: no details, no traceback."""
    return ProxyError(500, "internal error in the gateway; the operator's log has details", code="internal_error")

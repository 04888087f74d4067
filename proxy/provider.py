"""The provider adapter contract: what an upstream kind implements.

Plugins return adapter classes from ``tollway_providers()`` as ``{kind: class}``;
the core makes one instance per configured provider of that kind.

Inside the gateway, chat requests and answers have one canonical form: the
OpenAI Chat Completions format. An adapter whose upstream speaks the client's
own protocol (``Provider.dialect == call.dialect``) is a passthrough: the
client's body goes up with the model name swapped, and the answer comes back
byte for byte (usage is sniffed by the client dialect, see ``dialects.py``).
Otherwise the adapter translates: canonical body -> upstream request, upstream
answer -> canonical completion or canonical chunks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import orjson

from .call import Usage
from .errors import ProxyError
from .upstream import UpstreamPool, UpstreamRequest, UpstreamResponse

if TYPE_CHECKING:
    from .call import Call, Route
    from .config import ProviderConfig


class StreamDecoder(Protocol):
    """Upstream stream bytes -> canonical ``chat.completion.chunk`` dicts.

    ``feed`` takes bytes as they arrive (cut anywhere) and returns the chunks
    completed so far. ``finish`` runs at the upstream's end of stream and
    returns the last chunks (e.g. the finishing chunk); it raises ProxyError
    when the stream was cut short. ``usage`` holds the usage seen so far;
    ``done`` turns true when the upstream signalled its end (stop reading).
    """

    usage: Usage | None
    done: bool

    def feed(self, data: bytes) -> list[dict]: ...

    def finish(self) -> list[dict]: ...


class Provider:
    """Base class for provider adapters; the defaults speak OpenAI over HTTP."""

    kind: ClassVar[str] = ""
    #: The wire protocol of the upstream; "openai", "anthropic" or "gemini".
    dialect: ClassVar[str] = "openai"
    #: A dataclass for ``providers.<name>.options``, validated at start-up.
    Options: ClassVar[type | None] = None

    def __init__(self, name: str, config: ProviderConfig, options: Any = None) -> None:
        self.name = name
        self.config = config
        self.options = options
        self.pool = UpstreamPool(name, config)

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        await self.pool.start()

    async def close(self) -> None:
        await self.pool.close()

    async def send(self, call: Call, request: UpstreamRequest) -> UpstreamResponse:
        """Send on the pooled session; returns once headers arrived."""
        return await self.pool.open(request)

    # -- requests -------------------------------------------------------------------
    def chat_request(self, call: Call, route: Route, body: dict | None) -> UpstreamRequest:
        """Build the upstream request for a chat call.

        ``body`` is the canonical (OpenAI) body to translate, or None for a
        native passthrough, where ``call.body`` is in the upstream's own
        dialect and goes up as it is (``call.body_bytes()``).
        """
        raise NotImplementedError

    def embeddings_request(self, call: Call, route: Route) -> UpstreamRequest:
        raise ProxyError(400, f"provider '{self.name}' ({self.kind}) does not serve embeddings",
                         param="model", code="embeddings_not_supported")

    # -- answers (only called when translating) -------------------------------------
    def chat_response(self, call: Call, body: bytes) -> tuple[dict, Usage | None]:
        """Upstream non-stream answer -> (canonical chat.completion, usage)."""
        raise NotImplementedError

    def chat_stream(self, call: Call) -> StreamDecoder:
        """A decoder for this call's upstream stream."""
        raise NotImplementedError

    def embeddings_response(self, call: Call, body: bytes) -> tuple[dict, Usage | None]:
        """Upstream embeddings answer -> (OpenAI embeddings list, usage)."""
        data = loads_json(body, self.name)
        return data, Usage.from_openai(data.get("usage"))

    # -- errors ---------------------------------------------------------------------
    def error_for(self, call: Call, status: int, headers: Mapping[str, str], body: bytes) -> ProxyError:
        """Map an upstream error answer to the gateway's answer. Never leaks
        upstream credentials or internals: only the provider's own message on
        client-caused errors (400) is passed on."""
        return upstream_error(self.name, status, headers, error_message(body))


def loads_json(body: bytes, provider: str) -> dict:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProxyError(502, f"upstream '{provider}' answered with invalid JSON",
                         code="upstream_bad_response") from None
    if not isinstance(data, dict):
        raise ProxyError(502, f"upstream '{provider}' answered with unexpected JSON",
                         code="upstream_bad_response")
    return data


def error_message(body: bytes) -> str | None:
    """The ``error.message`` of an OpenAI- or Anthropic-shaped error body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"][:1000]
    if isinstance(err, str):
        return err[:1000]
    return None


def upstream_error(provider: str, status: int, headers: Mapping[str, str], message: str | None) -> ProxyError:
    """The common mapping of upstream statuses to gateway answers."""
    if status in (401, 403):
        return ProxyError(502, f"upstream '{provider}' refused the gateway's credentials; "
                               "the operator must check the provider's api_key",
                          code="upstream_auth_failed")
    if status == 429:
        retry = headers.get("Retry-After") or headers.get("retry-after") or "1"
        return ProxyError(429, f"upstream '{provider}' is rate limiting; retry after {retry}s",
                          code="upstream_rate_limited", headers={"Retry-After": retry})
    if status in (400, 422):
        return ProxyError(400, f"upstream '{provider}' rejected the request: {message or 'bad request'}",
                          code="upstream_invalid_request")
    if status == 413:
        return ProxyError(413, f"upstream '{provider}' says the request is too large", code="upstream_too_large")
    if status in (408, 504):
        return ProxyError(504, f"upstream '{provider}' timed out (status {status})", code="upstream_timeout")
    if status in (503, 529):
        return ProxyError(503, f"upstream '{provider}' is overloaded (status {status})", code="upstream_overloaded")
    return ProxyError(502, f"upstream '{provider}' failed (status {status})", code="upstream_error")

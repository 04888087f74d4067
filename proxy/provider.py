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

import logging
import re
from collections.abc import Awaitable, Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import urlsplit

import orjson

from .call import Usage
from .errors import ProxyError
from .keypool import KeyPool
from .logs import throttled
from .shared import StateKey
from .upstream import UpstreamClient, UpstreamRequest, UpstreamResponse

__all__ = ["CALLER_KEYS", "PROMPT_CACHE", "RESPONSE_ID", "UPLOAD", "Provider", "caller_key_refused",
           "StreamDecoder", "error_message", "loads_json", "retry_after", "upstream_error"]

if TYPE_CHECKING:
    from .call import Call, Route
    from .config import ProviderConfig
    from .uploads import Upload


#: ``call.state`` key: the client asked for the upstream's prompt caching (AICredits' ``"cache": true``,
#: read by the cache plugin). Adapters whose upstream supports it mark the prompt cacheable (Anthropic:
#: ``cache_control``); the others ignore it.
PROMPT_CACHE: StateKey[bool] = StateKey("tollway.prompt_cache")

#: ``call.state`` key: the id of the stored response a Responses API answer created upstream
#: (set by the Responses dialect), so ``GET``/``DELETE /v1/responses/{id}`` reach the same upstream.
RESPONSE_ID: StateKey[str] = StateKey("tollway.response_id")

#: ``call.state`` key: a multipart upload's parts (``call.raw_body`` is the body as received;
#: ``call.body`` its text fields), for adapters that pass it upstream.
UPLOAD: StateKey[Upload] = StateKey("tollway.upload")

#: ``call.state`` key: the caller's own upstream API keys, by provider name (set by a plugin such as
#: ``byok`` before the upstream call). A provider named here is called with that key instead of the
#: operator's (no key pool), and ``call.billing.caller_key`` says so.
CALLER_KEYS: StateKey[Mapping[str, str]] = StateKey("tollway.caller_keys")


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


# Cloud APIs that answer nothing without a key: an empty api_key in front of them is a mistake.
# (An OpenAI-compatible server elsewhere, e.g. a local vLLM or Ollama, may well need none.)
KEYED_HOSTS = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com", ".openai.azure.com",
               "api.groq.com", "api.mistral.ai", "api.together.xyz", "api.deepseek.com", "openrouter.ai",
               "api.fireworks.ai", "api.x.ai", "api.perplexity.ai", "api.cohere.com", "api.cerebras.ai")
_AUTH_HEADERS = frozenset(("authorization", "x-api-key", "api-key", "x-goog-api-key"))


class Provider:
    """Base class for provider adapters; the defaults speak OpenAI over HTTP."""

    kind: ClassVar[str] = ""
    #: The wire protocol of the upstream; "openai", "anthropic" or "gemini".
    dialect: ClassVar[str] = "openai"
    #: A dataclass for ``providers.<name>.options``, validated at start-up.
    Options: ClassVar[type | None] = None
    #: The upstream used when ``base_url`` is not set.
    default_base_url: ClassVar[str | None] = None
    #: False for kinds that never send a key (the mock).
    needs_api_key: ClassVar[bool] = True
    #: Where ``api_key`` goes: the header's name and the text before the key.
    api_key_header: ClassVar[tuple[str, str]] = ("Authorization", "Bearer ")

    def __init__(self, name: str, config: ProviderConfig, options: Any = None) -> None:
        self.name = name
        self.config = config
        self.options = options
        self.upstream = UpstreamClient(name, config)
        #: The provider's ``api_keys`` when it has several, used in turn (``proxy/keypool.py``).
        self.key_pool: KeyPool | None = KeyPool(config.api_keys) if len(config.api_keys) > 1 else None
        #: Why this provider cannot be called (no key where one is needed), or None.
        self.missing_key: str | None = self._missing_key()

    def upstream_headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers of every request to this upstream: JSON, no compression
        (the gateway reads the bytes for usage and passes them on as they are),
        the kind's own ``extra``, the ``api_key`` (in ``api_key_header``), and
        last the YAML ``headers``, which win."""
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", **(extra or {})}
        if self.config.api_key:
            name, prefix = self.api_key_header
            headers[name] = prefix + self.config.api_key
        headers.update(self.config.headers)
        return headers

    def _missing_key(self) -> str | None:
        """An empty api_key is a mistake when the YAML read it from a ${VAR} (the
        operator meant to give one) or the upstream is a cloud API that needs one;
        an OpenAI-compatible server elsewhere with no key configured is taken as is."""
        config = self.config
        if not self.needs_api_key or config.api_key or _AUTH_HEADERS & {h.lower() for h in config.headers}:
            return None
        host = (urlsplit(config.base_url or self.default_base_url or "").hostname or "").lower()
        if config.api_key_env is None and not any(host == h or (h[0] == "." and host.endswith(h))
                                                  for h in KEYED_HOSTS):
            return None
        return f"provider {self.name!r} has no api_key configured"

    def startup_warning(self) -> str | None:
        """The line ``tollway serve`` and ``tollway check`` print about this provider, if any."""
        if self.missing_key is None:
            return None
        env = self.config.api_key_env
        fix = f"{env} is empty or unset" if env else "set providers." + self.name + ".api_key"
        return f"{self.missing_key} ({fix}): its models answer 502 until it has one"

    def family(self, upstream_model: str) -> str:
        """Who makes the model (``openai``, ``anthropic``, ``google``...), for catalogs:
        never the operator's own name for the provider."""
        return self.kind

    def speaks(self, dialect: str) -> bool:
        """True when a client of ``dialect`` is passed through to this upstream as it is
        (its own protocol); otherwise the call is translated through the canonical form."""
        return dialect == self.dialect

    def count_tokens_request(self, call: Call, route: Route) -> UpstreamRequest | None:
        """The upstream request that counts an Anthropic Messages body's input tokens
        (``POST /v1/messages/count_tokens``), or None: the gateway estimates them."""
        return None

    def stored_response_request(self, method: str, response_id: str, query: str) -> UpstreamRequest | None:
        """The upstream request that reads (``GET``) or deletes (``DELETE``) a stored
        Responses API object, or None when this upstream keeps none."""
        return None

    def connections(self) -> tuple[int, int]:
        """(in use, idle) upstream connections of this provider's pool (0, 0 before start)."""
        pool = self.upstream.connections
        return pool.counts() if pool is not None else (0, 0)

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        await self.upstream.start()

    async def close(self) -> None:
        await self.upstream.close()

    def send(self, call: Call, request: UpstreamRequest) -> Awaitable[UpstreamResponse]:
        """Send the request upstream: awaited, the answer once its headers arrived. (A plain
        function that hands over the upstream client's coroutine: one coroutine less a request;
        a refusal before any round trip is raised by the call itself.)"""
        own = call.state.get(CALLER_KEYS)
        key = own.get(self.name) if own is not None else None
        call.billing.caller_key = key is not None
        if key is not None:  # the caller's own key (BYOK): neither the operator's key nor its pool
            header, prefix = self.api_key_header
            request.headers = {**request.headers, header: prefix + key}  # adapters share theirs
            return self.upstream.open(request)
        if self.missing_key is not None:  # answered without a network round trip that cannot succeed
            raise ProxyError(502, self.missing_key, code="upstream_no_api_key")
        if self.key_pool is None:
            return self.upstream.open(request)
        return self._send_with_pool(self.key_pool, request)

    async def _send_with_pool(self, pool: KeyPool, request: UpstreamRequest) -> UpstreamResponse:
        """Send with the pool's keys in turn; a 429 rests that key and moves to the next one."""
        header, prefix = self.api_key_header
        order = pool.order()
        for n, index in enumerate(order):
            request.headers = {**request.headers, header: prefix + pool.keys[index]}  # adapters share theirs
            upstream = await self.upstream.open(request)
            if upstream.status != 429:
                pool.used(index)
                return upstream
            pool.rest(index, upstream.headers.get("Retry-After"))
            if n + 1 == len(order):
                return upstream
            upstream.release()
        raise AssertionError("unreachable: a pool has at least one key")

    # -- requests -------------------------------------------------------------------
    def chat_request(self, call: Call, route: Route, body: dict | None) -> UpstreamRequest:
        """Build the upstream request for a chat call.

        ``body`` is the canonical (OpenAI) body to translate, or None for a
        native passthrough, where ``call.body`` is in the upstream's own
        dialect and goes up as it is (``call.body_bytes()``).
        """
        raise NotImplementedError

    def media_request(self, call: Call, route: Route, path: str) -> UpstreamRequest:
        """The upstream request for an images or audio call (``path``: e.g. ``/images/generations``):
        a JSON body, or the client's multipart upload, with the model's upstream name."""
        raise ProxyError(400, f"provider '{self.name}' ({self.kind}) does not serve {path}", param="model",
                         code="endpoint_not_supported")

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
        return data, Usage.from_openai(data.get("usage"), output=False)

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
    if data.get("error") is not None and ANSWER_KEYS.isdisjoint(data):
        raise error_in_answer(provider, data)
    return data


#: Keys of the answers ``loads_json`` reads (chat, messages, Gemini, Responses, embeddings,
#: token counts): a body with an ``error`` and none of them is an error, whatever its status.
ANSWER_KEYS = frozenset(("id", "object", "choices", "content", "candidates", "output", "data", "embedding",
                         "embeddings", "input_tokens", "totalTokens"))


def error_in_answer(provider: str, data: dict) -> ProxyError:
    """An error body an upstream sent with status 200 (some relays do): the error it is, never
    an answer (it was charged the whole reservation, as an answer whose usage could not be
    measured). The error's own HTTP code, when it names one (Gemini's ``error.code``), maps
    as that status would; else 502."""
    err = data["error"]
    code = err.get("code") if isinstance(err, dict) else None
    status = code if type(code) is int and 400 <= code <= 599 else 502
    mapped = upstream_error(provider, status, {}, error_message(orjson.dumps(data)))
    if status == 502:
        mapped.message = f"upstream '{provider}' answered status 200 with an error instead of an answer"
    return mapped


#: What reading a well-formed JSON answer of an unexpected shape raises in the translators
#: (a string where an object was due, a missing key...).
UNREADABLE = (TypeError, AttributeError, KeyError, IndexError, ValueError)
log = logging.getLogger("tollway.upstream")


def unreadable_answer(provider: str, exc: BaseException) -> ProxyError:
    """A 502 for an upstream answer the gateway could not read (valid JSON or SSE of
    a shape the translation does not know); the traceback goes to the log, rate-limited,
    in case the shape was right and the translation wrong."""
    throttled(log, logging.WARNING, f"unreadable:{provider}", "upstream %s: its answer could not be read "
              "(%s: %s)", provider, type(exc).__name__, exc, exc_info=exc)
    return ProxyError(502, f"upstream '{provider}' answered with a body of an unexpected shape",
                      code="upstream_bad_response")


def error_message(body: bytes) -> str | None:
    """The ``error.message`` of an OpenAI- or Anthropic-shaped error body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    if isinstance(message, str):
        return message[:1000]
    if isinstance(err, str):
        return err[:1000]
    return None


def retry_after(value: str | None, default: str = "1") -> str:
    """An upstream's ``Retry-After`` if it is one (delay seconds or an HTTP date,
    RFC 9110 10.2.3), else ``default``: anything else (a CR, a NUL, prose) never
    reaches the client's headers."""
    if value:
        value = value.strip()
        if _DELAY_SECONDS.fullmatch(value):
            return value
        if _HTTP_DATE_CHARS.fullmatch(value):
            try:
                parsedate_to_datetime(value)
                return value
            except (TypeError, ValueError):
                pass
    return default


_DELAY_SECONDS = re.compile(r"[0-9]{1,9}")
_HTTP_DATE_CHARS = re.compile(r"[A-Za-z0-9 ,:-]{1,40}")  # e.g. "Wed, 21 Oct 2015 07:28:00 GMT"


def caller_key_refused(provider: str, status: int) -> ProxyError:
    """An upstream refused the caller's own key (BYOK): theirs to fix, said without the key or
    the upstream's words (which often repeat part of it)."""
    return ProxyError(401, f"upstream '{provider}' refused your own API key for provider '{provider}' (status "
                           f"{status}; the key you registered with the gateway, not the gateway's): replace or "
                           "remove it", code="upstream_key_rejected")


def upstream_error(provider: str, status: int, headers: Mapping[str, str], message: str | None) -> ProxyError:
    """The common mapping of upstream statuses to gateway answers."""
    if status in (401, 403):
        return ProxyError(502, f"upstream '{provider}' refused the gateway's credentials; "
                               "the operator must check the provider's api_key",
                          code="upstream_auth_failed")
    if status == 429:
        retry = retry_after(headers.get("Retry-After") or headers.get("retry-after"))
        when = f"{retry}s" if retry.isdigit() else retry
        return ProxyError(429, f"upstream '{provider}' is rate limiting; retry after {when}",
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

"""Call: the per-request context that flows through every hook.

One ``Call`` is made per request by the routes, after the body has been parsed
(once, with orjson). Plugins read it and write to it; the core reads back what
they wrote (``principal``, ``route``, ``response_headers``, ``cost_micro``...).
Plugin-private per-request state goes in ``call.state[plugin_name]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from aiohttp import web

    from .config import ModelConfig
    from .errors import ProxyError
    from .provider import Provider


@dataclass(slots=True)
class Usage:
    """Token counts of one request, normalised across providers.

    ``prompt_tokens`` includes cached tokens (read from a prompt cache) and
    cache-write tokens (written to one; Anthropic bills them above the input
    price); ``completion_tokens`` includes reasoning tokens (the OpenAI convention).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, usage: dict | None) -> Usage | None:
        """Read an OpenAI ``usage`` object; None when absent or malformed."""
        if not isinstance(usage, dict):
            return None
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        try:
            return cls(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                cached_tokens=int(prompt_details.get("cached_tokens") or 0),
                reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
            )
        except (TypeError, ValueError, AttributeError):
            return None

    def to_openai(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


@dataclass(slots=True)
class Route:
    """Where a request goes: the public model, its config, and the provider adapter."""

    model: str  # the name the client used
    upstream_model: str  # the provider's name for it
    provider: Provider
    config: ModelConfig
    fallbacks: tuple[Route, ...] = ()


@dataclass(slots=True)
class CachedResponse:
    """What a ``tollway_lookup`` hook returns to short-circuit the upstream.

    ``body`` is an OpenAI chat completion object (dict); the core renders it as
    JSON or replays it as an SSE stream, in the client's dialect.
    """

    body: dict
    usage: Usage | None = None
    headers: dict[str, str] | None = None


class Call:
    """Everything the gateway knows about one request, as it moves through the hooks."""

    __slots__ = (
        "request", "endpoint", "dialect", "body", "raw_body", "body_changed",
        "model", "stream", "include_usage", "principal", "route", "provider_name",
        "response_headers", "usage", "cost_micro", "status", "error", "error_code",
        "started", "first_byte_at", "ended_at", "client_gone", "cache_status",
        "served_model", "state", "upstream_attempts", "usage_extra",
        "price_multiplier", "count_for_limits", "response", "completion",
    )

    def __init__(self, request: web.Request | None, endpoint: str, body: dict, raw_body: bytes,
                 dialect: str = "openai") -> None:
        self.request = request
        self.endpoint = endpoint  # "chat" | "embeddings" | "messages" | "models"
        self.dialect = dialect  # the client's protocol: "openai" | "anthropic"
        self.body = body
        self.raw_body = raw_body
        self.body_changed = False
        self.model: str = body.get("model") if isinstance(body.get("model"), str) else ""
        self.stream = body.get("stream") is True
        opts = body.get("stream_options")
        # Anthropic clients always receive usage (it is part of their protocol).
        self.include_usage = dialect == "anthropic" or (
            isinstance(opts, dict) and opts.get("include_usage") is True)
        self.principal: Any = None
        self.route: Route | None = None
        self.provider_name: str | None = None
        self.response_headers: dict[str, str] = {}
        self.usage: Usage | None = None
        self.cost_micro: int | None = None
        # Fields plugins add to the usage object the client sees (e.g. "cost").
        self.usage_extra: dict[str, object] = {}
        # Set by a plugin that answered without the upstream (the cache): the
        # pricing plugin multiplies the cost by price_multiplier, and the rate
        # limiter gives back the tokens of a call that does not count.
        self.price_multiplier = 1.0
        self.count_for_limits = True
        self.response: web.StreamResponse | None = None  # set once a stream's headers are sent
        self.status = 0
        self.error: ProxyError | None = None
        self.error_code: str | None = None
        self.started = time.perf_counter()
        self.first_byte_at: float | None = None
        self.ended_at: float | None = None
        self.client_gone = False
        self.cache_status: str | None = None
        self.served_model: str | None = None
        self.state: dict[str, Any] = {}
        self.upstream_attempts = 0
        # The canonical (OpenAI) chat.completion of a non-stream answer, set by
        # the core before tollway_usage (None for streams and errors). Read-only:
        # it may be the very dict written to the client. The cache stores it.
        self.completion: dict | None = None

    def set_body(self, body: dict) -> None:
        """Replace the request body; the core re-serialises it before going upstream."""
        self.body = body
        self.body_changed = True

    def body_bytes(self) -> bytes:
        """The request body as bytes: the original ones unless a plugin changed it."""
        if self.body_changed:
            self.raw_body = orjson.dumps(self.body)
            self.body_changed = False
        return self.raw_body

    @property
    def latency_ms(self) -> float:
        end = self.ended_at or time.perf_counter()
        return (end - self.started) * 1000.0

    @property
    def ttfb_ms(self) -> float | None:
        if self.first_byte_at is None:
            return None
        return (self.first_byte_at - self.started) * 1000.0

"""Call: the per-request context that flows through every hook.

One ``Call`` is made per request by the routes, after the body has been parsed
(once, with orjson). Plugins read it and write to it; the core reads back what
they wrote. What is there, by phase:

- from the start: ``id`` (the request's id: the ``x-tollway-request-id`` header of
  its answer, put in ``response.headers`` here, and its ledger row's id), the request
  itself (``request``, ``endpoint``, ``dialect``, ``body``, ``model``, ``stream``,
  ``include_usage``) and ``timing.started``;
- after ``tollway_authenticate``: ``principal`` (a ``Principal``, or None);
- after ``tollway_resolve``: ``route`` (and ``served_model``, ``provider_name``);
- from ``tollway_admit`` on: ``response.headers`` to add to the answer;
- from ``tollway_usage`` on: ``billing`` (usage, cost, what counts);
- from ``tollway_settle`` on: ``response`` (status, error, client_gone...)
  and ``timing`` (first byte, end).

Plugin-private per-request state goes in ``call.state``, under a key
(``proxy.StateKey``) defined next to the plugin that writes it.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

import orjson
from multidict import istr

from .shared import State

if TYPE_CHECKING:
    from aiohttp import web

    from .config import ModelConfig
    from .errors import ProxyError
    from .provider import Provider
    from .snapshot import Snapshot


#: The header every answer of a model route carries: its call's ``id`` (its ledger row's).
REQUEST_ID_HEADER = istr("x-tollway-request-id")  # (an istr: aiohttp does not fold its case again)

#: Call ids: a random prefix per process and a counter (unique across the processes of a fleet,
#: whose ledger rows share one table and are idempotent on the id, without a syscall per call).
_id_prefix = secrets.token_hex(8)
_ids = itertools.count(16**10)  # hex() of 16**10 on, after "0x1": ten digits (f"{n:010x}", cheaper)


def _new_id_prefix() -> None:
    global _id_prefix
    _id_prefix = secrets.token_hex(8)


os.register_at_fork(after_in_child=_new_id_prefix)  # a forked child must not repeat its parent's ids

#: ``object.__new__``: a slotted dataclass's instance with no field set yet (the hot path sets them all).
_new = object.__new__


@dataclass(slots=True)
class Usage:
    """Token counts of one request, normalised across providers.

    ``prompt_tokens`` includes cached tokens (read from a prompt cache) and
    cache-write tokens (written to one; Anthropic bills them above the input
    price); ``completion_tokens`` includes reasoning tokens (the OpenAI convention).

    ``completion_unknown``: the upstream named its prompt count but no output count
    (``{"prompt_tokens": 5}``, an Anthropic ``message_delta`` without ``output_tokens``,
    Gemini's ``usageMetadata`` without ``candidatesTokenCount``). Its output is not
    free for that: ``completion_tokens`` is only the floor the upstream did name
    (reasoning or thinking tokens, else 0), and the pricing plugin counts the output
    that went out, as for unknown usage, keeping the prompt's counts (billed, marked
    estimated). ``prompt_unknown``, the other way round: an output count and no prompt
    count (``{"completion_tokens": 41}``); ``prompt_tokens`` is the floor named (cache
    reads and writes, else 0), and the pricing plugin counts the request's prompt.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    completion_unknown: bool = False
    prompt_unknown: bool = False
    #: More tokens than any one request can use (context windows are millions, not
    #: billions): a count above it is an upstream's nonsense, not usage.
    MAX_TOKENS: ClassVar[int] = 1_000_000_000

    def __post_init__(self) -> None:
        # A negative count (an upstream's, read as it came) would make output free, and an
        # absurd one (1e300 tokens, read with int()) would not fit a ledger column and stop
        # every later ledger write: the parsers of upstream usage catch this ValueError and
        # call the usage unknown.
        top = self.MAX_TOKENS
        # (chained comparisons, not min() and max() of a tuple: two C calls and a tuple fewer per usage)
        if not (0 <= self.prompt_tokens <= top and 0 <= self.completion_tokens <= top
                and 0 <= self.cached_tokens <= top and 0 <= self.reasoning_tokens <= top
                and 0 <= self.cache_write_tokens <= top):
            counts = (self.prompt_tokens, self.completion_tokens, self.cached_tokens, self.reasoning_tokens,
                      self.cache_write_tokens)
            if min(counts) < 0:
                raise ValueError("a token count is negative")
            if max(counts) > top:
                raise ValueError(f"a token count is above {top}")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @staticmethod
    def count(value: object) -> int:
        """An upstream's token count, by the one rule for all of them: a JSON integer (or a
        float without a fraction) from 0 to ``MAX_TOKENS``. Anything else (null, a string,
        a boolean, a fraction, a negative or absurd number, an object) raises ValueError:
        the parsers of upstream usage then call the usage unknown, and the gateway counts
        what went out (billed, marked estimated), as for a cut stream."""
        if type(value) is int:
            if 0 <= value <= Usage.MAX_TOKENS:
                return value
        elif type(value) is float and value.is_integer() and 0 <= value <= Usage.MAX_TOKENS:
            return int(value)
        raise ValueError(f"not a token count: {str(value)[:40]}")

    @staticmethod
    def detail_count(value: object) -> int:
        """A count that only details another (cached, reasoning, cache-write tokens...):
        null (or absent) is 0, anything else as ``count``."""
        return 0 if value is None else Usage.count(value)

    @classmethod
    def from_openai(cls, usage: dict | None, output: bool = True) -> Usage | None:
        """Read an OpenAI ``usage`` object; None when absent or malformed (one that
        names neither count is not a usage of zero: that would make output free).
        Without ``completion_tokens`` the output count is unknown (``completion_unknown``),
        unless the answer has no output (``output`` False: embeddings); without
        ``prompt_tokens`` the prompt count is (``prompt_unknown``)."""
        if not isinstance(usage, dict) or ("prompt_tokens" not in usage and "completion_tokens" not in usage):
            return None
        get = usage.get
        prompt, completion = get("prompt_tokens"), get("completion_tokens")
        prompt_details, completion_details = get("prompt_tokens_details"), get("completion_tokens_details")
        if type(prompt) is int and type(completion) is int and prompt_details is None and completion_details is None:
            # The usual usage: two JSON integers and no details, in range (``__post_init__``'s test): made
            # without the dataclass's __init__ and __post_init__ (two Python frames, ~1.3k instructions;
            # tests/test_call_fresh_fields.py holds it to ``cls(prompt, completion)``).
            if cls is Usage and 0 <= prompt <= _MAX_TOKENS and 0 <= completion <= _MAX_TOKENS:
                made = _new(Usage)
                made.prompt_tokens, made.completion_tokens = prompt, completion
                made.cached_tokens = made.reasoning_tokens = made.cache_write_tokens = 0
                made.completion_unknown = made.prompt_unknown = False
                return made
            try:
                return cls(prompt, completion)
            except ValueError:
                return None
        count, detail = cls.count, cls.detail_count
        try:
            reasoning = detail((completion_details or {}).get("reasoning_tokens"))
            cached = detail((prompt_details or {}).get("cached_tokens"))
            unknown = False
            if "completion_tokens" in usage:
                completion = count(completion)
            else:  # no output count: the reasoning tokens named are its floor (embeddings have no output)
                completion, unknown = (reasoning, True) if output else (0, False)
            # (no prompt count: the cached tokens named are its floor; one of the two counts is named)
            prompt_unknown = "prompt_tokens" not in usage
            return cls(prompt_tokens=cached if prompt_unknown else count(prompt), completion_tokens=completion,
                       cached_tokens=cached, reasoning_tokens=reasoning, completion_unknown=unknown,
                       prompt_unknown=prompt_unknown)
        except (ValueError, AttributeError):
            return None

    def to_openai(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


_MAX_TOKENS = Usage.MAX_TOKENS  # (a module global: read faster than the class attribute)


class Principal(Protocol):
    """Who is calling: what ``tollway_authenticate`` returns, in ``call.principal``.

    Any object with these two attributes will do (the ``auth`` plugin's
    ``KeyRecord`` is one). Plugins that keep per-caller state (limits, the
    cache's scopes, the ledger) key it by these ids.
    """

    @property
    def id(self) -> str:
        """The credential's id (e.g. an API key's id, never the key itself)."""
        ...

    @property
    def account_id(self) -> str:
        """The tenant: who pays and whose data this is; keys may share one."""
        ...


@dataclass(slots=True)
class Route:
    """Where a request goes: the public model, its config, and the provider adapter."""

    model: str  # the name the client used
    upstream_model: str  # the provider's name for it
    provider: Provider
    config: ModelConfig
    #: Which of the model's upstreams this is (``routing``'s name for it, e.g. ``openai/gpt-4o``), if any.
    deployment: str | None = None


@dataclass(slots=True)
class CachedResponse:
    """What a ``tollway_lookup`` hook returns to short-circuit the upstream.

    ``body`` is an OpenAI chat completion object (dict); the core renders it as
    JSON or replays it as an SSE stream, in the client's dialect.
    """

    body: dict
    usage: Usage | None = None
    headers: dict[str, str] | None = None


@dataclass(slots=True)
class Timing:
    """When things happened, in ``time.perf_counter()`` seconds."""

    started: float = field(default_factory=time.perf_counter)
    first_byte_at: float | None = None  # the first byte of the answer went to the client
    attempt_started: float | None = None  # the current upstream attempt's request was sent
    ended_at: float | None = None  # the answer was complete (or failed)

    @property
    def latency_ms(self) -> float:
        end = self.ended_at or time.perf_counter()
        return (end - self.started) * 1000.0

    @property
    def ttfb_ms(self) -> float | None:
        if self.first_byte_at is None:
            return None
        return (self.first_byte_at - self.started) * 1000.0


@dataclass(slots=True)
class Units:
    """What an answer priced by the unit used (images, speech, transcriptions), as the
    core read it from the request and the upstream's answer."""

    images: int = 0  # images delivered (requested, before the answer)
    image_tier: str = ""  # "SIZE/QUALITY" as asked (e.g. "1024x1024/standard"), "" when not said
    characters: int = 0  # speech: characters of the input
    audio_seconds: float | None = None  # transcriptions: the audio's length (reported, else measured)
    audio_measured: bool = False  # the length was measured by the gateway, not reported upstream
    measured_seconds: float | None = None  # the gateway's own measure, kept when the upstream reports one
    #: The gateway counted the upload's frames (``proxy/audiolength.py``): else ``measured_seconds``
    #: is only what the file's header claims (the client's word), or None.
    audio_counted: bool = False


@dataclass(slots=True)
class Billing:
    """What the answer used and costs, and how it counts; filled from ``tollway_lookup``
    (a cache hit's multiplier) and ``tollway_usage`` (usage, cost) on."""

    usage: Usage | None = None  # set by the core before tollway_usage; None: the upstream sent none
    # The upstream was called with the caller's own API key (``proxy.provider.CALLER_KEYS``,
    # set per attempt by the core): pricing bills the model's ``price.byok``.
    caller_key: bool = False
    cost_micro: int | None = None  # micro-USD, set by the pricing plugin
    # Fields plugins add to the usage object the client sees (e.g. "cost").
    usage_extra: dict[str, object] = field(default_factory=dict)
    # Set by a plugin that answered without the upstream (the cache): the
    # pricing plugin multiplies the cost by price_multiplier, and the rate
    # limiter gives back the tokens of a call that does not count.
    price_multiplier: float = 1.0
    count_for_limits: bool = True
    # A stream's output (in the client's dialect, what was sent or drained), kept by
    # reference while it runs and parsed only if its usage turns out to be missing.
    streamed: list[bytes] | None = None
    streamed_dropped: int = 0  # output bytes past what is kept (counted, not kept)
    # What the upstream had said of its usage when its stream ended early (e.g.
    # Anthropic's input tokens at the start); ``usage`` stays None then.
    partial_usage: Usage | None = None
    # The upstream's stream reached its end (its terminal event): it finished its answer, so it
    # billed the prompt even when it said no usage and gave no output. (A whole answer is
    # finished once it is read: ``response.completion`` or ``answer`` is set.)
    stream_complete: bool = False
    usage_estimated: bool = False  # usage was counted by the gateway, not told by the upstream
    units: Units | None = None  # images, characters or audio seconds (unit-priced endpoints)


@dataclass(slots=True)
class ResponseState:
    """What the client is answered. ``headers`` may be added to from ``tollway_admit``
    on; the rest is set by the core (``cache_status`` by a lookup plugin) and
    is final by ``tollway_settle``."""

    headers: dict[str, str] = field(default_factory=dict)  # added to the answer, success or refusal
    status: int = 0  # 0 until an answer's status is decided
    error: ProxyError | None = None
    error_code: str | None = None  # also set without an error (e.g. a drain bound hit after the client left)
    client_gone: bool = False
    shutdown: bool = False  # stopped by the gateway's shutdown_timeout (see proxy/inflight.py)
    # Set from tollway_admit on by a plugin whose settle must be out of this process before the
    # client has the whole answer (quotas, when the charge goes to shared counters: a kill -9
    # right after the answer must not give it away): the tollway_settle implementations marked
    # ``proxy.settles_before_end`` then run just before the answer's last bytes are written,
    # with what is known then (client_gone as far as seen), and again, as usual, after them.
    settle_before_end: bool = False
    cache_status: str | None = None  # e.g. "HIT", "MISS", set by a tollway_lookup plugin
    # The canonical (OpenAI) chat.completion of a non-stream answer, set by
    # the core before tollway_usage (None for streams and errors). Read-only:
    # it may be the very dict written to the client. The cache stores it.
    completion: dict | None = None
    # A native (passthrough) non-stream answer as parsed, in the client's dialect (any
    # dialect): what ``Dialect.answer_text`` reads when the upstream sent no usage.
    answer: dict | None = None
    web_response: web.StreamResponse | None = None  # aiohttp's response, once a stream's headers are sent
    body: bytes | None = None  # a detached call's whole answer (it has no client to be sent to)


class Call:
    """Everything the gateway knows about one request, as it moves through the hooks."""

    __slots__ = (
        "id", "request", "endpoint", "dialect", "body", "raw_body", "body_changed", "model", "stream",
        "include_usage", "principal", "route", "upstream_attempts", "earlier_routes", "billing", "response", "timing",
        "state", "snapshot",
    )

    def __init__(self, request: web.Request | None, endpoint: str, body: dict, raw_body: bytes,
                 dialect: str = "openai", snapshot: Snapshot | None = None) -> None:
        # The request's id, made once here: its ledger row's id, and every answer's
        # ``x-tollway-request-id`` (in ``response.headers`` from the start, refusals included).
        self.id = call_id = _id_prefix + hex(next(_ids))[3:]
        # -- the request, as the client sent it ---------------------------------------
        self.request = request
        # The config this request runs under from start to end (a reload makes a new one).
        self.snapshot = snapshot
        # "chat" | "embeddings" | "messages" | "responses" | "completions" | "models" | "count_tokens"
        self.endpoint = endpoint
        self.dialect = dialect  # the client's protocol: "openai" | "anthropic" | "responses" | "completions"
        self.body = body
        self.raw_body = raw_body
        self.body_changed = False
        model = body.get("model")
        self.model: str = model if isinstance(model, str) else ""
        self.stream = body.get("stream") is True
        opts = body.get("stream_options")
        # Anthropic and Responses clients always receive usage (it is part of their protocol).
        self.include_usage = dialect == "anthropic" or dialect == "responses" or (
            isinstance(opts, dict) and opts.get("include_usage") is True)
        # -- set by the hooks, phase by phase -----------------------------------------
        self.principal: Principal | None = None  # tollway_authenticate
        self.route: Route | None = None  # tollway_resolve; the attempt's own route on a fallback
        self.upstream_attempts = 0  # upstream attempts made (retries and fallbacks included)
        # The routes attempted before ``route``, in order (None until a retry moves it; the ledger lists them).
        self.earlier_routes: list[Route] | None = None
        # Billing(), ResponseState({REQUEST_ID_HEADER: call_id}) and Timing(), their fields set here: a
        # class's Python __init__ is a frame entered from C (~700 instructions each, with its
        # defaults' handling); tests/test_call_fresh_fields.py holds these to the dataclasses' defaults.
        self.billing = billing = _new(Billing)
        billing.usage = billing.cost_micro = billing.streamed = billing.partial_usage = billing.units = None
        billing.caller_key = billing.stream_complete = billing.usage_estimated = False
        billing.count_for_limits = True
        billing.usage_extra = {}
        billing.price_multiplier = 1.0
        billing.streamed_dropped = 0
        self.response = response = _new(ResponseState)
        response.headers = {REQUEST_ID_HEADER: call_id}
        response.status = 0
        response.error = response.error_code = response.cache_status = response.completion = response.answer = \
            response.web_response = response.body = None
        response.client_gone = response.shutdown = response.settle_before_end = False
        self.timing = timing = _new(Timing)
        timing.started = time.perf_counter()
        timing.first_byte_at = timing.attempt_started = timing.ended_at = None
        # Plugin-private, under StateKeys (proxy/shared.py): a plain dict, State to a type checker only (an
        # instance of the subclass costs ~600 instructions more to make, and each ``state[key]`` on it misses
        # the interpreter's exact-dict specializations, ~150 instructions; a dozen a request).
        self.state: State = {}  # type: ignore[assignment]

    @property
    def served_model(self) -> str | None:
        """The public name of the model that answers (a fallback's, after one)."""
        route = self.route
        return route.model if route is not None else None

    @property
    def provider_name(self) -> str | None:
        route = self.route
        return route.provider.name if route is not None else None

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

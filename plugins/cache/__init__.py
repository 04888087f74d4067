"""The ``cache`` plugin: an exact and a semantic cache in front of the upstream.

Enable with ``plugins: {enabled: [cache]}``; options in ``plugins.cache``
(``options.py``; README.md beside this file explains them, the guards and the
measurements behind the defaults).

On the hooks:

- ``tollway_lookup``: read and strip the client's controls, decide if the
  request is eligible, try the exact key, then the nearest neighbour in the
  request's bucket (embedding in a worker thread), guarded. A hit returns a
  ``CachedResponse`` (the core renders it as JSON or replays it as a stream),
  sets ``price_multiplier`` and ``count_for_limits``. Every eligible request
  gets ``x-tollway-cache: HIT | SEMANTIC-HIT | MISS | BYPASS``.
- ``tollway_stream_filter``: on a streamed miss that may be stored, watch the
  bytes to rebuild the answer (``capture.py``).
- ``tollway_settle``: store a complete, successful answer (after the client
  has it, so storing never adds latency).

Only OpenAI-dialect chat completions are cached (``/v1/chat/completions``);
Anthropic Messages requests get their controls stripped and ``BYPASS``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from proxy import CachedResponse, Call, ConfigError, StateKey, Usage, hookimpl
from proxy.background import stop_task
from proxy.logs import throttled
from proxy.provider import PROMPT_CACHE

from .capture import StreamCapture
from .controls import Controls, parse_controls
from .embedders import EmbedderUnavailable, EmbeddingService, LexicalEmbedder, MiniLMEmbedder, make_embedder
from .keys import RequestForms, request_forms
from .matcher import NeedsWords, SecondStage
from .options import CacheOptions
from .persist import Persistence
from .store import CacheStore, Entry

if TYPE_CHECKING:
    from proxy import Gateway

log = logging.getLogger("tollway.cache")

HEADER = "x-tollway-cache"
SIMILARITY_HEADER = "x-tollway-cache-similarity"
STORABLE_FINISH = frozenset(("stop", "tool_calls", "length"))

__all__ = ["CacheOptions", "Plugin"]


@dataclass(slots=True)
class CallState:
    scope: str
    forms: RequestForms
    controls: Controls
    semantic: bool = False  # may this request be matched (and stored) by meaning?
    hit: bool = False
    vectors: list[np.ndarray] | None = None
    features: Any = None  # what the second stage compares (SecondStage.describe)
    capture: StreamCapture | None = None


CACHE_STATE: StateKey[CallState] = StateKey("cache.call")

class Plugin:
    def __init__(self) -> None:
        self.options = CacheOptions()
        self.store = CacheStore()
        self.embeddings: EmbeddingService | None = None
        self.words: EmbeddingService | None = None  # the synonym judge's model and thread (verify)
        self._joining: set[asyncio.Task] = set()  # stored answers being embedded to join their bucket
        self.persistence: Persistence | None = None
        self.embedder_name = ""
        self.stage = SecondStage("none")

    # -- start-up -------------------------------------------------------------------
    @hookimpl
    def tollway_config_schema(self) -> dict[str, Any]:
        return {"plugins.cache": CacheOptions}

    @hookimpl
    def tollway_startup(self, gateway: Gateway):
        return self.start(gateway)

    async def start(self, gateway: Gateway) -> None:
        opts = gateway.config.section("plugins.cache") or CacheOptions()
        self.options = opts
        self.store = CacheStore(max_entries=opts.max_entries)
        if opts.semantic:
            embedder = make_embedder(opts.embedder, gateway, opts.embedding_model)
            self.embedder_name = f"{opts.embedder}:{opts.embedding_model or ''}"
            self.embeddings = EmbeddingService(embedder)
            try:
                await self.embeddings.start()
            except EmbedderUnavailable as exc:
                raise ConfigError(f"plugins.cache.embedder: {exc}") from None
            words = None
            if opts.check == "verify" and opts.synonyms:
                if isinstance(embedder, MiniLMEmbedder):  # one model, one thread for both
                    words, self.words = embedder, self.embeddings
                else:
                    words = MiniLMEmbedder()
                    self.words = EmbeddingService(words)
                    try:
                        await self.words.start()
                    except EmbedderUnavailable as exc:
                        raise ConfigError(f"plugins.cache.synonyms: {exc} (or synonyms: false)") from None
            self.stage = SecondStage(opts.check, tuple(opts.guards), opts.synonym_min, words)
            if isinstance(embedder, LexicalEmbedder):
                self.stage.normalise = embedder.normalised
        if opts.persist:
            self.persistence = Persistence(gateway.store, self.store, self.embedder_name,
                                           describe=self.stage.describe)
            loaded = await self.persistence.start()
            log.info("cache: %d entries loaded from the store", loaded)

    @hookimpl
    def tollway_shutdown(self, gateway: Gateway):
        return self.stop()

    async def stop(self) -> None:
        # stop_task: cancelled again until each ends (a cancel can be lost, see proxy.background)
        await asyncio.gather(*(stop_task(task) for task in list(self._joining)), return_exceptions=True)
        if self.persistence is not None:
            await self.persistence.close()
            self.persistence = None
        if self.words is not None and self.words is not self.embeddings:
            self.words.close()
        if self.embeddings is not None:
            self.embeddings.close()

    # -- request time ---------------------------------------------------------------
    def scope_of(self, call: Call) -> str:
        """The tenant whose entries this request may see."""
        if self.options.scope == "global":
            return "*"
        principal = call.principal
        if principal is None:
            return "anon"
        if self.options.scope == "account":
            return f"account:{principal.account_id}"
        return f"key:{principal.id}"

    def ineligible(self, body: dict) -> str | None:
        temperature = body.get("temperature")
        temperature = 1.0 if temperature is None else temperature
        if not isinstance(temperature, (int, float)) or temperature > self.options.max_temperature:
            return "temperature"
        n = body.get("n")
        if n not in (None, 1) and not self.options.cache_multiple_choices:
            return "n"
        return None

    @staticmethod
    def _status(call: Call, status: str) -> None:
        call.response.cache_status = status
        call.response.headers[HEADER] = status

    @hookimpl
    async def tollway_lookup(self, call: Call) -> CachedResponse | None:
        if call.endpoint not in ("chat", "messages"):
            return None
        headers = call.request.headers if call.request is not None else None
        controls, stripped = parse_controls(call.body, headers, self.options.max_ttl)
        if stripped is not None:
            call.set_body(stripped)
        if controls.prompt_cache:
            call.state[PROMPT_CACHE] = True
        scope = self.scope_of(call)
        if call.dialect != "openai" or self.ineligible(call.body) is not None:
            self._status(call, "BYPASS")
            return None
        opts = self.options
        forms = request_forms(call.body, call.model, opts.max_context_chars, opts.max_query_chars,
                              opts.max_guard_chars)
        semantic = self.embeddings is not None and forms.semantic_ok and opts.semantic_for(call.model)
        state = call.state[CACHE_STATE] = CallState(scope, forms, controls, semantic)
        if controls.no_cache:
            self._status(call, "BYPASS")
            return None
        if opts.exact:
            entry = self.store.get_exact(scope, forms.exact)
            if entry is not None:
                return self._hit(call, state, entry, "HIT", None)
        if semantic and controls.semantic and self.store.has_neighbours(scope, forms.bucket):
            # An empty bucket has nothing to find: the miss goes upstream at once, and the answer is
            # embedded when it is stored (tollway_settle, after the client has it).
            vectors = await self._embed(forms)
            if vectors is not None:
                state.vectors = vectors
                state.features = self.stage.describe(forms.guard_text)
                candidates, _ = self.store.candidates(scope, forms.bucket, vectors[0],
                                                      vectors[1] if forms.context else None, opts.threshold)
                if candidates:
                    found, refusal = await self._judge(state.features, candidates)
                    if found is not None and self.store.touch(found[0]):
                        return self._hit(call, state, found[0], "SEMANTIC-HIT", found[1])
                    if refusal:
                        call.response.headers["x-tollway-cache-veto"] = refusal.split(":")[0]
        self._status(call, "MISS")
        return None

    async def _judge(self, new: Any, candidates: list) -> tuple[Any, str | None]:
        """The second stage: here with the memoised word vectors; in the word model's thread (never on
        the loop) when a verdict needs a word it has not embedded yet."""
        if self.stage.needs_thread() and self.words is not None:
            try:
                return self.stage.judge(new, candidates, may_embed=False)
            except NeedsWords:
                return await self.words.run(self.stage.judge, new, candidates)
        return self.stage.judge(new, candidates)

    async def _embed(self, forms: RequestForms) -> list[np.ndarray] | None:
        texts = [forms.query, forms.context] if forms.context else [forms.query]
        try:
            async with asyncio.timeout(self.options.embed_timeout):
                return await self.embeddings.embed(texts)
        except Exception as exc:  # an embedder failure is a miss, never a failed request
            throttled(log, logging.WARNING, "cache_embed", "cache: embedding failed (%s); treating as a miss", exc)
            return None

    def _hit(self, call: Call, state: CallState, entry: Entry, status: str, similarity: float | None) -> CachedResponse:
        state.hit = True
        entry.hits += 1
        self._status(call, status)
        if similarity is not None:
            call.response.headers[SIMILARITY_HEADER] = f"{similarity:.4f}"
        call.billing.price_multiplier *= self.options.hit_price  # of what the call already pays (a batch line: half)
        call.billing.count_for_limits = self.options.hits_count_for_limits
        body = dict(entry.body)
        if entry.usage is not None:
            body["usage"] = entry.usage
        return CachedResponse(body=body, usage=Usage.from_openai(entry.usage))

    @hookimpl
    async def tollway_stream_filter(self, call: Call):
        state = call.state.get(CACHE_STATE)
        if state is None or state.hit or state.controls.no_store:
            return None
        state.capture = StreamCapture(self.options.max_entry_bytes)
        return state.capture

    @hookimpl
    async def tollway_settle(self, call: Call) -> None:
        state = call.state.get(CACHE_STATE)
        if state is None or state.hit or state.controls.no_store:
            return
        response = call.response
        if response.error is not None or response.status != 200 or response.client_gone or response.error_code:
            return
        capture = state.capture.completion() if state.capture is not None else None
        completion = capture if call.stream else response.completion
        if not isinstance(completion, dict) or not completion.get("choices"):
            return
        if any(c.get("finish_reason") not in STORABLE_FINISH for c in completion["choices"]):
            return
        raw = orjson.dumps({k: v for k, v in completion.items() if k != "usage"})
        if len(raw) > self.options.max_entry_bytes:
            return
        await self.put(state, orjson.loads(raw), call.billing.usage.to_openai() if call.billing.usage else None)

    async def put(self, state: CallState, body: dict, usage: dict | None) -> Entry:
        """Store an answer for the request described by ``state``."""
        forms = state.forms
        now = self.store.clock()
        ttl = state.controls.ttl if state.controls.ttl is not None else self.options.ttl
        entry = Entry(state.scope, forms.exact, forms.bucket, body, usage, now, now + ttl, forms.query,
                      forms.context, forms.guard_text)
        if state.semantic and state.vectors is None:
            # Not embedded at lookup (an empty bucket, no_cache, or exact-only asked): serve exact hits at
            # once, join the bucket when embedded -- in the background when the embedder is a model, so
            # the request's handler (and the next request on its connection) never waits for it.
            self.store.put(entry)
            if self.embeddings is not None and self.embeddings.embedder.in_thread:
                task = asyncio.get_running_loop().create_task(self._join_bucket(entry, state))
                self._joining.add(task)
                task.add_done_callback(self._joining.discard)
                return entry
            await self._join_bucket(entry, state)
            return entry
        if state.semantic and state.vectors is not None:
            self._with_vectors(entry, state, state.vectors)
        self.store.put(entry)
        if self.persistence is not None:
            self.persistence.saved(entry)
        return entry

    async def _join_bucket(self, entry: Entry, state: CallState) -> None:
        vectors = await self._embed(state.forms)
        if vectors is None or self.store.entries.get(entry.key) is not entry:
            return  # no vectors: it stays exact-only; gone (evicted, replaced) meanwhile: nothing to do
        self._with_vectors(entry, state, vectors)
        self.store.put(entry)
        if self.persistence is not None:
            self.persistence.saved(entry)

    def _with_vectors(self, entry: Entry, state: CallState, vectors: list[np.ndarray]) -> None:
        entry.query_vec = vectors[0]
        entry.context_vec = vectors[1] if state.forms.context else None
        entry.features = state.features if state.features is not None else self.stage.describe(state.forms.guard_text)

    async def joined(self) -> None:
        """Wait until every answer stored so far has joined its bucket (tests, shutdown)."""
        while self._joining:
            await asyncio.gather(*list(self._joining), return_exceptions=True)

"""The ``plugins.cache`` section of the YAML, with its defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from proxy import ConfigError

from .guards import ALL_GUARDS


@dataclass(frozen=True)
class CacheOptions:
    """See ``plugins/cache/README.md`` for what each option does and why its default."""

    #: Whose answers a request may receive: the same API key's, the same
    #: account's, or anyone's. Anonymous requests (no auth plugin) share one scope.
    scope: Literal["key", "account", "global"] = "key"
    exact: bool = True
    semantic: bool = True
    embedder: Literal["local", "upstream", "wordllama", "hashing"] = "local"
    #: For ``embedder: upstream``: a model name from ``models:`` that serves embeddings.
    embedding_model: str | None = None
    #: Cosine similarity at or above which a semantic neighbour may be served.
    threshold: float = 0.88
    guards: list[str] = field(default_factory=lambda: list(ALL_GUARDS))
    #: Seconds an entry lives; a client may ask for less or more (up to max_ttl) with cache.ttl.
    ttl: float = 3600.0
    max_ttl: float = 86400.0
    max_entries: int = 10_000
    #: Requests with a higher temperature are not cached (absent temperature counts as 1.0).
    max_temperature: float = 1.0
    #: Cache answers with several choices (n > 1)?
    cache_multiple_choices: bool = False
    #: Fraction of the normal price a hit costs (0.0: free).
    hit_price: float = 0.0
    #: Do hits count against rate limits (requests and tokens)?
    hits_count_for_limits: bool = True
    #: Keep entries in the storage backend so a restart keeps the cache.
    persist: bool = False
    #: Earlier turns embedded with the last user message (newest characters kept).
    max_context_chars: int = 600
    #: A last user message longer than this is matched exactly only (the embedder reads 256 word pieces).
    max_query_chars: int = 600
    #: A conversation with more text than this is matched exactly only (the guards' budget).
    max_guard_chars: int = 20_000
    #: Answers larger than this (JSON bytes) are not stored.
    max_entry_bytes: int = 1_000_000
    #: Seconds an upstream embedding may take before the lookup gives up (a miss).
    embed_timeout: float = 2.0

    def __post_init__(self) -> None:
        where = "plugins.cache"
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"{where}.threshold: expected a number in (0, 1], got {self.threshold}")
        for i, g in enumerate(self.guards):
            if g not in ALL_GUARDS:
                raise ConfigError(f"{where}.guards[{i}]: unknown guard {g!r} (known: {', '.join(ALL_GUARDS)})")
        for name in ("ttl", "max_ttl", "embed_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name}: must be positive")
        if self.max_entries < 1:
            raise ConfigError(f"{where}.max_entries: must be at least 1")
        if not 0.0 <= self.hit_price <= 1.0:
            raise ConfigError(f"{where}.hit_price: expected a fraction between 0 and 1, got {self.hit_price}")
        if self.embedder == "upstream" and not self.embedding_model:
            raise ConfigError(f"{where}.embedding_model: required when embedder is 'upstream'")

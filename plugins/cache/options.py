"""The ``plugins.cache`` section of the YAML, with its defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

from proxy import ConfigError

from .guards import ALL_GUARDS
from .verify import SYNONYM_MIN

#: The embedding threshold each second stage was measured with (README.md, "Measurements").
DEFAULT_THRESHOLDS = {"verify": 0.5, "guards": 0.88, "none": 0.88}
#: ... and with the lexical retrieval (the default embedder), which only finds candidates for ``verify``.
LEXICAL_THRESHOLD = 0.3


def default_threshold(check: str, embedder: str) -> float:
    if embedder == "lexical" and check == "verify":
        return LEXICAL_THRESHOLD
    return DEFAULT_THRESHOLDS[check]


@dataclass(frozen=True)
class CacheOptions:
    """See ``plugins/cache/README.md`` for what each option does and why its default."""

    #: Whose answers a request may receive: the same API key's, the same
    #: account's, or anyone's. Anonymous requests (no auth plugin) share one scope.
    scope: Literal["key", "account", "global"] = "key"
    exact: bool = True
    #: Off by default: only the exact layer answers unless the operator turns meaning-matching on.
    semantic: bool = False
    #: With ``semantic: true``: the models (public names, shell patterns like ``gpt-4o*``) it applies to;
    #: empty means every model.
    semantic_models: list[str] = field(default_factory=list)
    #: Models that stay exact-only even with ``semantic: true`` (code models, say). Wins over semantic_models.
    exact_only_models: list[str] = field(default_factory=list)
    #: How candidates are found: ``lexical`` (the verifier's normalised tokens, hashed: no model),
    #: ``local`` (MiniLM sentence embeddings), ``upstream``, ``wordllama``, ``hashing``.
    embedder: Literal["lexical", "local", "upstream", "wordllama", "hashing"] = "lexical"
    #: For ``embedder: upstream``: a model name from ``models:`` that serves embeddings.
    embedding_model: str | None = None
    #: What a neighbour must pass before it is served: ``verify`` (every difference explained),
    #: ``guards`` (the older word-list guards) or ``none`` (the threshold alone).
    check: Literal["verify", "guards", "none"] = "verify"
    #: Cosine similarity at or above which a neighbour is a candidate (default: 0.3 with verify and the
    #: lexical embedder, 0.5 with verify and another, else 0.88).
    threshold: float | None = None
    #: ``verify``: judge leftover words as synonyms with MiniLM (loaded at start-up, run in a worker
    #: thread, memoised); false: only the equivalence table (no model at all with ``embedder: lexical``).
    synonyms: bool = True
    #: ``verify``: cosine of two words' own embeddings at or above which they count as synonyms.
    synonym_min: float = SYNONYM_MIN
    #: ``check: guards``: which guards run.
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

    def semantic_for(self, model: str) -> bool:
        """Is the semantic layer on for requests to this (public) model name?"""
        if not self.semantic or any(fnmatchcase(model, p) for p in self.exact_only_models):
            return False
        return not self.semantic_models or any(fnmatchcase(model, p) for p in self.semantic_models)

    def __post_init__(self) -> None:
        where = "plugins.cache"
        if self.threshold is None:
            object.__setattr__(self, "threshold", default_threshold(self.check, self.embedder))
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"{where}.threshold: expected a number in (0, 1], got {self.threshold}")
        if not 0.0 < self.synonym_min <= 1.0:
            raise ConfigError(f"{where}.synonym_min: expected a number in (0, 1], got {self.synonym_min}")
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
        for name in ("semantic_models", "exact_only_models"):
            for i, pattern in enumerate(getattr(self, name)):
                if not isinstance(pattern, str) or not pattern:
                    raise ConfigError(f"{where}.{name}[{i}]: expected a model name or pattern")
        if self.embedder == "upstream" and not self.embedding_model:
            raise ConfigError(f"{where}.embedding_model: required when embedder is 'upstream'")

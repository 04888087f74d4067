"""The metrics as prometheus-client objects, and how a ``Tally`` is added to them.

Imported only once the plugin has chosen single- or multi-process mode:
prometheus-client fixes how values are stored (in memory, or in mmap files
every worker's scrape reads) when it is first imported.

Names follow the OpenTelemetry GenAI semantic conventions translated to
Prometheus (dots to underscores, the unit as a suffix) where one exists, with
the attribute names as labels: ``gen_ai_operation_name``, ``gen_ai_provider_name``
(the provider's name in the YAML), ``gen_ai_request_model`` (the public model
name), ``gen_ai_token_type``, ``error_type``. The gateway's own start with ``tollway_``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .tally import DURATION_BUCKETS, TOKEN_BUCKETS, TPOT_BUCKETS, TTFT_BUCKETS, Tally
from .tally import Histogram as Counts

GEN_AI = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]
OPERATIONS = {"chat": "chat", "messages": "chat", "embeddings": "embeddings"}


class Families:
    """One gateway's metrics. ``registry`` None: multi-process mode (values in files)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        kw: dict[str, Any] = {"registry": registry}
        self.multiprocess = registry is None
        self.requests = Counter("tollway_requests", "Requests answered, by public model, provider, endpoint "
                                "and HTTP status (model and provider are empty when refused before routing)",
                                ["model", "provider", "endpoint", "status"], **kw)
        self.spend = Counter("tollway_spend_micro_usd", "Money taken from accounts (micro-USD), as in the ledger",
                             ["model", "provider"], **kw)
        self.tokens = Histogram("gen_ai_client_token_usage", "Tokens used per request, by token type "
                                "(input: the prompt, cached tokens included; output: the completion)",
                                [*GEN_AI, "gen_ai_token_type"], buckets=TOKEN_BUCKETS, **kw)
        self.duration = Histogram("gen_ai_server_request_duration_seconds", "Time from a request's arrival to "
                                  "the last byte of its answer", [*GEN_AI, "error_type"], buckets=DURATION_BUCKETS,
                                  **kw)
        self.ttft = Histogram("gen_ai_server_time_to_first_token_seconds", "Time to the first byte of a "
                              "streamed answer", GEN_AI, buckets=TTFT_BUCKETS, **kw)
        self.tpot = Histogram("gen_ai_server_time_per_output_token_seconds", "Time per output token after the "
                              "first, of streamed answers that completed", GEN_AI, buckets=TPOT_BUCKETS, **kw)
        self.refusals = Counter("tollway_limit_refusals", "Requests refused by a limit (rate limits, credits, "
                                "budgets), by error code and the limit's scope", ["code", "scope", "limit"], **kw)
        self.upstream_errors = Counter("tollway_upstream_errors", "Upstream failures by provider and reason "
                                       "(timeout_connect, timeout_first_byte, timeout_idle, timeout_total, "
                                       "unreachable, error, overloaded, rate_limited, stream_cut...)",
                                       ["provider", "reason"], **kw)
        self.cache = Counter("tollway_cache_lookups", "Cache lookups by result (HIT: exact, SEMANTIC-HIT, MISS, "
                             "BYPASS)", ["result"], **kw)
        live = {"multiprocess_mode": "livesum"}
        self.ledger_queue = Gauge("tollway_ledger_queue_rows", "Ledger rows waiting to be written", **kw, **live)
        self.ledger_lag = Gauge("tollway_ledger_lag_seconds", "How long the oldest ledger row waiting has waited",
                                **kw, multiprocess_mode="livemax")
        self.connections = Gauge("tollway_upstream_connections", "Upstream connections open, by provider and "
                                 "state (in_use, idle)", ["provider", "state"], **kw, **live)
        self.credits = Gauge("tollway_account_credits_remaining_micro_usd", "Credits an account can still spend "
                             "(balance less money held by requests in flight), micro-USD (metrics.account_credits)",
                             ["account"], **kw, multiprocess_mode="mostrecent")
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """``metric.labels(*labels)``, remembered (labels() takes a lock and builds a key each call)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def add(self, tally: Tally) -> None:
        """Add everything ``tally`` counted (it is not used again)."""
        child = self.child
        for (endpoint, model, provider, status, code), s in tally.series.items():
            child(self.requests, (model, provider, endpoint, str(status))).inc(s.requests)
            if s.spend:
                child(self.spend, (model, provider)).inc(s.spend)
            if not model:
                continue
            gen_ai = (OPERATIONS.get(endpoint, endpoint), provider, model)
            _add(child(self.tokens, (*gen_ai, "input")), s.input_tokens)
            _add(child(self.tokens, (*gen_ai, "output")), s.output_tokens)
            _add(child(self.duration, (*gen_ai, code)), s.duration)
            _add(child(self.ttft, gen_ai), s.ttft)
            _add(child(self.tpot, gen_ai), s.tpot)
        for labels, n in tally.refusals.items():
            child(self.refusals, labels).inc(n)
        for labels, n in tally.upstream_errors.items():
            child(self.upstream_errors, labels).inc(n)
        for result, n in tally.cache.items():
            child(self.cache, (result,)).inc(n)


def _add(child: Any, counts: Counts) -> None:
    """Add a whole histogram's counts to a prometheus-client histogram child.

    prometheus-client has no public call for this (``observe`` takes one value at a
    time, ~5 µs each); its histogram keeps one non-cumulative value per bucket,
    +Inf last, in ``_buckets``, and the sum in ``_sum`` (0.x releases alike; the
    scrape tests would catch a change)."""
    if not any(counts.counts):
        return
    for bucket, n in zip(child._buckets, counts.counts, strict=True):
        if n:
            bucket.inc(n)
    child._sum.inc(counts.sum)

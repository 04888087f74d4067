"""What the requests did since the last export, counted in plain Python (the hot path).

One ``Tally.record(call)`` per request, from ``tollway_finish``: a dict lookup by
the request's labels and a few additions (histogram buckets by ``bisect``). No
lock, no prometheus-client call: those cost ~2 µs per counter and ~5 µs per
histogram observation, more than the whole record. ``take()`` hands the counts
to the exporter and starts afresh (``families.py`` adds them to the
prometheus-client metrics, at a scrape or, with several workers, every
``flush_seconds``).

Every label value comes from the config or the code (model and provider names
from the YAML, endpoint, status, error codes), never from the client's input.
"""

from __future__ import annotations

from bisect import bisect_left

from proxy import Call, ProxyError, StateKey

from ..accounts.refusals import REFUSAL
from ..quotas import money_taken

# The OpenTelemetry GenAI conventions' advised bucket boundaries.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class Histogram:
    """Counts per bucket (``le`` semantics: bucket i holds bounds[i-1] < v <= bounds[i];
    the last is +Inf), not cumulative, and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Series:
    """Everything counted for one (endpoint, model, provider, status, error code)."""

    __slots__ = ("requests", "spend", "input_tokens", "output_tokens", "duration", "ttft", "tpot")

    def __init__(self) -> None:
        self.requests = 0
        self.spend = 0  # micro-USD
        self.input_tokens = Histogram(TOKEN_BUCKETS)
        self.output_tokens = Histogram(TOKEN_BUCKETS)
        self.duration = Histogram(DURATION_BUCKETS)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)


SeriesKey = tuple[str, str, str, int, str]
# The last upstream failure counted by ``failed_attempt`` (so the request's end does not count it again).
COUNTED: StateKey[ProxyError] = StateKey("metrics.counted")


class Tally:
    __slots__ = ("series", "refusals", "upstream_errors", "cache")

    def __init__(self) -> None:
        self.series: dict[SeriesKey, Series] = {}
        self.refusals: dict[tuple[str, str, str], int] = {}  # (code, scope, limit)
        self.upstream_errors: dict[tuple[str, str], int] = {}  # (provider, reason)
        self.cache: dict[str, int] = {}  # result

    def record(self, call: Call) -> None:
        """Count one finished request (the hot path: keep it to additions)."""
        route = call.route
        response = call.response
        error = response.error
        code = response.error_code or (error.code if error is not None else None) or ""
        model, provider = (route.model, route.provider.name) if route is not None else ("", "")
        status = response.status
        key = (call.endpoint, model, provider, status, code)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        series.requests += 1
        series.spend += money_taken(call)
        timing = call.timing
        if route is not None:
            end = timing.ended_at or timing.started
            series.duration.observe(end - timing.started)
        usage = call.billing.usage
        if usage is not None:
            series.input_tokens.observe(usage.prompt_tokens)
            if call.endpoint != "embeddings":  # embeddings have no output tokens (not 0 of them)
                series.output_tokens.observe(usage.completion_tokens)
        first = timing.first_byte_at
        if call.stream and first is not None:
            series.ttft.observe(first - timing.started)
            if usage is not None and usage.completion_tokens > 1 and error is None and timing.ended_at:
                series.tpot.observe((timing.ended_at - first) / (usage.completion_tokens - 1))
        if code:
            self._failure(call, code, status, provider)
        cache = response.cache_status
        if cache is not None:
            self.cache[cache] = self.cache.get(cache, 0) + 1

    def failed_attempt(self, call: Call, provider: str, error: ProxyError) -> None:
        """One upstream attempt failed (``tollway_attempt``): counted now, by the attempt's
        provider, whether or not a retry or fallback then answered the request."""
        code = error.code or ""
        if code.startswith("upstream_"):
            key = (provider, code[9:])
            self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1
            call.state[COUNTED] = error

    def _failure(self, call: Call, code: str, status: int, provider: str) -> None:
        if code.startswith("upstream_"):
            # An attempt's failure was counted when it happened; what failed later (a
            # stream cut, a body that timed out) is counted here.
            if call.state.get(COUNTED) is not call.response.error:
                key = (provider, code[9:])
                self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1
            return
        refusal = call.state.get(REFUSAL)
        if refusal is not None or status in (402, 429):
            rkey = (code, refusal.scope, refusal.limit) if refusal is not None else (code, "", "")
            self.refusals[rkey] = self.refusals.get(rkey, 0) + 1

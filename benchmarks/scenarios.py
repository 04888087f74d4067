"""The scenarios and the three profiles (smoke, quick, full) that size them.

Each scenario becomes one or more load generator jobs per target (``rate``
becomes one job per offered rate: the latency-versus-load sweep; ``cache``
three: ``cache_exact``, ``cache_semantic``, ``cache_miss``).

The cache scenario runs on the targets with the cache plugin (``tollway-cache``)
and on one without (``tollway-full``), one request at a time:

- ``cache_exact``: the same question over and over; on a cache every request
  after the first is an exact ``HIT`` (the upstream is never asked);
- ``cache_semantic``: the ``a`` questions of ``PARAPHRASES`` are sent once
  each (``seed``, not counted), then their ``b`` paraphrases in turn: every
  one is a ``SEMANTIC-HIT`` (one embedding, a search, the guards). Each
  paraphrase carries an invisible counter (``fresh``, see
  ``loadgen.invisible_tag``): the embedder sees the same words, but the
  cache's memo of recent embeddings does not know the text, so every hit pays
  for its embedding, like a paraphrase never seen before (a paraphrase
  repeated verbatim is served from the memo: far cheaper, not measured here);
- ``cache_miss``: every request new (``unique``): the same questions, with an
  invisible counter, under a system prompt that carries a counter too (the
  system prompt is part of the cache's bucket: no exact or semantic
  neighbour can exist). Each is a ``MISS`` that is embedded, looked up,
  forwarded and stored. What a miss adds is its p50 minus the same job's p50
  on the target without a cache. Its bucket is empty, so the nearest-neighbour
  search is the cheapest there is (README of the cache: 6 us at 100 entries,
  0.45 ms at 10,000).

The load generator counts the ``x-tollway-cache`` answers, so the table says
how many requests were what they were meant to be.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

SCENARIOS = ("latency", "throughput", "stream", "stream_whole", "stream_whole_c1", "stream_paced", "rate", "cache",
             "soak")

DESCRIPTIONS = {
    "latency": "non-stream, one request at a time (latency)",
    "throughput": "non-stream, many connections (throughput)",
    "stream": "streams, many connections (streams/s, time to first byte, whole stream)",
    "stream_whole": "streams whose whole answer (52 events, OpenAI's usage shape) the upstream sends in one "
                    "write, as a static server does, many connections (streams/s)",
    "stream_whole_c1": "the same one-write streams, one at a time (p50/p99 latency)",
    "stream_paced": "paced streams (first token after ttft, chunks apart): time to first byte and gap added",
    "rate": "open loop at fixed rates (latency at a given load)",
    "cache": "the cache plugin, one request at a time: exact-hit, semantic-hit and miss latency "
             "(tollway-cache vs tollway-full)",
    "soak": "long run: the target's RSS after N/10 and N requests",
}

#: Pairs from ``tests/cache_eval/dev.jsonl`` that the shipped semantic settings (check: verify) serve
#: as hits: real rewordings (a clause moved, a constructions, arithmetic, spelling), not just "How can I".
PARAPHRASES = (
    ("How do I read a CSV file in R?", "In R, how do I read a CSV file?"),
    ("Who painted the Mona Lisa?", "Who was the painter of the Mona Lisa?"),
    ("What is the difference between TCP and UDP?", "How do TCP and UDP differ?"),
    ("What is 12 times 14?", "What is 12 multiplied by 14?"),
    ("How do I apologise for being late?", "How do I apologize for being late?"),
    ("Why do cats purr?", "What makes cats purr?"),
    ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?"),
    ("Describe the water cycle.", "Explain the water cycle."),
)
MISS_SYSTEM = "You are a benchmark. Every question here is new."


@dataclass(frozen=True)
class Profile:
    rounds: int = 3
    latency_requests: int = 3000
    concurrency: int = 64
    throughput_seconds: float = 6.0
    stream_concurrency: int = 32
    stream_seconds: float = 6.0
    # Every stream shape is OpenAI's as the gateway gets it: asked for usage (the gateway always
    # asks), each chunk ends with "usage":null and the usage chunk comes before [DONE]
    # (``usage_null``; the floor does not ask, so it gets neither, as from OpenAI).
    stream_mock: dict = field(default_factory=lambda: {"chunks": 16, "chunk_size": 16, "usage_null": True})
    # The upstream shape of issue 10 item 12: the whole 52-event answer (role, 50 pieces,
    # stop) in one write with a Content-Length, so many events arrive in one read.
    whole_mock: dict = field(default_factory=lambda: {"chunks": 50, "chunk_size": 16, "one_write": True,
                                                      "usage_null": True})
    paced_requests: int = 200
    paced_concurrency: int = 4
    paced_mock: dict = field(default_factory=lambda: {"ttft": 0.010, "chunk_delay": 0.002, "chunks": 20,
                                                      "usage_null": True})
    rates: tuple[float, ...] = (250, 500, 1000, 2000, 3000, 4000)
    reference_rate: float = 1000
    rate_seconds: float = 3.0
    soak_requests: int = 200_000
    soak_concurrency: int = 32
    soak_stream_ratio: float = 0.2
    warmup: int = 300
    cache_requests: int = 500  # per cache job; a miss or a semantic hit costs an embedding (~5-15 ms)
    cache_warmup: int = 20
    max_seconds: float = 600.0  # no job runs longer than this


PROFILES = {
    "smoke": Profile(rounds=1, latency_requests=30, concurrency=8, throughput_seconds=0.3, stream_concurrency=4,
                     stream_seconds=0.3, paced_requests=6, paced_concurrency=2,
                     paced_mock={"ttft": 0.002, "chunk_delay": 0.001, "chunks": 4, "usage_null": True}, rates=(200,),
                     reference_rate=200, rate_seconds=0.3, soak_requests=300, soak_concurrency=4, warmup=10,
                     cache_requests=16, cache_warmup=4, max_seconds=30.0),
    "quick": Profile(rounds=1, latency_requests=1000, throughput_seconds=3.0, stream_seconds=3.0, paced_requests=100,
                     rates=(500, 1000, 2000, 3000), rate_seconds=2.0, soak_requests=20_000, warmup=200,
                     cache_requests=300),
    "full": Profile(),
}


def with_overrides(profile: Profile, **overrides) -> Profile:
    """The profile with the given (non-None) fields changed."""
    return replace(profile, **{k: v for k, v in overrides.items() if v is not None})


def jobs_for(scenario: str, p: Profile) -> list[tuple[str, dict]]:
    """(label, job) pairs for one scenario; the job lacks url/headers/model (added per target)."""
    base = {"timeout": 30.0, "max_seconds": p.max_seconds}
    if scenario == "latency":
        return [("latency", {**base, "mode": "closed", "concurrency": 1, "requests": p.latency_requests,
                             "duration": p.max_seconds, "warmup": p.warmup})]
    if scenario == "throughput":
        return [("throughput", {**base, "mode": "closed", "concurrency": p.concurrency,
                                "duration": p.throughput_seconds, "warmup": p.warmup})]
    if scenario == "stream":
        return [("stream", {**base, "mode": "closed", "concurrency": p.stream_concurrency, "stream_ratio": 1.0,
                            "duration": p.stream_seconds, "mock": p.stream_mock, "warmup": p.warmup})]
    if scenario == "stream_whole":
        return [("stream_whole", {**base, "mode": "closed", "concurrency": p.concurrency, "stream_ratio": 1.0,
                                  "duration": p.stream_seconds, "mock": p.whole_mock, "warmup": p.warmup})]
    if scenario == "stream_whole_c1":
        return [("stream_whole_c1", {**base, "mode": "closed", "concurrency": 1, "stream_ratio": 1.0,
                                     "requests": p.latency_requests, "duration": p.max_seconds,
                                     "mock": p.whole_mock, "warmup": p.warmup})]
    if scenario == "stream_paced":
        return [("stream_paced", {**base, "mode": "closed", "concurrency": p.paced_concurrency, "stream_ratio": 1.0,
                                  "requests": p.paced_requests, "duration": p.max_seconds, "mock": p.paced_mock,
                                  "warmup": min(p.warmup, 20)})]
    if scenario == "rate":
        return [(f"rate@{rate:g}", {**base, "mode": "open", "rate": rate, "duration": p.rate_seconds,
                                     "grace": max(2.0, p.rate_seconds), "timeout": 10.0, "warmup": p.warmup})
                for rate in p.rates]
    if scenario == "cache":
        one = {**base, "mode": "closed", "concurrency": 1, "requests": p.cache_requests, "duration": p.max_seconds,
               "warmup": p.cache_warmup, "count_cache": True}
        return [("cache_exact", one),
                ("cache_semantic", {**one, "seed": [a for a, _ in PARAPHRASES], "texts": [b for _, b in PARAPHRASES],
                                    "fresh": True}),
                ("cache_miss", {**one, "unique": True, "system": MISS_SYSTEM, "texts": [b for _, b in PARAPHRASES]})]
    if scenario == "soak":
        first = max(1, p.soak_requests // 10)
        return [("soak", {**base, "mode": "closed", "concurrency": p.soak_concurrency,
                          "stream_ratio": p.soak_stream_ratio, "requests": p.soak_requests,
                          "duration": p.max_seconds, "rss_at": [first, p.soak_requests], "warmup": 0})]
    raise ValueError(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")

"""The load generator: runs one job against one URL and reports a summary.

Run as its own process by the harness (``python -m benchmarks.loadgen JOB_JSON``):
it prints JSON lines on stdout, ``{"progress": done, "of": total}`` about
twice a second and ``{"result": {...}}`` at the end.

A job (a dict) says:

- ``url``: the chat completions URL; ``headers``: extra request headers;
  ``model``; ``mock``: knobs for the mock upstream, sent in the body;
- ``mode``: ``"closed"`` (``concurrency`` connections, each sending its next
  request when the last answered) or ``"open"`` (``rate`` requests per
  second on a fixed schedule, whatever the answers do; latency counts from
  the dispatch, which never waits for answers, so an overloaded target's
  queueing is not hidden);
- ``stream_ratio``: share of requests that stream (0: none, 1: all);
- bounds: ``requests`` (count) and ``duration`` (seconds): whichever comes
  first; ``timeout`` per request; after the schedule, at most ``grace``
  seconds more for the stragglers;
- ``warmup``: requests sent first and not counted;
- ``rss_pid`` and ``rss_at``: read that process's RSS after those counts;
- what is asked (for the cache scenario; without these every request is the
  same ``PROMPT``): ``texts``, user messages sent in turn (request i sends
  ``texts[i % len]``); ``fresh``: the same words, made new to the cache's
  embedding memo by an invisible tag; ``unique``: every request new to the
  cache (see ``texts_for``); ``system``: another
  system prompt; ``seed``: texts sent once each, one at a time, before the
  warmup (e.g. the questions whose paraphrases the job then sends);
  ``count_cache``: count the ``x-tollway-cache`` answers (``cache_status``
  in the result, and ``cache_latency_ms`` per status).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import orjson

from .httpclient import Connection, Result, build_request
from .stats import median, rss_mb, summarize

DONE_TAIL = b"data: [DONE]\n\n"
PROMPT = [{"role": "system", "content": "You are a benchmark."},
          {"role": "user", "content": "Say hello to the benchmark in a few words, please."}]


def texts_for(job: dict, i: int, nonce: int = 0) -> tuple[str, str]:
    """(system prompt, user message) of request number ``i`` (0-based, counted over the
    whole process: warmup first). ``texts`` are taken in turn.

    ``fresh``: the user message gets an invisible tag of (nonce, i) at its end: new text
    to the cache's exact layer and to its memo of embeddings, the same words to the
    embedder, the similarity and the guards.
    ``unique`` (every request a miss): ``fresh``, and the system prompt carries a number
    no other request of any job carries (``nonce`` differs per load generator process).
    The system prompt is part of the cache's bucket, so the request has neither an exact
    nor a semantic neighbour, while the question the embedder reads stays as long as the
    others (a number in the question would add word pieces: ~1-2 ms more embedding)."""
    texts = job.get("texts") or [PROMPT[1]["content"]]
    user = texts[i % len(texts)]
    system = job.get("system") or PROMPT[0]["content"]
    if job.get("unique") or job.get("fresh"):
        user += invisible_tag(((nonce & 0xFFFF) << 24) | (i & 0xFFFFFF))
    if job.get("unique"):
        system = f"{system} Conversation {nonce}-{i}."
    return system, user


def invisible_tag(n: int, bits: int = 40) -> str:
    """``n`` in binary as zero-width characters (U+200B for 0, U+200C for 1). The
    embedder's tokenizer drops them (format characters), so the embedding, the
    similarity and the guards see the same words; but the text, its exact key and its
    key in the cache's embedding memo are new: a semantic hit that pays for its
    embedding, as a paraphrase never seen before does."""
    return "".join("\u200c" if (n >> k) & 1 else "\u200b" for k in range(bits))


def request_bytes(job: dict, stream: bool, texts: tuple[str, str] | None = None) -> bytes:
    """The request bytes; ``texts`` = (system prompt, user message), else ``PROMPT``."""
    messages = PROMPT
    if texts is not None:
        messages = [{"role": "system", "content": texts[0]}, {"role": "user", "content": texts[1]}]
    body = {"model": job.get("model", "bench"), "messages": messages, "max_tokens": 256, "stream": stream}
    if job.get("mock"):
        body["mock"] = job["mock"]
    return build_request(job["url"], orjson.dumps(body), job.get("headers"))


class Payloads:
    """The request bytes for request number i: built once when they never change
    (the usual case: the load generator stays cheap), per request with ``unique``."""

    def __init__(self, job: dict, nonce: int | None = None) -> None:
        self.job = job
        self.nonce = nonce if nonce is not None else int.from_bytes(os.urandom(4), "big") % 10**9
        self.unique = bool(job.get("unique") or job.get("fresh"))
        self.count = 0  # requests numbered so far (warmup and measured share the numbering)
        texts = job.get("texts")
        self.fixed = None
        if not self.unique:
            if texts or job.get("system"):
                self.fixed = [{s: request_bytes(job, s, texts_for(job, i)) for s in (False, True)}
                              for i in range(len(texts or [None]))]
            else:
                self.fixed = [{s: request_bytes(job, s) for s in (False, True)}]

    def next(self, stream: bool) -> bytes:
        i = self.count
        self.count += 1
        if self.fixed is not None:
            return self.fixed[i % len(self.fixed)][stream]
        return request_bytes(self.job, stream, texts_for(self.job, i, self.nonce))


class Recorder:
    """Collects outcomes; reads RSS at the checkpoints."""

    def __init__(self, job: dict) -> None:
        self.latency: list[float] = []
        self.ttfb: list[float] = []
        self.gap: list[float] = []
        self.events: list[int] = []
        self.errors: Counter[str] = Counter()
        self.done = 0
        self.rss_pid = job.get("rss_pid")
        self.rss_at = sorted(job.get("rss_at") or ())
        self.rss: dict[str, float | None] = {}
        self.cache: dict[str, list[float]] | None = {} if job.get("count_cache") else None

    def add(self, res: Result, stream: bool, start: float) -> None:
        self.done += 1
        if self.rss_at and self.done == self.rss_at[0]:
            self.rss[str(self.rss_at.pop(0))] = rss_mb(self.rss_pid) if self.rss_pid else None
        if res.error is not None:
            self.errors[res.error] += 1
            return
        if res.status != 200:
            self.errors[f"status {res.status}"] += 1
            return
        if stream and not res.tail.endswith(DONE_TAIL):
            self.errors["stream without [DONE]"] += 1
            return
        self.latency.append(res.end_at - start)
        if self.cache is not None:
            self.cache.setdefault(res.cache or "none", []).append(res.end_at - start)
        if stream:
            self.ttfb.append(res.first_body_at - start)
            self.events.append(res.events)
            if res.events > 1:
                self.gap.append((res.end_at - res.first_body_at) / (res.events - 1))

    def result(self, elapsed: float) -> dict:
        ok = len(self.latency)
        out = {"requests": self.done, "ok": ok, "errors": sum(self.errors.values()),
               "error_kinds": dict(self.errors), "elapsed_s": elapsed, "rps": ok / elapsed if elapsed else 0.0,
               "latency_ms": summarize(self.latency, 1000.0)}
        if self.ttfb:
            out["ttfb_ms"] = summarize(self.ttfb, 1000.0)
            out["gap_ms"] = summarize(self.gap, 1000.0)
            out["events"] = median(self.events)
        if self.rss:
            out["rss_mb"] = self.rss
        if self.cache is not None:
            out["cache_status"] = {k: len(v) for k, v in sorted(self.cache.items())}
            out["cache_latency_ms"] = {k: summarize(v, 1000.0) for k, v in sorted(self.cache.items())}
        return out


class ClientPool:
    """Keep-alive connections to one host, opened on demand up to ``limit``."""

    def __init__(self, url: str, limit: int, watch: bytes | None = None) -> None:
        self.watch = watch  # a response header whose value each Result carries
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.idle: list[Connection] = []
        self.slots = asyncio.Semaphore(limit)
        self.all: list[Connection] = []

    async def send(self, payload: bytes, timeout: float) -> Result:
        async with self.slots:
            conn = None
            while self.idle and conn is None:
                conn = self.idle.pop()
                if conn.closed:
                    conn = None
            if conn is None:
                try:
                    async with asyncio.timeout(timeout):
                        conn = await Connection.open(self.host, self.port, self.watch)
                except (OSError, TimeoutError) as exc:
                    return Result(error=f"connect: {type(exc).__name__}", sent=time.perf_counter())
                self.all.append(conn)
            res = await conn.request(payload, timeout)
            if not conn.closed:
                self.idle.append(conn)
            return res

    def close(self) -> None:
        for conn in self.all:
            conn.close()


def _is_stream(i: int, ratio: float) -> bool:
    """Spread streamed requests evenly: request i streams when the running share is below ratio."""
    return int((i + 1) * ratio) > int(i * ratio)


async def closed_loop(job: dict, pool: ClientPool, rec: Recorder | None, count: int, deadline: float,
                      payloads: Payloads | None = None) -> None:
    ratio = float(job.get("stream_ratio", 0.0))
    payloads = payloads or Payloads(job)
    timeout = float(job.get("timeout", 30.0))
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < count and time.perf_counter() < deadline:
            i = issued
            issued += 1
            stream = _is_stream(i, ratio)
            start = time.perf_counter()
            res = await pool.send(payloads.next(stream), timeout)
            if rec is not None:
                rec.add(res, stream, start)

    await asyncio.gather(*(worker() for _ in range(max(1, int(job.get("concurrency", 1))))))


async def open_loop(job: dict, pool: ClientPool, rec: Recorder, count: int, deadline: float,
                    payloads: Payloads | None = None) -> None:
    ratio = float(job.get("stream_ratio", 0.0))
    payloads = payloads or Payloads(job)
    timeout = float(job.get("timeout", 30.0))
    interval = 1.0 / float(job["rate"])
    tasks: set[asyncio.Task] = set()

    async def one(i: int, scheduled: float) -> None:
        stream = _is_stream(i, ratio)
        res = await pool.send(payloads.next(stream), timeout)
        rec.add(res, stream, scheduled)

    t0 = time.perf_counter()
    i = 0
    while i < count:
        now = time.perf_counter()
        if now >= deadline:
            break
        while i < count and t0 + i * interval <= now:
            # Latency counts from the dispatch, not the schedule: the load generator's own
            # timer lateness (event loop timers tick in milliseconds) is not the target's doing.
            # Sending never waits for answers, so a slow target still shows its queueing.
            task = asyncio.get_running_loop().create_task(one(i, now))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(max(0.0, t0 + i * interval - time.perf_counter()))
    if tasks:
        grace = float(job.get("grace", 10.0))
        _, pending = await asyncio.wait(set(tasks), timeout=grace)
        for task in pending:
            task.cancel()
        rec.errors["unfinished"] += len(pending)


async def run_job(job: dict, progress=None) -> dict:
    """Run ``job``; ``progress(done, total)`` is called about twice a second."""
    mode = job.get("mode", "closed")
    duration = float(job.get("duration", 10.0))
    if mode == "open":
        count = int(job.get("requests") or float(job["rate"]) * duration)
    else:
        count = int(job.get("requests") or 10**9)
    concurrency = int(job.get("concurrency", 1))
    pool = ClientPool(job["url"], limit=int(job.get("max_connections", 512)) if mode == "open" else concurrency,
                watch=b"x-tollway-cache" if job.get("count_cache") else None)
    rec = Recorder(job)
    payloads = Payloads(job)
    ticker = None
    try:
        seed = job.get("seed") or ()
        if seed:  # one at a time, so each answer is stored before the next question
            await closed_loop({**job, "texts": seed, "unique": False, "concurrency": 1}, pool, None, len(seed),
                              time.perf_counter() + 30.0)
        warmup = int(job.get("warmup", 0))
        if warmup:
            warm = {**job, "concurrency": min(max(concurrency, 4), 32)}
            await closed_loop(warm, pool, None, warmup, time.perf_counter() + 10.0, payloads)
        if progress is not None:
            async def tick() -> None:
                while True:
                    await asyncio.sleep(0.5)
                    progress(rec.done, count)
            ticker = asyncio.get_running_loop().create_task(tick())
        start = time.perf_counter()
        if mode == "open":
            await open_loop(job, pool, rec, count, start + duration, payloads)
        else:
            await closed_loop(job, pool, rec, count, start + duration, payloads)
        elapsed = time.perf_counter() - start
    finally:
        if ticker is not None:
            ticker.cancel()
        pool.close()
    out = rec.result(elapsed)
    out["warmup"] = warmup + len(seed)
    if mode == "open":
        out["offered_rps"] = float(job["rate"])
    return out


def run_on_uvloop(coro):
    """``asyncio.run`` on uvloop when it is installed."""
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.loadgen JOB_JSON", file=sys.stderr)
        return 2
    job = orjson.loads(args[0])

    def progress(done: int, total: int) -> None:
        sys.stdout.write(orjson.dumps({"progress": done, "of": total}).decode() + "\n")
        sys.stdout.flush()

    result = run_on_uvloop(run_job(job, progress))
    sys.stdout.write(orjson.dumps({"result": result}).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

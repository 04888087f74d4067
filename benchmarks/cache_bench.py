"""The cache's own costs, measured in-process: what a hit saves and what a miss adds.

    .venv/bin/python -m benchmarks.cache_bench [--embedder lexical|local] [--requests 200] [--json out.json]

The per-step breakdown. The end-to-end numbers (exact hit, semantic hit, miss
against the full stack without a cache, in separate pinned processes) are part
of the harness: ``tollway bench --scenarios cache --targets tollway-full,tollway-cache``
(``benchmarks/scenarios.py``, the ``cache`` scenario). Part 2 below is the quick
in-process version of that, with no other plugin.

Two parts:

1. *Parts*: the time of each step of a lookup and a store -- canonical key,
   exact lookup, the verifier's description of a text (normalise), one verdict
   (align + decide, synonym words memoised), embedding (one short prompt; a
   follow-up with context), candidate search in buckets of 100 / 1,000 /
   10,000 entries, and a store.
2. *End to end*: a gateway on 127.0.0.1 in front of the HTTP mock upstream
   (both in this process), timed from the client: without the cache, cache
   misses (every question new), exact hits and semantic hits. A miss's extra
   cost is the miss latency minus the no-cache latency.

Bounded: a fixed number of requests, one at a time, only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web

from benchmarks.mock_upstream import MockSettings
from benchmarks.mock_upstream import make_app as make_mock_app
from plugins.cache.embedders import make_embedder
from plugins.cache.keys import request_forms
from plugins.cache.matcher import SecondStage
from plugins.cache.store import CacheStore, Entry
from proxy.app import make_app
from proxy.gateway import build_gateway

QUESTION = "What is the capital city of France, and what is it famous for?"
SUBJECTS = ["France", "Spain", "Italy", "Japan", "Brazil", "Canada", "Kenya", "Norway", "Peru", "India"]


def _time(fn: Callable[[], object], n: int) -> float:
    """Median microseconds of ``fn`` over n runs."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def parts(embedder_kind: str) -> dict:
    body = {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": QUESTION}], "temperature": 0}
    follow = {"model": "m", "messages": [{"role": "user", "content": "Who is Lionel Messi?"},
                                         {"role": "assistant", "content": "An Argentine footballer, widely "
                                          "regarded as one of the greatest players of all time."},
                                         {"role": "user", "content": "and how old is he?"}]}
    out: dict = {}
    forms = request_forms(body, "m")
    out["key_us"] = _time(lambda: request_forms(body, "m"), 2000)
    emb = make_embedder(embedder_kind)
    t0 = time.perf_counter()
    emb.load()
    out["embedder_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    words = emb if embedder_kind == "local" else make_embedder("local")  # the synonym judge, as in the plugin
    words.load()
    stage = SecondStage("verify", embedder=words)
    out["verifier_load_s"] = time.perf_counter() - t0
    out["describe_us"] = _time(lambda: stage.describe(forms.guard_text), 2000)
    stored = stage.describe("Could you tell me the capital city of France, and what it is famous for?")
    new = stage.describe(forms.guard_text)
    stage.refusal(stored, new)  # word vectors memoised, as they are after the first lookups
    out["verdict_us"] = _time(lambda: stage.refusal(stored, new), 2000)
    emb.embed_sync(["warm up"])
    out["embed_short_us"] = _time(lambda: emb.embed_sync([QUESTION]), 50)
    ff = request_forms(follow, "m")
    out["embed_follow_up_us"] = _time(lambda: emb.embed_sync([ff.query, ff.context]), 30)
    dim = emb.embed_sync(["x"]).shape[1]
    rng = np.random.default_rng(0)
    for size in (100, 1_000, 10_000):
        store = CacheStore(max_entries=size + 1)
        vecs = rng.normal(size=(size, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        for i in range(size):
            store.put(Entry("s", f"e{i}", "b", {}, None, 0.0, float("inf"), query_vec=vecs[i]))
        q = vecs[0] * 0.5 + vecs[1] * 0.5
        q /= np.linalg.norm(q)
        out[f"search_{size}_us"] = _time(lambda s=store, q=q: s.candidates("s", "b", q, None, 0.99), 200)
    store = CacheStore(max_entries=1_000_000)
    out["exact_get_us"] = _time(lambda: store.get_exact("s", forms.exact), 5000)
    counter = iter(range(10**9))
    vec = vecs[0]
    out["put_us"] = _time(lambda: store.put(Entry("s", f"p{next(counter)}", "b", {}, None, 0.0, float("inf"),
                                                 query_vec=vec)), 2000)
    return out


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def _latencies(session: aiohttp.ClientSession, url: str, bodies: list[dict],
                     expect: str | None) -> list[float]:
    out = []
    for body in bodies:
        t0 = time.perf_counter()
        async with session.post(url, json=body) as r:
            await r.read()
            got = r.headers.get("x-tollway-cache")
        out.append((time.perf_counter() - t0) * 1000.0)
        if expect is not None and got != expect:
            raise RuntimeError(f"expected {expect}, got {got} for {body['messages'][-1]['content']!r}")
    return out


async def end_to_end(embedder_kind: str, n: int) -> dict:
    mock_runner, mock_url = await _serve(make_mock_app(MockSettings()))
    results: dict = {}
    try:
        for cache in (None, {"embedder": embedder_kind, "semantic": True}):
            tmp = tempfile.mkdtemp(prefix="tollway-cache-bench-")
            config = {
                "server": {"access_log": "off"},
                "storage": {"url": f"sqlite:///{tmp}/bench.db"},
                "providers": {"up": {"kind": "openai", "base_url": mock_url + "/v1", "api_key": "x"}},
                "models": {"up": {"provider": "up", "price": {"input": 1, "output": 2}}},
                "plugins": {"enabled": ["cache"] if cache else [], **({"cache": cache} if cache else {})},
            }
            gw = build_gateway(config, path=Path(tmp) / "tollway.yaml")
            runner, url = await _serve(make_app(gw, access_log=False))
            chat = url + "/v1/chat/completions"

            def ask(text: str) -> dict:
                return {"model": "up", "messages": [{"role": "user", "content": text}], "temperature": 0}

            fresh = [ask(f"Question {i}: what is {SUBJECTS[i % 10]} known for, in {i + 2} words?") for i in range(n)]
            try:
                async with aiohttp.ClientSession() as s:
                    await _latencies(s, chat, [ask("warm up")], None)
                    if cache is None:
                        results["no_cache_ms"] = await _latencies(s, chat, fresh, None)
                    else:
                        results["miss_ms"] = await _latencies(s, chat, fresh, "MISS")
                        results["exact_hit_ms"] = await _latencies(s, chat, fresh, "HIT")
                        para = [ask(f"Question {i}: what's {SUBJECTS[i % 10]} known for, in {i + 2} words?")
                                for i in range(n)]
                        results["semantic_hit_ms"] = await _latencies(s, chat, para, "SEMANTIC-HIT")
            finally:
                await runner.cleanup()
    finally:
        await mock_runner.cleanup()
    return results


def _summary(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"p50": s[len(s) // 2], "p90": s[int(len(s) * 0.9)], "mean": statistics.fmean(s)}


async def _main(args: argparse.Namespace) -> dict:
    part = parts(args.embedder)
    e2e = {k: _summary(v) for k, v in (await end_to_end(args.embedder, args.requests)).items()}
    return {"embedder": args.embedder, "parts": part, "end_to_end_ms": e2e}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--embedder", default="lexical", choices=["lexical", "local", "wordllama", "hashing"])
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    result = asyncio.run(_main(args))
    print(f"embedder: {result['embedder']}")
    for k, v in result["parts"].items():
        print(f"  {k:22s} {v:12.1f}")
    print("end to end, one request at a time (ms):")
    for k, v in result["end_to_end_ms"].items():
        print(f"  {k:22s} p50 {v['p50']:7.2f}  p90 {v['p90']:7.2f}  mean {v['mean']:7.2f}")
    e2e = result["end_to_end_ms"]
    if "miss_ms" in e2e and "no_cache_ms" in e2e:
        print(f"  a miss adds (p50): {e2e['miss_ms']['p50'] - e2e['no_cache_ms']['p50']:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

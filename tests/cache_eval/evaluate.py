"""Precision and recall of the semantic cache on the labelled pairs in pairs.jsonl.

Each pair is two chat requests ``a`` and ``b`` (a string is one user message)
and a label: ``hit`` true when serving a's answer to b is correct. A pair is
*predicted* a hit when the cache, holding a, would serve it for b: same
bucket, similarity at or above the threshold, and no guard veto -- computed
with the plugin's own functions (``request_forms``, ``features``,
``CacheStore.nearest``).

    .venv/bin/python -m tests.cache_eval.evaluate [embedder ...]

prints precision, recall and false hits per threshold for each embedder, with
and without the guards, and the embedding latency.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plugins.cache.embedders import Embedder, make_embedder
from plugins.cache.guards import ALL_GUARDS, check, features
from plugins.cache.keys import request_forms
from plugins.cache.store import CacheStore, Entry

PAIRS = Path(__file__).parent / "pairs.jsonl"
THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96)


class Memo(Embedder):
    """An embedder that remembers the texts it embedded (the pairs repeat many texts)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.seen: dict[str, np.ndarray] = {}

    def load(self) -> None:
        self.inner.load()

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self.seen]
        if todo:
            self.seen.update(zip(todo, self.inner.embed_sync(todo), strict=True))
        return np.stack([self.seen[t] for t in texts])


def load_pairs() -> list[dict]:
    return [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]


def as_body(side: str | list) -> dict:
    messages = [{"role": "user", "content": side}] if isinstance(side, str) else side
    return {"model": "m", "messages": messages, "temperature": 0}


@dataclass
class Scored:
    pair: dict
    same_bucket: bool
    exact: bool
    similarity: float
    veto: str | None


def score(embedder: Embedder, pairs: list[dict]) -> tuple[list[Scored], float]:
    """Similarity and guard verdict of every pair; also the mean ms per embedded text."""
    out = []
    texts = 0
    spent = 0.0
    for pair in pairs:
        fa = request_forms(as_body(pair["a"]), "m")
        fb = request_forms(as_body(pair["b"]), "m")
        same = fa.bucket == fb.bucket and fa.semantic_ok and fb.semantic_ok
        sim = 0.0
        if same:
            batch = [fa.query, fb.query] + ([fa.context, fb.context] if fa.context or fb.context else [])
            t0 = time.perf_counter()
            vecs = embedder.embed_sync(batch)
            spent += time.perf_counter() - t0
            texts += len(batch)
            sim = float(vecs[0] @ vecs[1])
            if len(batch) == 4:
                sim = min(sim, float(vecs[2] @ vecs[3]))
        veto = check(features(fa.guard_text), features(fb.guard_text)) if same else None
        out.append(Scored(pair, same, fa.exact == fb.exact, sim, veto))
    return out, (spent / texts * 1000.0) if texts else 0.0


def metrics(scored: list[Scored], threshold: float, guards: bool = True) -> dict:
    tp = fp = fn = tn = 0
    false_hits = []
    for s in scored:
        predicted = s.exact or (s.same_bucket and s.similarity >= threshold and (not guards or s.veto is None))
        if predicted and s.pair["hit"]:
            tp += 1
        elif predicted:
            fp += 1
            false_hits.append(s.pair["id"])
        elif s.pair["hit"]:
            fn += 1
        else:
            tn += 1
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"threshold": threshold, "precision": precision, "recall": recall, "tp": tp, "fp": fp, "fn": fn,
            "tn": tn, "false_hits": false_hits}


def end_to_end(embedder: Embedder, pairs: list[dict], threshold: float) -> dict:
    """The same verdicts through the real store: put a, look up b (guards on)."""
    tp = fp = fn = 0
    for pair in pairs:
        store = CacheStore()
        fa = request_forms(as_body(pair["a"]), "m")
        fb = request_forms(as_body(pair["b"]), "m")
        hit = store.get_exact("s", fb.exact) is not None
        va = embedder.embed_sync([fa.query, fa.context or "-"])
        vb = embedder.embed_sync([fb.query, fb.context or "-"])
        store.put(Entry("s", fa.exact, fa.bucket, {}, None, 0.0, float("inf"), fa.query, fa.context,
                        fa.guard_text, va[0], va[1] if fa.context else None, features(fa.guard_text)))
        hit = store.get_exact("s", fb.exact) is not None
        if not hit and fb.semantic_ok:
            match = store.nearest("s", fb.bucket, vb[0], vb[1] if fb.context else None, threshold,
                                  features(fb.guard_text), ALL_GUARDS)
            hit = match.entry is not None
        if hit and pair["hit"]:
            tp += 1
        elif hit:
            fp += 1
        elif pair["hit"]:
            fn += 1
    return {"precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
            "tp": tp, "fp": fp, "fn": fn}


def main(argv: list[str]) -> None:
    pairs = load_pairs()
    kinds = argv or ["local", "wordllama", "hashing"]
    print(f"{len(pairs)} pairs: {sum(p['hit'] for p in pairs)} should hit, {sum(not p['hit'] for p in pairs)} not")
    for kind in kinds:
        emb = make_embedder(kind)
        emb.load()
        emb.embed_sync(["warm up"])
        scored, ms = score(emb, pairs)
        one = [len(p["a"]) if isinstance(p["a"], str) else 60 for p in pairs]
        t0 = time.perf_counter()
        for p in pairs[:50]:
            emb.embed_sync([p["a"] if isinstance(p["a"], str) else "What is the capital of France?"])
        single = (time.perf_counter() - t0) / 50 * 1000.0
        print(f"\n== {kind}: {ms:.2f} ms/text in the scoring run, {single:.2f} ms for one short prompt "
              f"(mean {np.mean(one):.0f} chars)")
        print("threshold | guards: precision recall fp | no guards: precision recall fp")
        for t in THRESHOLDS:
            g, n = metrics(scored, t), metrics(scored, t, guards=False)
            print(f"  {t:.2f}    | {g['precision']:.3f} {g['recall']:.3f} {g['fp']:3d} {g['false_hits'][:6]} "
                  f"| {n['precision']:.3f} {n['recall']:.3f} {n['fp']:3d}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Precision and recall of the semantic cache on labelled pairs.

Two sets (one JSON object per line; ``#`` lines are the header):

- ``dev.jsonl``: the development set, tuned on freely (608 pairs: the 296 of
  earlier rounds and 312 written for issue 17);
- ``test_frozen.jsonl``: the frozen test set (426 pairs), written before any
  tuning of this round; never tuned on, only measured.

Each pair is two chat requests ``a`` and ``b`` (a string is one user message)
and a label: ``hit`` true when serving a's answer to b is correct. A pair is
*predicted* a hit when the cache, holding a, would serve it for b: same
bucket, similarity at or above the threshold, and the second stage
(``check``: verify, guards or none) accepting -- computed with the plugin's
own functions (``request_forms``, ``SecondStage``, ``CacheStore.candidates``).

    .venv/bin/python -m tests.cache_eval.evaluate [--set dev|test] [--check verify|guards|none] [--crowded]
        [embedder ...]   # lexical (default), local, hashing, wordllama

prints precision, recall and false hits per threshold, with and without the
second stage, and per kind of pair.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plugins.cache.embedders import Embedder, make_embedder
from plugins.cache.keys import request_forms
from plugins.cache.matcher import SecondStage
from plugins.cache.store import CacheStore, Entry

HERE = Path(__file__).parent
SETS = {"dev": HERE / "dev.jsonl", "test": HERE / "test_frozen.jsonl"}
THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96)


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


def load_pairs(which: str = "dev") -> list[dict]:
    path = SETS.get(which, Path(which))
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def as_body(side: str | list) -> dict:
    messages = [{"role": "user", "content": side}] if isinstance(side, str) else side
    return {"model": "m", "messages": messages, "temperature": 0}


@dataclass
class Scored:
    pair: dict
    same_bucket: bool
    exact: bool
    similarity: float
    refusal: str | None  # the second stage's reason to refuse (None: it accepts)


def score(embedder: Embedder, pairs: list[dict], stage: SecondStage) -> tuple[list[Scored], float]:
    """Similarity and second-stage verdict of every pair; also the mean ms per embedded text."""
    out = []
    texts = 0
    spent = 0.0
    for pair in pairs:
        fa = request_forms(as_body(pair["a"]), "m")
        fb = request_forms(as_body(pair["b"]), "m")
        same = fa.bucket == fb.bucket and fa.semantic_ok and fb.semantic_ok
        sim = 0.0
        refusal = None
        if same:
            batch = [fa.query, fb.query] + ([fa.context, fb.context] if fa.context or fb.context else [])
            t0 = time.perf_counter()
            vecs = embedder.embed_sync(batch)
            spent += time.perf_counter() - t0
            texts += len(batch)
            sim = float(vecs[0] @ vecs[1])
            if len(batch) == 4:
                sim = min(sim, float(vecs[2] @ vecs[3]))
            refusal = stage.refusal(stage.describe(fa.guard_text), stage.describe(fb.guard_text))
        out.append(Scored(pair, same, fa.exact == fb.exact, sim, refusal))
    return out, (spent / texts * 1000.0) if texts else 0.0


def metrics(scored: list[Scored], threshold: float, checked: bool = True) -> dict:
    tp = fp = fn = tn = 0
    false_hits = []
    for s in scored:
        predicted = s.exact or (s.same_bucket and s.similarity >= threshold and (not checked or s.refusal is None))
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


def by_kind(scored: list[Scored], threshold: float) -> dict[str, str]:
    """hits / pairs for each kind of should-hit pair, false hits / pairs for each kind of near-miss."""
    total: Counter[str] = Counter()
    hit: Counter[str] = Counter()
    for s in scored:
        total[s.pair["kind"]] += 1
        hit[s.pair["kind"]] += s.exact or (s.same_bucket and s.similarity >= threshold and s.refusal is None)
    return {k: f"{hit[k]}/{total[k]}" for k in sorted(total)}


def end_to_end(embedder: Embedder, pairs: list[dict], threshold: float, stage: SecondStage) -> dict:
    """The same verdicts through the real store: put a, look up b."""
    tp = fp = fn = 0
    for pair in pairs:
        store = CacheStore()
        fa = request_forms(as_body(pair["a"]), "m")
        fb = request_forms(as_body(pair["b"]), "m")
        va = embedder.embed_sync([fa.query, fa.context or "-"])
        vb = embedder.embed_sync([fb.query, fb.context or "-"])
        store.put(Entry("s", fa.exact, fa.bucket, {}, None, 0.0, float("inf"), fa.query, fa.context,
                        fa.guard_text, va[0], va[1] if fa.context else None, stage.describe(fa.guard_text)))
        hit = store.get_exact("s", fb.exact) is not None
        if not hit and fb.semantic_ok:
            candidates, _ = store.candidates("s", fb.bucket, vb[0], vb[1] if fb.context else None, threshold)
            found, _ = stage.judge(stage.describe(fb.guard_text), candidates)
            hit = found is not None
        if hit and pair["hit"]:
            tp += 1
        elif hit:
            fp += 1
        elif pair["hit"]:
            fn += 1
    return {"precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
            "tp": tp, "fp": fp, "fn": fn}


def crowded(embedder: Embedder, pairs: list[dict], threshold: float, stage: SecondStage,
            limit: int = 4) -> dict:
    """Every ``a`` of the one-turn pairs in one store (one bucket), each ``b`` looked up there:
    does the right entry come out of the candidate search among all the others? ``served_a``:
    should-hit pairs served their own ``a`` (or an identical text); ``other``: served some other
    entry (listed, to read); near-misses served anything are listed too."""
    one_turn = [p for p in pairs if isinstance(p["a"], str) and isinstance(p["b"], str)]
    store = CacheStore(max_entries=100_000)
    for n, a in enumerate(dict.fromkeys(p["a"] for p in one_turn)):
        fa = request_forms(as_body(a), "m")
        if not fa.semantic_ok:
            continue
        va = embedder.embed_sync([fa.query])
        store.put(Entry("s", f"{n:064d}", "bucket", {"text": a}, None, 0.0, float("inf"), fa.query, "",
                        fa.guard_text, va[0], None, stage.describe(fa.guard_text)))
    served_a = missed = 0
    other: list[tuple[str, str, bool]] = []
    for pair in one_turn:
        fb = request_forms(as_body(pair["b"]), "m")
        vb = embedder.embed_sync([fb.query])
        candidates, _ = store.candidates("s", "bucket", vb[0], None, threshold, limit)
        found, _ = stage.judge(stage.describe(fb.guard_text), candidates)
        text = found[0].body["text"] if found is not None else None
        if text is None:
            missed += pair["hit"]
        elif text == pair["a"] and pair["hit"]:
            served_a += 1
        elif text != pair["b"]:
            other.append((pair["b"], text, pair["hit"]))
    hits = sum(p["hit"] for p in one_turn)
    return {"pairs": len(one_turn), "should_hit": hits, "served_a": served_a, "missed": missed, "other": other}


def main() -> None:
    from plugins.cache.options import default_threshold

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", default="dev", help="dev, test, or a path")
    ap.add_argument("--check", default="verify", choices=("verify", "guards", "none"))
    ap.add_argument("--crowded", action="store_true", help="also: every a in one bucket, each b looked up there")
    ap.add_argument("embedders", nargs="*", default=["lexical"])
    args = ap.parse_args()
    pairs = load_pairs(args.set)
    print(f"{args.set}: {len(pairs)} pairs: {sum(p['hit'] for p in pairs)} should hit, "
          f"{sum(not p['hit'] for p in pairs)} must not; second stage: {args.check}")
    words = None
    for kind in args.embedders:
        emb = Memo(make_embedder(kind))
        emb.load()
        emb.embed_sync(["warm up"])
        if kind == "local":
            words = emb
        elif words is None:  # the synonym judge is MiniLM whatever finds the candidates (as in the plugin)
            words = Memo(make_embedder("local"))
            words.load()
        stage = SecondStage(args.check, embedder=words)
        scored, ms = score(emb, pairs, stage)
        print(f"\n== {kind}: {ms:.2f} ms per embedded text")
        print("threshold | checked: precision recall fp | unchecked: precision recall fp")
        for t in THRESHOLDS:
            g, n = metrics(scored, t), metrics(scored, t, checked=False)
            print(f"  {t:.2f}    | {g['precision']:.3f} {g['recall']:.3f} {g['fp']:3d} {g['false_hits'][:6]} "
                  f"| {n['precision']:.3f} {n['recall']:.3f} {n['fp']:3d}")
        default = default_threshold(args.check, kind)
        print(f"by kind at {default}: {by_kind(scored, default)}")
        if args.crowded:
            c = crowded(emb, pairs, default, stage)
            print(f"crowded (every a in one bucket, {len(c['other'])} served another entry): "
                  f"{c['served_a']}/{c['should_hit']} served their a, {c['missed']} missed")
            for b, text, hit in c["other"]:
                print(f"  {'hit ' if hit else 'NEAR'} {b!r} <- {text!r}")


if __name__ == "__main__":
    main()

"""The second stage of a semantic lookup: which embedding neighbour, if any, may be served.

``check`` (plugins.cache.check) picks it:

- ``verify`` (default): ``verify.py`` -- every difference between the two
  conversations must be explained (typo, spelling, synonym, number written
  another way, arithmetic of the same value, politeness, a clause moved).
  Synonyms are judged by the embedder itself, one word at a time, in the
  embedder's worker thread (never on the event loop); word vectors are
  memoised. With an embedder that cannot run in-process (``upstream``) no
  synonym is accepted: the verifier is then stricter, never looser.
- ``guards``: the seven word-list guards of earlier versions (``guards.py``),
  kept for comparison; they measured precision 0.614 on the frozen test set.
- ``none``: the embedding threshold alone (measured precision 0.48).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .embedders import Embedder
from .guards import ALL_GUARDS, Features, check, features
from .textnorm import Normalised, normalise
from .verify import SYNONYM_MIN, align, decide

VOCABULARY = Path(__file__).parent / "data" / "vocab.txt"
Candidate = tuple[Any, float]  # (Entry, similarity)


def load_vocabulary(path: Path = VOCABULARY) -> frozenset[str]:
    """Whole words of the embedder's WordPiece vocabulary: what counts as a known word (typos are not)."""
    with open(path, encoding="utf-8") as f:
        return frozenset(w for w in (line.strip() for line in f) if w.isalpha())


class NeedsWords(Exception):
    """A verdict needs a word vector that is not memoised (judge it in the embedder's thread)."""


class SecondStage:
    def __init__(self, kind: str = "verify", guards: tuple[str, ...] = ALL_GUARDS,
                 synonym_min: float = SYNONYM_MIN, embedder: Embedder | None = None,
                 word_memo: int = 4096) -> None:
        self.kind = kind
        self.guards = guards
        self.synonym_min = synonym_min
        self.embedder = embedder if embedder is not None and embedder.in_thread else None
        self.vocabulary = load_vocabulary() if kind == "verify" else frozenset()
        self._words: OrderedDict[str, np.ndarray] = OrderedDict()
        self._word_memo = word_memo
        #: text -> Normalised; the plugin hands in the lexical retrieval's memoised one (same texts)
        self.normalise: Callable[[str], Normalised] = normalise

    def describe(self, text: str) -> Any:
        """What this stage compares of one conversation (computed once, kept on the entry)."""
        if self.kind == "verify":
            return self.normalise(text)
        if self.kind == "guards":
            return features(text)
        return None

    def needs_thread(self) -> bool:
        """True when judging may run the embedder (so it belongs in the embedder's worker thread)."""
        return self.kind == "verify" and self.embedder is not None

    def judge(self, new: Any, candidates: list[Candidate],
              may_embed: bool = True) -> tuple[Candidate | None, str | None]:
        """The first candidate that may be served, or None and the first refusal's reason.

        ``may_embed=False`` (on the event loop): only memoised word vectors are used; a verdict
        that needs a new one raises ``NeedsWords`` (judge again in the embedder's thread)."""
        refusal = None
        for entry, sim in candidates:
            reason = self.refusal(entry.features, new, may_embed)
            if reason is None:
                return (entry, sim), None
            refusal = refusal or reason
        return None, refusal

    def refusal(self, stored: Any, new: Any, may_embed: bool = True) -> str | None:
        """Why the answer stored for ``stored`` may not answer ``new`` (None: it may)."""
        if self.kind == "none":
            return None
        if self.kind == "guards":
            if isinstance(stored, Features) and isinstance(new, Features):
                return check(new, stored, self.guards)
            return "unchecked"  # described by another stage
        if not (isinstance(stored, Normalised) and isinstance(new, Normalised)):
            return "unchecked"
        al = align(stored, new, self.vocabulary)
        similarity = None
        if self.embedder is not None:
            similarity = self._similarity if may_embed else self._memoised_similarity
        return decide(stored, new, al, similarity, self.synonym_min)

    def _similarity(self, x: str, y: str) -> float:
        vx, vy = self._vector(x), self._vector(y)
        return float(vx @ vy)

    def _memoised_similarity(self, x: str, y: str) -> float:
        vx, vy = self._words.get(x), self._words.get(y)  # read-only: the worker thread may be writing
        if vx is None or vy is None:
            raise NeedsWords(x if vx is None else y)
        return float(vx @ vy)

    def _vector(self, word: str) -> np.ndarray:
        vec = self._words.get(word)
        if vec is None:
            vec = self.embedder.embed_sync([word])[0]
            self._words[word] = vec
            if len(self._words) > self._word_memo:
                self._words.popitem(last=False)
        else:
            self._words.move_to_end(word)
        return vec

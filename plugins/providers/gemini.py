"""Google Gemini upstreams (``kind: gemini``), Generative Language API.

Chat: ``POST {base}/{api_version}/models/{model}:generateContent``, streams
``:streamGenerateContent?alt=sse`` (without ``alt=sse`` the stream is one
JSON array, not SSE). Embeddings for ``/v1/embeddings``: ``:embedContent``
for one input, ``:batchEmbedContents`` for a list. The API key goes in the
``x-goog-api-key`` header, never in the URL (URLs end up in logs).

Config (flat keys of ``providers.<name>``)::

    gemini:
      kind: gemini
      base_url: https://generativelanguage.googleapis.com
      api_key: ${GEMINI_API_KEY}
      api_version: v1beta
"""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy import Call, Provider, ProxyError, Route, StateKey, UpstreamRequest, Usage
from proxy.provider import error_message, loads_json, upstream_error

from .gemini_request import to_gemini
from .gemini_response import GeminiStreamDecoder, response_to_completion, usage_from_gemini
from .translate import refuse

# The upstream's model name of a chat call, for its answer (Gemini's answers do not carry it).
UPSTREAM_MODEL: StateKey[str] = StateKey("gemini.upstream_model")
# An embeddings call's facts for its answer: model, texts, format, batch.
EMBEDDINGS: StateKey[dict[str, Any]] = StateKey("gemini.embeddings")


@dataclass(frozen=True)
class GeminiOptions:
    api_version: str = "v1beta"


class GeminiProvider(Provider):
    kind = "gemini"
    dialect = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com"
    Options = GeminiOptions
    api_key_header = ("x-goog-api-key", "")

    def family(self, upstream_model: str) -> str:
        return "google"

    def __init__(self, name, config, options: GeminiOptions | None = None) -> None:
        super().__init__(name, config, options or GeminiOptions())
        base = (config.base_url or self.default_base_url).rstrip("/")
        version = self.options.api_version
        self.base = base if base.endswith("/" + version) else f"{base}/{version}"
        self.headers = self.upstream_headers()

    def _url(self, model: str, method: str) -> str:
        model = model.removeprefix("models/")
        return f"{self.base}/models/{model}:{method}"

    # -- chat -----------------------------------------------------------------------
    def chat_request(self, call: Call, route: Route, body: dict | None) -> UpstreamRequest:
        if body is None:  # no client speaks Gemini's dialect to the gateway
            raise ProxyError(400, "Gemini's native API is not served; use /v1/chat/completions",
                             code="unsupported_dialect")
        request = to_gemini(body)
        call.state[UPSTREAM_MODEL] = route.upstream_model
        if body.get("stream"):
            url = self._url(route.upstream_model, "streamGenerateContent") + "?alt=sse"
        else:
            url = self._url(route.upstream_model, "generateContent")
        return UpstreamRequest(url, orjson.dumps(request), self.headers)

    def chat_response(self, call: Call, body: bytes) -> tuple[dict, Usage | None]:
        data = loads_json(body, self.name)
        completion = response_to_completion(data, call.state.get(UPSTREAM_MODEL) or "")
        return completion, usage_from_gemini(data.get("usageMetadata"))  # (its own: it may not name the output)

    def chat_stream(self, call: Call) -> GeminiStreamDecoder:
        return GeminiStreamDecoder(self.name, call.state.get(UPSTREAM_MODEL) or "")

    # -- embeddings -----------------------------------------------------------------
    def embeddings_request(self, call: Call, route: Route) -> UpstreamRequest:
        body = call.body
        inputs = body["input"]
        items = [inputs] if isinstance(inputs, str) else inputs
        if not all(isinstance(item, str) for item in items):
            raise refuse("input", "Gemini embeds text only; token ids cannot be translated", "Gemini")
        fmt = body.get("encoding_format")
        if fmt not in (None, "float", "base64"):
            raise refuse("encoding_format", "only float and base64 are produced", "Gemini")
        model = "models/" + route.upstream_model.removeprefix("models/")

        def one(text: str) -> dict:
            req = {"model": model, "content": {"parts": [{"text": text}]}}
            if body.get("dimensions"):
                req["outputDimensionality"] = body["dimensions"]
            return req

        call.state[EMBEDDINGS] = {"model": route.upstream_model, "texts": items, "format": fmt,
                             "batch": not isinstance(inputs, str)}
        if isinstance(inputs, str):
            return UpstreamRequest(self._url(route.upstream_model, "embedContent"), orjson.dumps(one(inputs)),
                                   self.headers)
        payload = {"requests": [one(text) for text in items]}
        return UpstreamRequest(self._url(route.upstream_model, "batchEmbedContents"), orjson.dumps(payload),
                               self.headers)

    def embeddings_response(self, call: Call, body: bytes) -> tuple[dict, Usage | None]:
        data = loads_json(body, self.name)
        state = call.state.get(EMBEDDINGS) or {}
        vectors = data.get("embeddings") if state.get("batch") else [data.get("embedding")]
        if not isinstance(vectors, list) or not all(isinstance(v, dict) for v in vectors):
            raise ProxyError(502, f"upstream '{self.name}' answered embeddings in an unexpected shape",
                             code="upstream_bad_response")
        b64 = state.get("format") == "base64"
        items = [{"object": "embedding", "index": i,
                  "embedding": _base64(v.get("values") or []) if b64 else v.get("values") or []}
                 for i, v in enumerate(vectors)]
        tokens = _embedding_tokens(data, state.get("texts") or [])
        usage = Usage(prompt_tokens=tokens)
        return ({"object": "list", "data": items, "model": state.get("model", ""),
                 "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, usage)

    # -- errors ---------------------------------------------------------------------
    def error_for(self, call: Call, status: int, headers: Mapping[str, str], body: bytes) -> ProxyError:
        """Gemini answers a bad API key with 400 INVALID_ARGUMENT (reason
        API_KEY_INVALID): that is the operator's problem, a 502, not the
        client's. Its 429s carry the wait in ``RetryInfo.retryDelay`` rather
        than (only) a Retry-After header."""
        message = error_message(body)
        if status == 400 and (b"API_KEY_INVALID" in body or (message or "").startswith("API key not valid")):
            status = 401
        if status == 429 and not (headers.get("Retry-After") or headers.get("retry-after")):
            delay = _retry_delay(body)
            if delay is not None:
                headers = {"Retry-After": delay}
        return upstream_error(self.name, status, headers, message)


def _retry_delay(body: bytes) -> str | None:
    try:
        details = orjson.loads(body)["error"]["details"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            m = re.fullmatch(r"(\d+(?:\.\d+)?)s", str(detail.get("retryDelay", "")))
            if m:
                return str(math.ceil(float(m.group(1))))
    return None


def _embedding_tokens(data: dict, texts: list[str]) -> int:
    """Gemini's embedding answers often carry no token count. When
    ``usageMetadata.promptTokenCount`` is absent the count is estimated at four
    characters a token (documented in docs/providers.md)."""
    meta = data.get("usageMetadata")
    count = meta.get("promptTokenCount") if isinstance(meta, dict) else None
    try:
        return Usage.count(count)
    except ValueError:  # absent, or not a count
        return sum(math.ceil(len(t) / 4) for t in texts)


def _base64(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()

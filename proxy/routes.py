"""HTTP endpoints: read and check the request, make the Call, run the pipeline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .answers import JSON
from .bodies import read_body
from .call import Call
from .errors import ProxyError, bad_request, error_response
from .gateway import GATEWAY_KEY
from .identify import NO_MODEL, identify
from .media import UPLOAD_ENDPOINTS, audio_length, validate_media
from .pipeline import answer_here, refuse, run_model_call
from .provider import UPLOAD
from .uploads import read_upload
from .upstream_items import count_tokens, stored_response
from .validate import check_depth, validate_embeddings

if TYPE_CHECKING:
    from .config import Price
    from .gateway import Gateway

# error_response: kept here too, where plugins found it before the error middleware.
__all__ = ["GATEWAY_KEY", "ModelRoutes", "error_response", "fallback", "json_response", "read_json"]

log = logging.getLogger("tollway")

# Paths served here, for a 405 (not 404) when the method is wrong.
_KNOWN_PATHS = {"/v1/chat/completions": "POST", "/v1/embeddings": "POST", "/v1/messages": "POST",
                "/v1/responses": "POST", "/v1/completions": "POST", "/v1/messages/count_tokens": "POST",
                "/v1/images/generations": "POST", "/v1/images/edits": "POST", "/v1/audio/speech": "POST",
                "/v1/audio/transcriptions": "POST", "/v1/audio/translations": "POST",
                "/v1/models": "GET", "/health": "GET", "/health/ready": "GET"}


async def read_json(request: web.Request, limit: int) -> tuple[dict, bytes]:
    """The body, parsed once; 413 over ``limit``, 400 when it is not a JSON object."""
    raw = await read_body(request, limit, _too_large)
    if not raw:
        raise bad_request("the request body is empty: send a JSON object", code="empty_body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    check_depth(body, raw)
    return body, raw


def _too_large(limit: int) -> ProxyError:
    return ProxyError(413, f"the request body is larger than the gateway's limit of {limit} bytes",
                      code="body_too_large")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response (serialised with orjson), for plugin routes."""
    return web.Response(status=status, body=orjson.dumps(data), headers={**(headers or {}), "Content-Type": JSON})


# The last two path segments of the images and audio routes -> the call's endpoint.
_MEDIA_ENDPOINTS = {"images/generations": "images", "images/edits": "image_edits", "audio/speech": "speech",
                    "audio/transcriptions": "transcriptions", "audio/translations": "translations"}


def _price_range(prices: list[Price]) -> dict:
    """USD per 1M tokens: the lowest of each price, and the highest under ``max`` when they differ."""
    def lows_and_highs(pick: Callable[[Price], float]) -> tuple[float, float]:
        values = [pick(p) for p in prices] or [0.0]
        return min(values), max(values)

    out: dict[str, Any] = {"currency": "USD", "unit": "1M tokens"}
    highs = {}
    for field, pick in (("input", lambda p: p.input), ("output", lambda p: p.output),
                        ("cached_input", lambda p: p.input if p.cached_input is None else p.cached_input),
                        ("cache_write", lambda p: p.input if p.cache_write is None else p.cache_write)):
        low, high = lows_and_highs(pick)
        out[field] = low
        highs[field] = high
    if any(highs[f] != out[f] for f in highs):
        out["max"] = highs
    return out


class ModelRoutes:
    """The model-facing endpoints of one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.limit = gateway.config.server.max_body_bytes
        self.upload_limit = gateway.config.server.max_upload_bytes
        self.created = int(time.time())
        self.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))

    def routes(self) -> list[web.RouteDef]:
        return [
            # (the model calls straight to _model_call, not through chat() and the like: a coroutine less a request)
            web.post("/v1/chat/completions", partial(self._model_call, endpoint="chat", dialect="openai")),
            web.post("/v1/embeddings", partial(self._model_call, endpoint="embeddings", dialect="openai")),
            web.post("/v1/messages", self.messages),
            web.post("/v1/messages/count_tokens", self.count_tokens),
            web.post("/v1/responses", self.responses),
            web.get("/v1/responses/{response_id}", self.stored_response),
            web.delete("/v1/responses/{response_id}", self.stored_response),
            web.post("/v1/completions", partial(self._model_call, endpoint="completions", dialect="completions")),
            web.post("/v1/images/generations", self.media),
            web.post("/v1/images/edits", self.media),
            web.post("/v1/audio/speech", self.media),
            web.post("/v1/audio/transcriptions", self.media),
            web.post("/v1/audio/translations", self.media),
            web.get("/v1/models", self.list_models),
            web.get("/v1/models/{model:.+}", self.get_model),
            web.get("/api/models", self.catalog),
            web.get("/health", self.health),
            web.get("/health/ready", self.ready),
        ]

    async def _model_call(self, request: web.Request, endpoint: str, dialect: str) -> web.StreamResponse:
        try:
            body, raw = await read_json(request, self.limit)
            if "model" not in body:  # the caller's default model, named once it is known (pipeline.py)
                body["model"] = NO_MODEL
            if endpoint == "embeddings":
                validate_embeddings(body)
            else:
                self.gateway.dialects[dialect].validate(body)
        except ProxyError as err:
            return await refuse(self.gateway, request, Call(request, endpoint, {}, b"", dialect,
                                                                self.gateway.snapshot), err)
        call = Call(request, endpoint, body, raw, dialect, self.gateway.snapshot)
        resp = await run_model_call(self.gateway, request, call)
        if dialect == "responses":
            self.gateway.stored_responses.remember_call(call)
        return resp

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._model_call(request, "chat", "openai")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._model_call(request, "embeddings", "openai")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        if "anthropic" not in self.gateway.dialects:
            raise ProxyError(404, "the Anthropic Messages API is not enabled on this gateway", code="unknown_endpoint")
        return await self._model_call(request, "messages", "anthropic")

    async def responses(self, request: web.Request) -> web.StreamResponse:
        if "responses" not in self.gateway.dialects:
            raise ProxyError(404, "the Responses API is not enabled on this gateway", code="unknown_endpoint")
        return await self._model_call(request, "responses", "responses")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._model_call(request, "completions", "completions")

    async def media(self, request: web.Request) -> web.StreamResponse:
        """Images and audio (``proxy/media.py``): JSON or a multipart upload, priced by the unit."""
        endpoint = _MEDIA_ENDPOINTS["/".join(request.path.rstrip("/").split("/")[-2:])]
        upload = None
        try:
            if endpoint in UPLOAD_ENDPOINTS:
                upload, raw = await read_upload(request, self.upload_limit)
                body: dict = dict(upload.fields)
            else:
                body, raw = await read_json(request, self.limit)
            units = validate_media(endpoint, body, upload)
            audio = upload.file("file") if upload is not None and endpoint not in ("image_edits",) else None
            if audio is not None:
                seconds, counted = await asyncio.to_thread(audio_length, raw[audio.start:audio.end])
                if seconds is not None:
                    units.audio_seconds, units.audio_measured, units.measured_seconds = seconds, True, seconds
                units.audio_counted = counted
                if not counted and body.get("response_format") in ("text", "srt", "vtt"):
                    raise bad_request(f"the gateway cannot count the length of {audio.filename!r} (it counts mp3, "
                                      "wav, flac, ogg with opus or vorbis, and mp4/m4a with aac), and a "
                                      "response_format of text, srt or vtt reports none: send one of those formats, "
                                      "or ask for json or verbose_json", "response_format", "unmeasurable_audio")
        except ProxyError as err:
            return await refuse(self.gateway, request, Call(request, endpoint, {}, b""), err)
        call = Call(request, endpoint, body, raw)
        call.billing.units = units
        if upload is not None:
            call.state[UPLOAD] = upload
        return await run_model_call(self.gateway, request, call)

    async def stored_response(self, request: web.Request) -> web.StreamResponse:
        """``GET``/``DELETE /v1/responses/{id}``: to the upstream that created it, for the key that did."""
        return await stored_response(self.gateway, request)

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/messages/count_tokens``: the Anthropic upstream's count, or the gateway's estimate."""
        if "anthropic" not in self.gateway.dialects:
            raise ProxyError(404, "the Anthropic Messages API is not enabled on this gateway", code="unknown_endpoint")
        dialect = self.gateway.dialects["anthropic"]
        try:
            body, raw = await read_json(request, self.limit)
            # The Messages checks, without max_tokens (counting has no output).
            dialect.validate({**body, "max_tokens": 1} if "max_tokens" not in body else body)
        except ProxyError as err:
            return await refuse(self.gateway, request, Call(request, "count_tokens", {}, b"", "anthropic",
                                                                self.gateway.snapshot), err)
        return await count_tokens(self.gateway, request, Call(request, "count_tokens", body, raw, "anthropic",
                                                                      self.gateway.snapshot))

    # -- models -----------------------------------------------------------------------
    def describe(self, name: str) -> dict:
        models = self.gateway.config.models
        m = models[name]
        if m.virtual:  # a group or auto: the range of the models it may answer with, no provider named
            members = [models[n] for n in m.group] if m.group is not None else [
                x for x in models.values() if not x.virtual]
            family, window = "tollway", max((x.context_window or 0 for x in members), default=0) or None
            prices = [x.price for x in members if x.price is not None]
        else:
            provider = self.gateway.providers.get(m.provider or "")
            family = provider.family(m.upstream_model) if provider is not None else "unknown"
            window, prices = m.context_window, [m.price] if m.price is not None else []
        pricing = _price_range(prices)
        byok = m.price.byok if not m.virtual and m.price is not None else None
        if byok is not None:  # with the caller's own upstream key (the byok plugin)
            pricing = {**pricing, "byok": byok if isinstance(byok, float) else {"multiplier": byok.multiplier}}
        out = {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": family,  # the model's family, never the operator's own provider name
            # The Anthropic Models API's fields, so both SDKs read the same answer.
            "type": "model",
            "display_name": name,
            "created_at": self.created_at,
            "max_input_tokens": window,
            "pricing": pricing,
            "context_window": window,
            # AICredits' catalog fields (GET /api/models shows the same).
            "name": name,
            "provider": family,
            "input_cost_per_1m": pricing["input"],
            "output_cost_per_1m": pricing["output"],
        }
        price = m.price
        if price is not None:
            if price.images:
                out["image_cost_per_image"] = dict(price.images)
            if price.audio_minute is not None:
                out["audio_cost_per_minute"] = price.audio_minute
            if price.characters is not None:
                out["tts_cost_per_1m_characters"] = price.characters
        return out

    async def catalog(self, request: web.Request) -> web.Response:
        """``GET /api/models``: every model, no key needed, when ``catalog.public`` is on."""
        if not self.gateway.config.catalog.public:
            raise ProxyError(404, "the public model catalog is off on this gateway (catalog: {public: true} turns "
                                  "it on); GET /v1/models with a key lists the models it may use",
                             code="unknown_endpoint")
        return json_response({"object": "list", "data": [self.describe(n) for n in self.gateway.config.models]})

    async def _visible(self, call: Call) -> list[str]:
        await identify(self.gateway, call, resolve=False)
        names = list(self.gateway.config.models)
        for hook in self.gateway.hooks.visible_models:
            filtered = await hook(call, names)
            if filtered is not None:
                names = filtered
        return names

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        call = Call(request, "models", {}, b"", snapshot=self.gateway.snapshot)

        async def respond() -> web.StreamResponse:
            names = await self._visible(call)
            call.response.status = 200
            data = [self.describe(n) for n in names]
            return json_response({"object": "list", "data": data, "has_more": False,
                                  "first_id": names[0] if names else None, "last_id": names[-1] if names else None},
                                 headers=call.response.headers)

        return await answer_here(self.gateway, request, call, respond)

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        call = Call(request, "models", {"model": model}, b"", snapshot=self.gateway.snapshot)

        async def respond() -> web.StreamResponse:
            if model not in await self._visible(call):
                raise ProxyError(404, f"model {model!r} does not exist; GET /v1/models lists the models "
                                      "you can use", param="model", code="model_not_found")
            call.response.status = 200
            return json_response(self.describe(model), headers=call.response.headers)

        return await answer_here(self.gateway, request, call, respond)

    # -- health -----------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        """``{"status": "ready", "storage": "ok", ...}``: each dependency; 503 when one is down."""
        deps = await self.gateway.readiness()
        if self.gateway.ready and all(v == "ok" for v in deps.values()):
            return json_response({"status": "ready", **deps})
        down = [name for name, v in deps.items() if v != "ok"]
        reason = (f"{' and '.join(down)} not reachable" if down else "start-up has not finished")
        return json_response({"status": "not ready", **deps, "reason": reason}, status=503)


async def fallback(request: web.Request) -> web.Response:
    """Unknown paths (404) and wrong methods (405, with ``Allow``)."""
    path = request.path.rstrip("/") or "/"
    server = request.app[GATEWAY_KEY].config.server
    if server.base_path and path.startswith(server.base_path + "/"):
        path = "/v1" + path[len(server.base_path):]  # the same endpoints under the operator's prefix
    elif not server.keep_v1 and (path == "/v1" or path.startswith("/v1/")):
        path = ""  # /v1 is not served
    allowed = _KNOWN_PATHS.get(path)
    if allowed:
        raise ProxyError(405, f"{request.method} is not allowed on {request.path}; use {allowed}",
                         code="method_not_allowed", headers={"Allow": allowed})
    raise ProxyError(404, f"unknown endpoint {request.method} {request.path}", code="unknown_endpoint")

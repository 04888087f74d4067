"""Model-side calls that are not billed answers: a stored Responses API object
(``GET``/``DELETE /v1/responses/{id}``) and Anthropic's ``count_tokens``.

Both authenticate like a model call (and ``count_tokens`` resolves its model,
so a key's allowlist holds), go to the provider that owns the thing, and pass
the upstream's answer back as it is. Neither reserves nor charges credits:
the upstreams do not bill them.

A stored response lives in the upstream that created it, under the operator's
upstream key; ``stored_responses.StoredResponses`` remembers which provider
created which id for which account, so one tenant never reads another's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

import orjson
from aiohttp import web

from .answers import _json_response
from .errors import ProxyError
from .forward import MAX_ERROR_BODY
from .identify import identify
from .pipeline import answer_here
from .provider import loads_json

if TYPE_CHECKING:
    from .call import Call
    from .gateway import Gateway

def upstream_query(query: str) -> str:
    """The client's query string without the gateway key a client may authenticate
    with (``?api_key=``): the customer's secret never goes to the upstream."""
    return "&".join(p for p in query.split("&") if p and unquote_plus(p.partition("=")[0]) != "api_key")


async def stored_response(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    from .call import Call

    response_id = request.match_info["response_id"]
    call = Call(request, "responses_item", {}, b"", "responses", gateway.snapshot)

    async def respond() -> web.StreamResponse:
        await identify(gateway, call, resolve=False)
        item = await gateway.stored_responses.owned(response_id, call.principal)
        provider = gateway.providers.get(item.provider) if item is not None else None
        upstream_request = (provider.stored_response_request(request.method, response_id,
                                                             upstream_query(request.query_string))
                            if provider is not None else None)
        if upstream_request is None:
            raise ProxyError(404, f"no response {response_id!r} was created through this gateway for this key's "
                                  "account (it remembers the newest responses since it started)",
                             param="response_id", code="response_not_found")
        upstream = await provider.send(call, upstream_request)  # type: ignore[union-attr]
        try:
            body = await (upstream.read_all(MAX_ERROR_BODY) if upstream.status >= 400 else upstream.read_all())
        finally:
            upstream.release()
        if upstream.status == 404:
            gateway.stored_responses.forget(response_id)
            raise ProxyError(404, f"response {response_id!r} is no longer stored upstream",
                             param="response_id", code="response_not_found")
        if upstream.status >= 400:
            raise provider.error_for(call, upstream.status, upstream.headers, body)  # type: ignore[union-attr]
        # A 200 that is not a JSON object (HTML, junk) is a 502, not passed on.
        loads_json(body, item.provider if item is not None else "?")
        if request.method == "DELETE":
            gateway.stored_responses.forget(response_id)
        return await _json_response(request, call, body)

    return await answer_here(gateway, request, call, respond)


async def count_tokens(gateway: Gateway, request: web.Request, call: Call) -> web.StreamResponse:
    async def respond() -> web.StreamResponse:
        await identify(gateway, call)
        route = call.route
        assert route is not None  # resolve raised otherwise
        upstream_request = route.provider.count_tokens_request(call, route)
        if upstream_request is None:
            tokens = await gateway.dialects[call.dialect].estimate_input_tokens(call)
            call.response.headers["x-tollway-estimated"] = "true"
            return await _json_response(request, call, orjson.dumps({"input_tokens": tokens}))
        upstream = await route.provider.send(call, upstream_request)
        try:
            body = await (upstream.read_all(MAX_ERROR_BODY) if upstream.status >= 400 else upstream.read_all())
        finally:
            upstream.release()
        if upstream.status >= 400:
            raise route.provider.error_for(call, upstream.status, upstream.headers, body)
        counted = loads_json(body, route.provider.name).get("input_tokens")
        if not isinstance(counted, int) or isinstance(counted, bool) or counted < 0:
            raise ProxyError(502, f"upstream '{route.provider.name}' answered count_tokens without a token count",
                             code="upstream_bad_response")
        return await _json_response(request, call, body)

    return await answer_here(gateway, request, call, respond)


"""Short-circuits: questions about the weather get a canned answer, no upstream call."""

from __future__ import annotations

from proxy import CachedResponse, Call, Usage, hookimpl


@hookimpl
async def tollway_lookup(call: Call) -> CachedResponse | None:
    text = str(call.body.get("messages", [{}])[-1].get("content", ""))
    if "weather" not in text:
        return None
    call.response.cache_status = "CANNED"
    body = {"id": "canned-1", "object": "chat.completion", "created": 0, "model": call.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "It is always sunny here."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    return CachedResponse(body=body, usage=Usage(), headers={"x-canned": "yes"})

"""Token estimates made before the upstream answers.

Two different needs:

- ``prompt_bound``: an UPPER bound of the prompt's tokens, for the money
  reservation. Every prompt token comes from at least one byte of the request
  body (BPE tokens are at least one byte, and JSON only adds bytes), so the
  body's length bounds the text; each image part adds ``IMAGE_TOKENS``. The
  bound is capped by the model's context window when one is configured.
- ``tokens_estimate``: a fair guess for the tokens-per-minute limiter (about
  four bytes a token, plus the requested output), reconciled with the real
  usage afterwards.

And one made after the answer went out, when the upstream never said what
it used (a stream cut, timed out or abandoned before its usage event, an
upstream that sends none): ``counted_usage`` counts the output that was
produced (``Billing.streamed``, or the completion) and the prompt with a
real tokenizer (``tokens.py``), each capped by the bound its reservation
was made with, so the estimate never costs more than was reserved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy import Usage
from proxy.outputtext import completion_text, prompt_text

from .tokens import count_tokens

if TYPE_CHECKING:
    from proxy import Call, Dialect

IMAGE_TOKENS = 2000


def _image_parts(body: dict) -> int:
    n = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("image_url", "image", "input_image",
                                                                   "document"):
                    n += 1
    return n


def prompt_bound(call: Call) -> int:
    bound = len(call.body_bytes()) + IMAGE_TOKENS * _image_parts(call.body)
    window = call.route.config.context_window if call.route is not None else None
    return min(bound, window) if window else bound


def requested_output(call: Call) -> int | None:
    """The client's output cap (``max_completion_tokens`` or ``max_tokens``)."""
    body = call.body
    value = body.get("max_completion_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    value = body.get("max_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def output_bound(call: Call, default_cap: int) -> int:
    """The most completion tokens this request can be billed for."""
    if call.endpoint == "embeddings":
        return 0
    asked = requested_output(call)
    if asked is not None:
        return asked
    model_cap = call.route.config.max_output_tokens if call.route is not None else None
    return model_cap or default_cap


def tokens_estimate(call: Call) -> int:
    return max(1, len(call.body_bytes()) // 4) + (requested_output(call) or 0)


async def counted_usage(call: Call, dialect: Dialect, default_cap: int) -> Usage | None:
    """The gateway's own count of what a request used, when the upstream said
    nothing (or, for a stream that ended early, only part): None when no
    output went out (then nothing is billed)."""
    billing = call.billing
    if call.stream:
        if not billing.streamed:
            return None
        blob = b"".join(billing.streamed)
        completion = await count_tokens(dialect.streamed_text(blob))
        if billing.streamed_dropped:  # past what was kept: the same tokens per byte
            completion += -(-completion * billing.streamed_dropped // len(blob))
    elif call.response.completion is not None:
        completion = await count_tokens(completion_text(call.response.completion))
    else:
        return None
    partial = billing.partial_usage
    if partial is not None:
        completion = max(completion, partial.completion_tokens)
    completion = min(completion, output_bound(call, default_cap))
    if completion <= 0:
        return None
    if partial is not None and partial.prompt_tokens:
        prompt = partial.prompt_tokens  # the upstream's own count, sent before it stopped
    else:
        prompt = await count_tokens(prompt_text(call.body))
    return Usage(prompt_tokens=min(prompt, prompt_bound(call)), completion_tokens=completion)

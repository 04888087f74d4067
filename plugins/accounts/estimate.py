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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy import Call

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

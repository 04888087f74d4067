"""Which failures count against a deployment's health, and which may be retried.

Retried (on another deployment, then on the model's fallbacks) only while
nothing has reached the client, and only for answers the upstream does not
bill: a refused connection or a connect timeout (the request never left), a
429, an overloaded 503/529, an error status (5xx, 408/504) that came instead
of an answer, the upstream refusing the gateway's own key. A first-byte
timeout only with ``routing.retry_timeouts: true``: the request was sent,
and OpenAI, Anthropic and Gemini go on with it (and bill it) after a client
gave up. A connection that broke after the request was written is not
retried either: the upstream may be generating (and billing) the answer.
"""

from __future__ import annotations

import random

from proxy import ProxyError
from proxy.provider import retry_after

from .options import BackoffOptions

__all__ = ["backoff_seconds", "counts_against", "retry_after_of", "retryable"]

UNBILLED = frozenset({
    "upstream_unreachable",  # the connection was refused: nothing was sent
    "upstream_timeout_connect",
    "upstream_rate_limited",  # 429
    "upstream_overloaded",  # 503, 529
    "upstream_timeout",  # the upstream answered 408 or 504
    "upstream_error",  # another error status (500, 502...)
    "upstream_auth_failed",  # the upstream refused this deployment's key
    "upstream_no_api_key",
})


def counts_against(error: ProxyError) -> bool:
    """Connection errors, timeouts, 5xx and 429 count; the client's own 4xx do not."""
    return error.status >= 500 or error.status == 429


def retryable(error: ProxyError, retry_timeouts: bool) -> bool:
    code = error.code or ""
    return code in UNBILLED or (retry_timeouts and code == "upstream_timeout_first_byte")


def retry_after_of(error: ProxyError) -> float | None:
    """The upstream's ``Retry-After`` in seconds (delay form; a date counts as unknown)."""
    value = error.headers.get("Retry-After") if error.headers else None
    checked = retry_after(value, "")
    return float(checked) if checked.isdigit() else None


def backoff_seconds(options: BackoffOptions, attempts: int) -> float:
    """Full jitter: random up to base * 2^(attempts - 1), capped."""
    ceiling = min(options.max, options.base * (2 ** max(0, attempts - 1)))
    return random.uniform(0, ceiling) if ceiling > 0 else 0.0

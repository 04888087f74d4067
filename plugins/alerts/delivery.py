"""Sending one alert to one webhook: the signed POST, and when to try again.

The body is signed with HMAC-SHA256 under the webhook's ``secret``; the receiver
recomputes it over the raw body it received and compares in constant time::

    X-Tollway-Signature: sha256=<hex HMAC-SHA256(secret, body)>
    X-Tollway-Event: balance_low
    X-Tollway-Event-Id: evt_...         (the same on every retry: de-duplicate on it)
    X-Tollway-Delivery-Attempt: 1

Any 2xx is delivered; anything else (another status, a redirect, no answer within
``timeout``, a refused connection) is retried after ``first_delay * 2**(n-1)``
seconds (at most ``max_delay``) until ``max_attempts`` attempts were made.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

import aiohttp

from .options import Retry, Webhook
from .outbox import Delivery

USER_AGENT = "tollway-alerts/1"


def where(url: str) -> str:
    """A webhook URL for a log line: scheme and host only (some carry a secret in the path)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/..."


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def send(session: aiohttp.ClientSession, webhook: Webhook, delivery: Delivery) -> str | None:
    """POST the alert; None when the receiver took it, else what went wrong (one line, no secret)."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "X-Tollway-Signature": signature(webhook.secret, delivery.body),
               "X-Tollway-Event": delivery.event, "X-Tollway-Event-Id": delivery.event_id,
               "X-Tollway-Delivery-Attempt": str(delivery.attempts)}
    try:
        async with session.post(delivery.url, data=delivery.body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=webhook.timeout)) as r:
            await r.read()
            if 200 <= r.status < 300:
                return None
            return f"the receiver answered {r.status}"
    except TimeoutError:
        return f"no answer within {webhook.timeout:g} s"
    except aiohttp.ClientError as exc:
        return f"cannot reach the receiver: {type(exc).__name__}"


def next_delay(retry: Retry, attempts: int) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones; None: give up."""
    if attempts >= retry.max_attempts:
        return None
    return min(retry.max_delay, retry.first_delay * 2 ** (attempts - 1))

"""API keys: making them, hashing them, finding them in a request."""

from __future__ import annotations

import hashlib
import math
import secrets
import string
from typing import TYPE_CHECKING

from multidict import istr

from proxy.logs import display_prefix

__all__ = ["ALPHABETS", "KEY_PREFIX", "MIN_BITS", "key_bits",
           "display_prefix", "hash_key", "key_from_headers", "key_from_request", "new_id", "new_key"]

if TYPE_CHECKING:
    from aiohttp import web

KEY_PREFIX = "sk-tw-"
# The headers a key comes in, as ``istr``s: the request's case-insensitive headers then do not
# fold the name's case for every look-up (~500 instructions a read).
AUTHORIZATION, X_API_KEY = istr("Authorization"), istr("X-API-Key")


ALPHABETS = {"urlsafe": string.ascii_letters + string.digits + "-_", "hex": "0123456789abcdef",
             "alphanumeric": string.ascii_letters + string.digits}
MIN_BITS = 128


def new_key(prefix: str = KEY_PREFIX, length: int = 43, alphabet: str = "urlsafe") -> str:
    """A fresh key: ``prefix`` and ``length`` random characters of ``alphabet``
    (default: 'sk-tw-' and 43 URL-safe characters, 256 random bits)."""
    chars = ALPHABETS[alphabet]
    return prefix + "".join(secrets.choice(chars) for _ in range(length))


def key_bits(length: int, alphabet: str) -> float:
    """The randomness of a key of this format, in bits."""
    return length * math.log2(len(ALPHABETS[alphabet]))


def new_id() -> str:
    return "key_" + secrets.token_hex(8)


def hash_key(key: str) -> str:
    """SHA-256 hex of the key. Keys carry 256 random bits (or are the
    operator's own, already in the YAML), so a fast unsalted hash is enough:
    the store never holds anything that could be replayed as a key.
    A header's non-UTF-8 bytes (aiohttp keeps them as surrogates) hash too:
    such a key matches nothing and is refused, never an error."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def key_from_request(request: web.Request) -> str | None:
    """The key from ``Authorization: Bearer``, ``X-API-Key`` (Anthropic's
    ``x-api-key`` is the same header) or ``?api_key=``, in that order."""
    value = key_from_headers(request)
    if value is not None:
        return value
    return request.query.get("api_key") or None


def key_from_headers(request: web.Request) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``: never the query
    string (what the admin key must come in: a URL lands in access logs,
    proxies' logs and browser history)."""
    headers = request.headers
    auth = headers.get(AUTHORIZATION)
    if auth:
        if auth.startswith("Bearer "):  # the usual form, without the general parse below
            value = auth[7:].strip()
            if value:
                return value
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    value = headers.get(X_API_KEY)
    if value and value.strip():
        return value.strip()
    return None

"""Upstream keys at rest: AES-256-GCM (the ``cryptography`` package), keyed from a master secret.

The master secret comes from the environment (``plugins.byok.secret_env``,
default ``TOLLWAY_BYOK_SECRET``; at least 32 characters, e.g. ``openssl rand
-base64 48``). A 256-bit key is derived from it with HKDF-SHA256. Each sealed
key is ``base64(nonce || ciphertext+tag)`` with a random 96-bit nonce, and its
owner and provider as associated data: a row copied onto another owner or
provider does not open. ``fingerprint`` names the secret (never reveals it), so
a gateway started with another secret says so instead of failing per request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["MIN_SECRET", "SealError", "Sealer"]

MIN_SECRET = 32  # characters
NONCE = 12


class SealError(ValueError):
    """A sealed key that does not open (another secret, or a changed row)."""


class Sealer:
    def __init__(self, secret: str) -> None:
        raw = secret.encode()
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"tollway-byok", info=b"aes-256-gcm v1").derive(raw)
        self._aead = AESGCM(key)
        self.fingerprint = hmac.new(raw, b"tollway-byok fingerprint", hashlib.sha256).hexdigest()[:16]

    def seal(self, plain: str, owner: str, provider: str) -> str:
        nonce = os.urandom(NONCE)
        sealed = self._aead.encrypt(nonce, plain.encode(), _aad(owner, provider))
        return base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, owner: str, provider: str) -> str:
        try:
            data = base64.b64decode(sealed, validate=True)
            return self._aead.decrypt(data[:NONCE], data[NONCE:], _aad(owner, provider)).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError):
            raise SealError(f"the upstream key of {owner} for {provider!r} does not open") from None


def _aad(owner: str, provider: str) -> bytes:
    return f"{owner}\0{provider}".encode()

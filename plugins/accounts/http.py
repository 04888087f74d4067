"""Helpers for the plugins' own HTTP routes: key and admin auth, bodies, query checks.

Handlers raise ``ProxyError``; the app's error middleware renders it."""

from __future__ import annotations

import time
import typing
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy import ProxyError, bad_request, check_admin, read_json
from proxy.schema import ConfigError, build_dataclass

from .keys import AUTHORIZATION, key_from_request
from .model import KeyRecord
from .money import micro_to_usd
from .options import iso
from .specs import SpecError, TopUp, credits_micro

if TYPE_CHECKING:
    from proxy import Gateway

    from .book import Accounts

# check_admin: the core's (proxy.check_admin), used here by the plugins.
__all__ = ["authenticate", "build_body", "check_admin", "read_body", "read_topup", "running_accounts",
           "topup_answer"]

def authenticate(accounts: Accounts | None, request: web.Request | None) -> KeyRecord:
    """The calling key, or a 401 that says what is wrong with it."""
    key = None
    if request is not None:
        # (key_from_request's usual answer, ``Authorization: Bearer KEY``, read inline: two Python calls
        # fewer; any other form goes through it. tests/test_auth_inline.py holds the two to the same keys.)
        auth = request.headers.get(AUTHORIZATION)
        if auth and auth.startswith("Bearer ") and (value := auth[7:].strip()):
            key = value
        else:
            key = key_from_request(request)
    if key is None:
        raise ProxyError(401, "missing API key: send it as 'Authorization: Bearer KEY', 'X-API-Key: KEY' "
                              "or '?api_key=KEY'", code="missing_api_key")
    record = accounts.key_for(key) if accounts is not None else None
    if record is None:
        raise ProxyError(401, "invalid API key", code="invalid_api_key")
    if record.revoked_at is not None:
        raise ProxyError(401, "this API key has been revoked", code="revoked_api_key")
    if record.disabled:
        raise ProxyError(401, "this API key is disabled", code="disabled_api_key")
    if record.expires_at is not None and time.time() >= record.expires_at:
        raise ProxyError(401, f"this API key expired at {iso(record.expires_at)}", code="expired_api_key")
    return record


def running_accounts(gateway: Gateway) -> Accounts:
    """The accounts service, or 503 while the gateway starts or stops (an admin call can come then)."""
    from . import ACCOUNTS  # the package imports this module

    accounts = gateway.services.get(ACCOUNTS)
    if accounts is None:
        raise ProxyError(503, "the gateway is starting or stopping", code="not_ready")
    return accounts


async def read_body(request: web.Request, cls: type, limit: int = 1024 * 1024) -> tuple[Any, dict]:
    """The JSON body built into dataclass ``cls``; a 400 naming the field otherwise."""
    body, _ = await read_json(request, limit)
    return build_body(cls, body), body


async def read_topup(request: web.Request) -> int:
    """A top-up body ``{"amount": USD}`` -> micro-units (> 0); a 400 naming the field otherwise."""
    spec, _ = await read_body(request, TopUp)
    try:
        return credits_micro(spec.amount, "amount", positive=True)
    except SpecError as exc:
        raise field_error(str(exc)) from None


def topup_answer(owner_id: str, micro: int, account: dict) -> dict:
    """What a top-up answers: who, the amount added, and the account after it."""
    return {"id": owner_id, "added": micro_to_usd(micro), "added_micro_usd": micro, "account": account}


def build_body(cls: type, body: dict) -> Any:
    """Build ``cls`` from a JSON body. Stricter than the YAML rules: text
    fields take only JSON strings (a field listed in ``cls.NUMBER_OK`` may
    also be a number)."""
    hints = typing.get_type_hints(cls)
    for name, value in body.items():
        if value is None or isinstance(value, str) or name in getattr(cls, "NUMBER_OK", ()):
            continue
        if hints.get(name) in (str, str | None):
            raise field_error(f"{name}: expected text, got {type(value).__name__}")
    try:
        return build_dataclass(cls, body, "")
    except ConfigError as exc:
        raise field_error(str(exc)) from None


def field_error(message: str) -> ProxyError:
    """``"limits.rpm: expected an integer"`` -> a 400 with ``param`` = ``limits.rpm``."""
    param = message.split(":", 1)[0] if ":" in message else None
    return bad_request(message, param=param, code="invalid_field")


def check_query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    for name in request.query:
        if name not in allowed:
            raise bad_request(f"{name}: unknown query parameter (known: {', '.join(allowed)})", param=name,
                              code="invalid_field")
    return {k: request.query[k] for k in allowed if k in request.query}

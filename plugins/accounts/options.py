"""The YAML sections the business plugins read (validated by the core)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .model import NO_BUDGETS, Budgets, Limits, Refill

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class KeyConfig:
    """One entry of the YAML ``keys:`` list.

    ``credits`` (USD) is the account's opening balance, granted once, the
    first time the key is seen; after that the balance lives in the store
    (top it up with the admin API or ``tollway keys topup``). ``credits:
    null`` makes an unmetered account (spend is recorded, never refused).
    """

    name: str
    key: str
    credits: float | None = 0.0
    account: str | None = None  # share a credit account between keys
    models: list[str] | None = None  # omitted: every model
    limits: Limits = field(default_factory=Limits)
    expires_at: str | None = None  # ISO 8601 (UTC when no offset)
    disabled: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    budgets: Budgets = NO_BUDGETS  # this key's own spend caps (its account may have more)
    default_model: str | None = None  # for its requests without "model" (before server.default_model)


@dataclass(frozen=True)
class AccountConfig:
    """One entry of the YAML ``accounts:`` mapping (its name is the account id);
    keys join it with ``account: NAME``. ``credits`` opens the balance the first
    time only, like a key's; ``null`` makes it unmetered (budgets still apply)."""

    credits: float | None = 0.0
    limits: Limits = field(default_factory=Limits)  # rpm, tpm, rpd shared by every key of the account
    budgets: Budgets = NO_BUDGETS
    refill: Refill | None = None
    suspended: bool = False  # every request answers 402 account_suspended


@dataclass(frozen=True)
class BillingOptions:
    """``billing:``: the money the operator sells in, and its calendar."""

    currency: str = "USD"  # what credits, balances, budgets, refills and costs are counted in
    usd_rate: float = 1.0  # units of currency per USD: model prices (USD) are converted at this fixed rate
    timezone: str = "UTC"  # IANA name: where budget and refill periods begin (midnight, Monday, the 1st)
    billing_url: str | None = None  # appended to 402 messages: "Top up at <billing_url>"


@dataclass(frozen=True)
class KeyFormat:
    """What keys made by the admin API, the CLI and the dashboard look like:
    ``prefix`` then ``length`` random characters of ``alphabet`` (``sk-{64 hex}``:
    prefix ``sk-``, length 64, alphabet hex). At least 128 random bits."""

    prefix: str = "sk-tw-"
    length: int = 43
    alphabet: Literal["urlsafe", "hex", "alphanumeric"] = "urlsafe"


@dataclass(frozen=True)
class AuthOptions:
    # How often the server looks for key/balance changes made by another
    # process on the same store (the CLI), in milliseconds.
    poll_ms: int = 1000
    key_format: KeyFormat = field(default_factory=KeyFormat)


@dataclass(frozen=True)
class QuotasOptions:
    # Completion tokens reserved when a request sets no max_tokens and the
    # model has no max_output_tokens.
    default_max_tokens: int = 4096


@dataclass(frozen=True)
class LedgerOptions:
    flush_ms: int = 200  # the write-behind interval (ledger rows and balances)
    batch_rows: int = 2000  # flush early when this many rows wait
    #: The ledger queue's bound (rows not yet in the store: this process's, and the fleet's
    #: Redis stream): at it, new requests are refused (503 storage_unavailable) until the
    #: store takes rows again; nothing queued is ever dropped.
    max_queue_rows: int = 100_000


#: Unix seconds of 9999-12-31T23:59:59Z, the last moment an ISO 8601 time (and ``datetime``) can say.
LATEST = 253402300799.0


def parse_time(value: Any, where: str) -> float | None:
    """ISO 8601 text (or unix seconds) -> unix seconds, from 1970 to 9999. Naive times are UTC."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _in_range(float(value), value, where)
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected an ISO 8601 time like 2030-01-31T00:00:00Z")
    text = value.strip()
    try:
        ts = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"{where}: {value!r} is not an ISO 8601 time like 2030-01-31T00:00:00Z") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ts = moment.timestamp()
    return _in_range(ts, value, where)


def _in_range(ts: float, value: Any, where: str) -> float:
    # "Infinity", 1e308 or "NaN" were taken (NaN even as a future expiry), and then every
    # list of keys failed to write the time.
    if not 0.0 <= ts <= LATEST:  # (NaN fails both)
        raise ValueError(f"{where}: {value!r} is not a time between 1970-01-01 and 9999-12-31")
    return ts


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    if not 0.0 <= ts <= LATEST:  # a time stored before parse_time checked the range
        ts = 0.0 if ts < 0 else LATEST
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")

"""The records the accounts book keeps in memory: keys, limits, accounts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .money import MAX_AMOUNT, MoneyError, usd_to_micro

#: The largest rate or concurrency limit: far above any real one, and exact in the
#: stores, JSON and Redis (whose numbers are doubles).
MAX_LIMIT = 10**12


def _limit_problem(value: int) -> str | None:
    if value < 1:
        return f"must be at least 1, got {value}"
    if value > MAX_LIMIT:
        return f"must be at most {MAX_LIMIT} (leave it out for no limit), got {value}"
    return None


@dataclass(frozen=True)
class ModelLimits:
    """Limits for one model, on top of the key's own."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None


@dataclass(frozen=True)
class Limits:
    """Per-key limits; None means unlimited. ``models`` adds per-model limits."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    concurrency: int | None = None
    models: dict[str, ModelLimits] = field(default_factory=dict)

    def problems(self) -> list[tuple[str, str]]:
        """(field path, message) for each value that is not an integer from 1 to MAX_LIMIT."""
        out = []
        for name in ("rpm", "tpm", "rpd", "concurrency"):
            value = getattr(self, name)
            problem = None if value is None else _limit_problem(value)
            if problem is not None:
                out.append((f"limits.{name}", problem))
        for model, ml in self.models.items():
            for name in ("rpm", "tpm", "rpd"):
                value = getattr(ml, name)
                problem = None if value is None else _limit_problem(value)
                if problem is not None:
                    out.append((f"limits.models.{model}.{name}", problem))
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in ("rpm", "tpm", "rpd", "concurrency")
                               if getattr(self, k) is not None}
        if self.models:
            out["models"] = {m: {k: getattr(ml, k) for k in ("rpm", "tpm", "rpd") if getattr(ml, k) is not None}
                             for m, ml in self.models.items()}
        return out

    def __post_init__(self) -> None:
        # ``empty``, asked on every request: a plain attribute set once (a ``cached_property`` on the
        # class made every read a generic descriptor read, ~200 instructions more than this one's)
        # (no field: an instance attribute, out of the config schema, eq and repr)
        object.__setattr__(self, "empty", not self.to_dict())


PERIODS = ("daily", "weekly", "monthly")


class _InvalidCaps:
    """``Budgets.caps`` of budgets with a cap that is no amount: using it raises that cap's error."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __bool__(self) -> bool:
        raise self.error

    def __iter__(self):  # noqa: ANN204
        raise self.error

    def __len__(self) -> int:
        raise self.error


@dataclass(frozen=True)
class Budgets:
    """Spend caps per calendar period, in the billing currency (None: no cap).
    Periods reset at midnight, on Mondays and on the 1st, in ``billing.timezone``."""

    daily: float | None = None
    weekly: float | None = None
    monthly: float | None = None

    def problems(self) -> list[tuple[str, str]]:
        """(field path, message) for each cap that is not a non-negative amount."""
        out = []
        for name in PERIODS:
            value = getattr(self, name)
            if value is None:
                continue
            if value < 0:
                out.append((f"budgets.{name}", f"must be at least 0, got {value:g}"))
                continue
            if value > MAX_AMOUNT:
                out.append((f"budgets.{name}", f"must be at most {MAX_AMOUNT} (leave it out for no budget), "
                                               f"got {value:g}"))
                continue
            try:
                usd_to_micro(value, f"budgets.{name}")
            except MoneyError as exc:
                out.append((f"budgets.{name}", str(exc).split(": ", 1)[1]))
        return out

    def __post_init__(self) -> None:
        # ``caps``, asked on every request: a plain attribute set once (see ``Limits.empty``). A cap
        # that is no amount (``problems()`` says which, before any request sees it) raises its
        # error where ``caps`` is used, as when it was computed on the first read.
        try:
            caps: Any = tuple((name, usd_to_micro(getattr(self, name))) for name in PERIODS
                              if getattr(self, name) is not None)
        except Exception as exc:  # noqa: BLE001  (kept, raised on use)
            caps = _InvalidCaps(exc)
        #: (period, cap in micro-units) for each cap set (no field: see ``Limits.empty``)
        object.__setattr__(self, "caps", caps)

    def to_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in PERIODS if getattr(self, name) is not None}


NO_BUDGETS = Budgets()


@dataclass(slots=True)
class KeyRecord:
    """One API key: the principal of the requests made with it."""

    id: str
    name: str
    hash: str
    prefix: str
    account_id: str
    models: frozenset[str] | None  # None: every model
    limits: Limits
    expires_at: float | None  # unix seconds
    disabled: bool
    metadata: dict[str, Any]
    source: str  # "config" (from the YAML keys:) or "api" (admin API / CLI)
    created_at: float
    revoked_at: float | None = None
    budgets: Budgets = NO_BUDGETS
    default_model: str | None = None  # a request without "model" made with this key uses it

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.disabled:
            return "disabled"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


@dataclass(frozen=True)
class Refill:
    """A grant of ``amount`` credits at the start of every ``every`` (a subscription).
    ``rollover: false`` tops the balance up to ``amount`` (what was left does not carry
    over); ``true`` adds ``amount`` to what is left."""

    every: Literal["day", "week", "month"]
    amount: float
    rollover: bool = False


@dataclass(frozen=True)
class AccountPolicy:
    """What an account's keys share besides its credits: budgets, rate limits, a
    refill, and whether it is suspended (every request answered 402)."""

    budgets: Budgets = NO_BUDGETS
    limits: Limits = field(default_factory=Limits)
    refill: Refill | None = None
    suspended: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.budgets.to_dict():
            out["budgets"] = self.budgets.to_dict()
        if not self.limits.empty:
            out["limits"] = self.limits.to_dict()
        if self.refill is not None:
            out["refill"] = {"every": self.refill.every, "amount": self.refill.amount,
                             "rollover": self.refill.rollover}
        if self.suspended:
            out["suspended"] = True
        return out


NO_POLICY = AccountPolicy()


@dataclass(slots=True)
class Account:
    """A credit account (keys may share one). Money in micro-USD.

    Invariant: ``0 <= reserved <= balance`` unless ``unlimited``. ``balance``
    and ``spent`` are persisted write-behind; ``reserved`` lives in memory
    only (reservations die with the requests that made them).
    """

    id: str
    balance: int
    spent: int = 0
    unlimited: bool = False
    reserved: int = 0
    policy: AccountPolicy = NO_POLICY
    source: str = "api"  # "config": defined in the YAML accounts: section (changed there)
    #: The store's version (``tollway_meta``) when ``balance`` was read: shared counters
    #: use it to tell which top-ups a balance already includes (``redis_credit.py``).
    version: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.reserved

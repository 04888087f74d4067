"""The records the accounts book keeps in memory: keys, limits, accounts."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


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
        """(field path, message) for each value that is not a positive integer."""
        out = []
        for name in ("rpm", "tpm", "rpd", "concurrency"):
            value = getattr(self, name)
            if value is not None and value < 1:
                out.append((f"limits.{name}", f"must be at least 1, got {value}"))
        for model, ml in self.models.items():
            for name in ("rpm", "tpm", "rpd"):
                value = getattr(ml, name)
                if value is not None and value < 1:
                    out.append((f"limits.models.{model}.{name}", f"must be at least 1, got {value}"))
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in ("rpm", "tpm", "rpd", "concurrency")
                               if getattr(self, k) is not None}
        if self.models:
            out["models"] = {m: {k: getattr(ml, k) for k in ("rpm", "tpm", "rpd") if getattr(ml, k) is not None}
                             for m, ml in self.models.items()}
        return out

    @cached_property
    def empty(self) -> bool:  # asked on every request: computed once
        return not self.to_dict()


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

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.disabled:
            return "disabled"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


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

    @property
    def available(self) -> int:
        return self.balance - self.reserved

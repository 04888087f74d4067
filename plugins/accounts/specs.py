"""What the admin API and the CLI accept to make and change keys, and its checks.

Each check failure is a ``SpecError("field.path: what is wrong")``: the admin
API answers it as a 400 naming the field, the CLI prints it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from proxy.schema import suggest

from .model import NO_BUDGETS, AccountPolicy, Budgets, Limits, Refill
from .money import MAX_AMOUNT, MoneyError, usd_to_micro
from .options import NAME_RE, parse_time

MAX_CREDITS_USD = MAX_AMOUNT
PATCHABLE = ("name", "models", "limits", "expires_at", "disabled", "metadata", "budgets", "default_model")


class SpecError(ValueError):
    pass


@dataclass(frozen=True)
class KeyCreate:
    name: str
    credits: float | None = 0.0  # USD; null: unmetered
    account: str | None = None  # join (or name) a shared credit account
    models: list[str] | None = None  # null: every model
    limits: Limits = field(default_factory=Limits)
    expires_at: str | None = None  # ISO 8601 or unix seconds
    disabled: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    budgets: Budgets = NO_BUDGETS  # spend caps per day, week, month
    default_model: str | None = None  # for requests without "model" (null: server.default_model)
    NUMBER_OK = ("expires_at",)


@dataclass(frozen=True)
class KeyPatch:
    name: str | None = None
    models: list[str] | None = None
    limits: Limits | None = None
    expires_at: str | None = None
    disabled: bool | None = None
    metadata: dict[str, Any] | None = None
    budgets: Budgets | None = None
    default_model: str | None = None
    NUMBER_OK = ("expires_at",)


@dataclass(frozen=True)
class AccountCreate:
    id: str
    credits: float | None = 0.0  # opening balance; null: unmetered
    budgets: Budgets = NO_BUDGETS
    limits: Limits = field(default_factory=Limits)
    refill: Refill | None = None
    suspended: bool = False


@dataclass(frozen=True)
class AccountPatch:
    budgets: Budgets | None = None
    limits: Limits | None = None
    refill: Refill | None = None
    suspended: bool | None = None


@dataclass(frozen=True)
class TopUp:
    amount: float  # USD, > 0


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100 or any(ord(c) < 32 for c in name):
        raise SpecError("name: must be 1-100 printable characters")
    return name


def check_models(models: list[str] | None, known) -> list[str] | None:
    if models is None:
        return None
    for i, m in enumerate(models):
        if m not in known:
            raise SpecError(f"models[{i}]: unknown model {m!r}{suggest(m, known)}")
    return list(dict.fromkeys(models))


def check_default_model(model: str | None, known) -> str | None:
    if model is not None and model not in known:
        raise SpecError(f"default_model: unknown model {model!r}{suggest(model, known)}")
    return model


def check_limits(limits: Limits, known) -> Limits:
    for path, problem in limits.problems():
        raise SpecError(f"{path}: {problem}")
    for m in limits.models:
        if m not in known:
            raise SpecError(f"limits.models.{m}: unknown model{suggest(m, known)}")
    return limits


def check_budgets(budgets: Budgets) -> Budgets:
    for path, problem in budgets.problems():
        raise SpecError(f"{path}: {problem}")
    return budgets


def check_account_limits(limits: Limits) -> Limits:
    for path, problem in limits.problems():
        raise SpecError(f"{path}: {problem}")
    if limits.concurrency is not None or limits.models:
        raise SpecError("limits: an account shares rpm, tpm and rpd; set concurrency and per-model limits "
                        "on its keys")
    return limits


def check_refill(refill: Refill | None) -> Refill | None:
    if refill is not None:
        credits_micro(refill.amount, "refill.amount", positive=True)
    return refill


def account_policy(spec: AccountCreate | AccountPatch, present: dict[str, Any] | None = None,
                   old: AccountPolicy | None = None) -> AccountPolicy:
    """The checked policy of a new account, or ``old`` with the fields the body had."""
    policy = old or AccountPolicy()
    changes: dict[str, Any] = {}
    for name in ("budgets", "limits", "refill", "suspended"):
        if present is not None and name not in present:
            continue
        value = getattr(spec, name)
        if value is None and name != "refill":
            raise SpecError(f"{name}: must not be null")
        if name == "budgets":
            value = check_budgets(value)
        elif name == "limits":
            value = check_account_limits(value)
        elif name == "refill":
            value = check_refill(value)
        changes[name] = value
    return replace(policy, **changes)


def check_expiry(value: str | None) -> float | None:
    try:
        ts = parse_time(value, "expires_at")
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if ts is not None and ts <= time.time():
        raise SpecError("expires_at: is in the past")
    return ts


def credits_micro(amount: float | None, where: str, *, positive: bool = False) -> int | None:
    if amount is None:
        return None
    if amount < 0 or (positive and amount == 0):
        raise SpecError(f"{where}: must be {'greater than 0' if positive else 'at least 0'}, got {amount:g}")
    if amount > MAX_CREDITS_USD:
        raise SpecError(f"{where}: at most {MAX_CREDITS_USD} USD at a time")
    try:
        return usd_to_micro(amount, where)
    except MoneyError as exc:
        raise SpecError(str(exc)) from None


def create_args(spec: KeyCreate, known_models) -> dict[str, Any]:
    """Checked keyword arguments for ``Accounts.create_key``."""
    if spec.account is not None and not NAME_RE.match(spec.account):
        raise SpecError("account: use 1-64 letters, digits, '_', '.' or '-'")
    return {"name": check_name(spec.name), "credits": credits_micro(spec.credits, "credits"),
            "account": spec.account, "models": check_models(spec.models, known_models),
            "limits": check_limits(spec.limits, known_models), "expires_at": check_expiry(spec.expires_at),
            "disabled": spec.disabled, "metadata": spec.metadata, "budgets": check_budgets(spec.budgets),
            "default_model": check_default_model(spec.default_model, known_models)}


def patch_changes(spec: KeyPatch, present: dict[str, Any], known_models) -> dict[str, Any]:
    """Checked changes for ``Accounts.update_key``: only the fields the body had."""
    if "credits" in present:
        raise SpecError("credits: add credits with POST /admin/keys/{id}/credits")
    changes: dict[str, Any] = {}
    for name in PATCHABLE:
        if name not in present:
            continue
        value = getattr(spec, name)
        if value is None and name in ("name", "limits", "disabled", "metadata", "budgets"):
            raise SpecError(f"{name}: must not be null")
        if name == "name":
            value = check_name(value)
        elif name == "models":
            value = check_models(value, known_models)
        elif name == "limits":
            value = check_limits(value, known_models)
        elif name == "expires_at":
            value = check_expiry(value)
        elif name == "budgets":
            value = check_budgets(value)
        elif name == "default_model":
            value = check_default_model(value, known_models)
        changes[name] = value
    return changes

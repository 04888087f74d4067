"""How keys, accounts and usage look in the APIs (JSON) and the CLI (tables)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .model import Account, KeyRecord
from .money import format_usd, micro_to_usd
from .options import iso


def account_view(acc: Account, currency: str = "USD") -> dict[str, Any]:
    """An account in JSON: amounts in ``currency`` units and micro-units (the
    ``*_micro_usd`` names hold micro-units of the billing currency)."""
    return {"id": acc.id, "balance": micro_to_usd(acc.balance), "reserved": micro_to_usd(acc.reserved),
            "available": micro_to_usd(acc.available), "spent": micro_to_usd(acc.spent),
            "balance_micro_usd": acc.balance, "reserved_micro_usd": acc.reserved, "spent_micro_usd": acc.spent,
            "unlimited": acc.unlimited, "currency": currency}


def key_view(k: KeyRecord, acc: Account, now: float | None = None, currency: str = "USD") -> dict[str, Any]:
    return {"id": k.id, "object": "api_key", "name": k.name, "prefix": k.prefix,
            "status": k.status(time.time() if now is None else now), "source": k.source,
            "models": None if k.models is None else sorted(k.models), "limits": k.limits.to_dict(),
            "expires_at": iso(k.expires_at), "disabled": k.disabled, "metadata": k.metadata,
            "created_at": iso(k.created_at), "revoked_at": iso(k.revoked_at), "budgets": k.budgets.to_dict(),
            "default_model": k.default_model, "account": account_view(acc, currency)}


def usage_view(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "cost": micro_to_usd(row["cost_micro_usd"])}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table a person can read."""
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def usd(micro: int) -> str:
    return "$" + format_usd(micro)

"""What the alerts plugin looks for itself, every ``check_seconds`` (never on a request's path):
accounts whose spendable balance fell below ``balance_below``, keys that expire
within ``key_expiring_days``, and budgets (of keys and accounts) at 50, 80 and 100 %
of their cap in the current period.

Each event's key makes it one event however often it is seen: a low balance is
one event until the account is topped up (its key holds the total ever granted,
balance + spent, which only a top-up changes), a key's expiry one event per
expiry time, a budget's share once per period. So a restart, or a second worker,
finds the same events and the outbox delivers each once.

Budgets are looked at as the whole fleet spent them (``read_budgets``: with shared
counters, each instance otherwise knows a total only as its own requests' last replies
said it, and one whose requests crossed a share may stop before its next look): each
instance that sees a share reached makes the same event, which the outbox delivers once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

from proxy import Event

from ..accounts import Accounts
from ..accounts.money import MICRO, format_usd
from .options import AlertsOptions

BUDGET_SHARES = (100, 80, 50)  # percent of a budget's cap, the highest reached first
READ_CHUNK = 1000  # keys (and accounts) whose budget totals are read from the counters in one call


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def low_balances(accounts: Accounts, threshold_usd: float) -> Iterator[Event]:
    threshold = round(threshold_usd * MICRO)
    keys_of: dict[str, list[str]] = {}
    for key in accounts.by_id.values():
        keys_of.setdefault(key.account_id, []).append(key.name)
    for acc in accounts.accounts.values():
        if acc.unlimited or acc.available >= threshold:
            continue
        yield Event("balance_low", {
            "account": acc.id, "keys": sorted(keys_of.get(acc.id, [])), "balance_usd": format_usd(acc.available),
            "balance_micro_usd": acc.available, "threshold_usd": format_usd(threshold)},
            key=f"{acc.id}:{acc.balance + acc.spent}")


def expiring_keys(accounts: Accounts, days: float, now: float) -> Iterator[Event]:
    horizon = now + days * 86400
    for key in accounts.by_id.values():
        expires = key.expires_at
        if expires is None or key.revoked_at is not None or key.disabled or not now < expires <= horizon:
            continue
        yield Event("key_expiring", {"key_id": key.id, "name": key.name, "prefix": key.prefix,
                                     "account": key.account_id, "expires_at": iso(expires),
                                     "days_left": round((expires - now) / 86400, 2)},
                    key=f"{key.id}:{expires}")


async def read_budgets(accounts: Accounts) -> None:
    """Bring the totals ``budget_events`` reads up to what the fleet spent (shared counters;
    nothing to do in memory). Counters down: the totals as this instance last saw them."""
    keeper = accounts.budgets
    if keeper is None or keeper.counters.kind != "redis":
        return
    keys = [key for key in accounts.by_id.values() if key.budgets.caps and key.revoked_at is None]
    accs = [acc for acc in accounts.accounts.values() if acc.policy.budgets.caps]
    for i in range(0, max(len(keys), len(accs)), READ_CHUNK):
        await keeper.read(keys=keys[i:i + READ_CHUNK], accounts=accs[i:i + READ_CHUNK])


def budget_events(accounts: Accounts, now: float) -> Iterator[Event]:
    """``budget`` at 50, 80 and 100 % of a key's or an account's cap in its current period:
    the highest share reached, once per share and period (money held by requests in flight
    counts as spent, as it does when a budget refuses)."""
    keeper = accounts.budgets
    if keeper is None:
        return
    currency = accounts.currency
    for key in accounts.by_id.values():
        if key.budgets.caps and key.revoked_at is None:
            for status in keeper.status(key, now):
                if status["scope"] == "key":
                    yield from _crossed(status, "key", key.id, key.name, currency)
    for acc in accounts.accounts.values():
        if acc.policy.budgets.caps:
            for status in keeper.account_status(acc, now):
                yield from _crossed(status, "account", acc.id, acc.id, currency)


def _crossed(status: dict, scope: str, owner: str, name: str, currency: str) -> Iterator[Event]:
    cap, spent = status["limit_micro_usd"], status["spent_micro_usd"]
    for percent in BUDGET_SHARES:
        if cap > 0 and spent * 100 >= cap * percent:
            yield Event("budget", {
                "scope": scope, "id": owner, "name": name, "period": status["period"], "percent": percent,
                "spent": format_usd(spent), "limit": format_usd(cap), "currency": currency,
                "resets_at": iso(status["resets_at"])},
                key=f"{scope}:{owner}:{status['period']}:{status['period_start']}:{percent}")
            return


def look(accounts: Accounts, options: AlertsOptions) -> list[Event]:
    events: list[Event] = list(budget_events(accounts, time.time()))
    if options.balance_below is not None:
        events.extend(low_balances(accounts, options.balance_below))
    if options.key_expiring_days is not None:
        events.extend(expiring_keys(accounts, options.key_expiring_days, time.time()))
    return events

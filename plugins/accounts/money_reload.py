"""What a config reload changes in the money plugin (quotas): ``billing:``, ``accounts:``
and ``plugins.quotas``, prepared before the swap and applied in one step with it.

- ``billing.usd_rate``: the prices (a request in flight keeps the ones it was admitted with);
- ``billing.billing_url``: the "Top up at ..." of the next 402;
- ``billing.timezone``: where budget and refill periods begin, from the next request on
  (each scope's spend in its new current periods is read from the ledger again);
- ``accounts:``: the YAML accounts' budgets, limits, refills and suspension are written
  to the store and take effect for the next request (a new account opens with its
  ``credits``; an account's balance is never reset by a reload);
- ``billing.currency``: refused, as at start-up: balances and the ledger are stored in
  the currency they were made in, and a change would reinterpret every amount.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.schema import RestartRequired

from .money import PriceBook
from .options import BillingOptions, QuotasOptions
from .periods import Calendar, zone

if TYPE_CHECKING:
    from .book import Accounts
    from .budgets import BudgetKeeper
    from .refills import Refills

__all__ = ["MoneyReload", "prepare_money_reload", "top_up_text"]


def top_up_text(billing: BillingOptions) -> str:
    """What 402 messages end with: where to top up (``billing.billing_url``)."""
    return f". Top up at {billing.billing_url}" if billing.billing_url else ""


@dataclass(frozen=True)
class MoneyReload:
    """The quotas plugin's state from a new config, built before the swap."""

    prices: PriceBook
    default_cap: int
    top_up: str
    calendar: Calendar | None  # a new billing.timezone's calendar; None: unchanged
    accounts_changed: bool  # the YAML accounts: section differs

    def apply(self, plugin: Any, book: Accounts | None, budgets: BudgetKeeper | None,
              refills: Refills | None) -> Callable[[], Any] | None:
        """Swap the plugin's state (no await: in the reload's one step); the follow-up that
        writes the YAML accounts to the store and re-reads the periods' spend, if needed."""
        plugin.prices, plugin.default_cap, plugin.top_up = self.prices, self.default_cap, self.top_up
        if self.calendar is not None:
            for keeper in (budgets, refills):
                if keeper is not None:
                    keeper.calendar = self.calendar
        if book is None or not (self.accounts_changed or self.calendar is not None):
            return None
        return self._follow_up(book)

    async def _follow_up(self, book: Accounts) -> None:
        if self.accounts_changed:
            await book.sync_config_accounts()
            await book.reload()  # (reload notices changed budgets and refills and re-reads their spend)
        if self.calendar is not None:
            await book.policy_changed()  # new periods: their spend so far, and a refill now due


def prepare_money_reload(old_config, new_config) -> MoneyReload:
    """Check and build what the new config changes; ``RestartRequired`` for a currency change."""
    old = old_config.section("billing") or BillingOptions()
    new = new_config.section("billing") or BillingOptions()
    if new.currency != old.currency:
        raise RestartRequired(f"billing.currency: balances and the ledger are stored in {old.currency}; changing "
                              f"it to {new.currency} would reinterpret every amount, so it is refused here as at "
                              "start-up (convert the stored amounts first; nothing was reloaded, the running config "
                              "stays)")
    quotas = new_config.section("plugins.quotas") or QuotasOptions()
    return MoneyReload(prices=PriceBook(new_config.models, new.usd_rate), default_cap=quotas.default_max_tokens,
                       top_up=top_up_text(new),
                       calendar=Calendar(zone(new.timezone)) if new.timezone != old.timezone else None,
                       accounts_changed=old_config.section("accounts") != new_config.section("accounts"))

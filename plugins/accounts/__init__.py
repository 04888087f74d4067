"""The accounts book shared by the business plugins (auth, ratelimit, quotas,
ledger): keys, credit accounts, the write-behind writer, the admin API and the
CLI commands.

The book is one gateway service, ``ACCOUNTS``: the first plugin that asks for
it (``await gateway.services.open(ACCOUNTS)`` in its ``tollway_startup``)
opens it, which loads keys and balances from the store and starts the writer;
the gateway closes it after every plugin's ``tollway_shutdown`` has run, which
flushes what is queued and stops the writer. Plugins only use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy import ServiceKey

from .book import Accounts
from .model import Account, KeyRecord, Limits, ModelLimits

if TYPE_CHECKING:
    from proxy import Gateway

__all__ = ["ACCOUNTS", "Account", "Accounts", "KeyRecord", "Limits", "ModelLimits"]


async def open_accounts(gateway: Gateway) -> Accounts:
    """The gateway's accounts book, loaded, with its writer started."""
    accounts = Accounts(gateway)
    await accounts.open()
    return accounts


ACCOUNTS: ServiceKey[Accounts] = ServiceKey("accounts", open_accounts)

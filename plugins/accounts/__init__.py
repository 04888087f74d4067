"""The accounts book shared by the business plugins (auth, ratelimit, quotas,
pricing, ledger): keys, credit accounts, the write-behind writer, the admin
API and the CLI commands.

One ``Accounts`` instance per gateway lives in ``gateway.services["accounts"]``.
Each plugin that needs it calls ``await acquire(gateway, name)`` in its
``tollway_startup`` and ``await release(gateway, name)`` in its
``tollway_shutdown``; the first acquire loads the book from the store and
starts the writer, the last release flushes and stops it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .book import Accounts
from .model import Account, KeyRecord, Limits, ModelLimits

if TYPE_CHECKING:
    from proxy.gateway import Gateway

__all__ = ["Account", "Accounts", "KeyRecord", "Limits", "ModelLimits", "acquire", "release", "SERVICE"]

SERVICE = "accounts"


async def acquire(gateway: Gateway, user: str) -> Accounts:
    """The gateway's accounts book, loaded (and its writer started) on first use."""
    accounts = gateway.services.get(SERVICE)
    if accounts is None:
        accounts = Accounts(gateway)
        gateway.services[SERVICE] = accounts
        try:
            await accounts.open()
        except BaseException:
            gateway.services.pop(SERVICE, None)
            raise
    accounts.users.add(user)
    return accounts


async def release(gateway: Gateway, user: str) -> None:
    """Flush what ``user`` left behind; the last user stops the writer."""
    accounts = gateway.services.get(SERVICE)
    if accounts is None:
        return
    accounts.users.discard(user)
    if accounts.users:
        await accounts.writer.flush()
    else:
        gateway.services.pop(SERVICE, None)
        await accounts.close()

"""Credit accounts: the operations the admin API (``admin_accounts.py``) and the CLI
(``tollway accounts``, ``accounts_cli.py``) share, so both check and change the same way.

Each takes what the admin API receives (a JSON body as a dict) and raises one
exception per kind of answer: ``SpecError`` (a field is wrong: 400, exit 2),
``AccountNotFound`` (404, exit 1), ``ConfigAccount`` (defined in the YAML, changed
there: 409, exit 1), ``AccountExists`` (409, exit 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy import ProxyError

from .book_changes import AccountExists
from .http import build_body
from .options import NAME_RE
from .specs import AccountCreate, AccountPatch, SpecError, TopUp, account_policy, credits_micro
from .views import account_view

if TYPE_CHECKING:
    from .book import Accounts
    from .model import Account

__all__ = ["AccountExists", "AccountNotFound", "ConfigAccount", "account_document", "change_account",
           "create_account", "find_account", "top_up_account"]


class AccountNotFound(LookupError):
    pass


class ConfigAccount(PermissionError):
    """The account is in the YAML ``accounts:`` section: it is changed there."""


def find_account(book: Accounts, aid: str, *, writable: bool = False) -> Account:
    acc = book.accounts.get(aid)
    if acc is None:
        raise AccountNotFound(f"no account with id {aid!r}")
    if writable and acc.source == "config":
        raise ConfigAccount(f"account {aid!r} is defined in the config file's accounts: section; change it there")
    return acc


def account_document(book: Accounts, acc: Account) -> dict[str, Any]:
    """An account as the admin API shows it (and ``tollway accounts show --json``)."""
    keys = sorted(k.id for k in book.by_id.values() if k.account_id == acc.id)
    budgets = book.budgets.account_status(acc) if book.budgets is not None else []
    return {"object": "account", **account_view(acc, book.currency), **acc.policy.to_dict(), "source": acc.source,
            "suspended": acc.policy.suspended, "keys": keys, "budget_status": budgets}


def _spec(cls: type, body: dict) -> Any:
    try:
        return build_body(cls, body)
    except ProxyError as exc:
        raise SpecError(exc.message) from None


async def create_account(book: Accounts, body: dict) -> Account:
    """``POST /admin/accounts``: ``id``, ``credits``, ``budgets``, ``limits``, ``refill``, ``suspended``."""
    spec = _spec(AccountCreate, body)
    if not NAME_RE.match(spec.id):
        raise SpecError("id: use 1-64 letters, digits, '_', '.' or '-'")
    credits = credits_micro(spec.credits, "credits")
    policy = account_policy(spec)
    return await book.create_account(spec.id, credits=credits, policy=policy)


async def change_account(book: Accounts, aid: str, body: dict) -> Account:
    """``PATCH /admin/accounts/{id}``: only the fields the body has (``budgets``, ``limits``,
    ``refill``, ``suspended``); credits are added with ``top_up_account``."""
    acc = find_account(book, aid, writable=True)
    if "credits" in body:
        raise SpecError("credits: add credits with POST /admin/accounts/{id}/credits (tollway accounts topup)")
    policy = account_policy(_spec(AccountPatch, body), body, acc.policy)
    if policy != acc.policy:
        acc = await book.set_policy(acc.id, policy)
    return acc


async def top_up_account(book: Accounts, aid: str, body: dict) -> tuple[Account, int]:
    """``POST /admin/accounts/{id}/credits`` (``amount`` USD): the account and the micro-units added.
    Accounts from the YAML may be topped up too."""
    acc = find_account(book, aid)
    micro = credits_micro(_spec(TopUp, body).amount, "amount", positive=True)
    return await book.add_credits(acc.id, micro), micro

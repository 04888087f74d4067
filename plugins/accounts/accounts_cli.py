"""``tollway accounts list|show|create|topup|suspend|resume|budget|limits|refill``.

The admin API's ``/admin/accounts`` from a shell: each command builds the body the
admin API would receive and runs the same operation (``account_ops.py``), on the
store named by ``--config``. A server running on that store polls its version and
follows within ``plugins.auth.poll_ms``. Exit codes: 0 done, 1 no such account or
not changeable here (an account from the YAML), 2 a bad argument (the message names it).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import orjson

from .account_ops import (
    AccountExists,
    AccountNotFound,
    ConfigAccount,
    account_document,
    change_account,
    create_account,
    find_account,
    top_up_account,
)
from .cli import book_command
from .model import PERIODS
from .money import format_usd
from .specs import SpecError
from .views import table

if TYPE_CHECKING:
    from .book import Accounts
    from .model import Account

__all__ = ["add_accounts_command"]

LIMITS = ("rpm", "tpm", "rpd")
UNSET = "none"  # a value that removes a budget or a limit


def amount(text: str) -> float | None:
    """An amount in the account's currency, or ``none``; range checks are the shared ones."""
    if text.strip().lower() == UNSET:
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an amount: {text!r} (e.g. 10 or 2.50, or 'none')") from None


def whole(text: str) -> int | None:
    if text.strip().lower() == UNSET:
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r} (or 'none')") from None


def add_accounts_command(subparsers: argparse._SubParsersAction) -> None:
    from proxy.cli import add_config_arg

    accounts = subparsers.add_parser("accounts", help="credit accounts shared by keys: credits, budgets, limits")
    sub = accounts.add_subparsers(dest="accounts_command", metavar="ACTION", required=True)

    def action(name: str, helptext: str, fn, with_id: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext)
        add_config_arg(p)
        if with_id:
            p.add_argument("account", help="the account's id")
        p.set_defaults(func=book_command(fn))
        return p

    action("list", "list accounts with their balances", cmd_list, with_id=False)
    action("show", "show one account", cmd_show).add_argument("--json", action="store_true",
                                                              help="as the admin API answers")
    create = action("create", "make an account", cmd_create)
    create.add_argument("--credits", type=amount, default=0.0, help="opening balance (default 0)")
    create.add_argument("--unlimited", action="store_true", help="no credit limit (spend is still recorded)")
    create.add_argument("--suspended", action="store_true", help="made suspended (every request answered 402)")
    _budget_args(create)
    _limit_args(create)
    _refill_args(create)
    topup = action("topup", "add credits", cmd_topup)
    topup.add_argument("amount", type=amount, help="how much to add, in the account's currency")
    action("suspend", "answer every request of its keys 402 account_suspended", cmd_suspend)
    action("resume", "lift a suspension", cmd_resume)
    _budget_args(action("budget", "set spend caps per period (others kept; 'none' removes one)", cmd_budget))
    _limit_args(action("limits", "set the rate limits its keys share (others kept; 'none' removes one)",
                       cmd_limits))
    refill = action("refill", "set or remove the periodic grant of credits", cmd_refill)
    _refill_args(refill)
    refill.add_argument("--remove", action="store_true", help="no refill any more")


def _budget_args(p: argparse.ArgumentParser) -> None:
    for period in PERIODS:
        p.add_argument(f"--{period}", type=amount, default=argparse.SUPPRESS, metavar="AMOUNT",
                       help=f"{period} spend cap in the account's currency, or none")


def _limit_args(p: argparse.ArgumentParser) -> None:
    for name in LIMITS:
        p.add_argument(f"--{name}", type=whole, default=argparse.SUPPRESS, metavar="N",
                       help=f"{name} shared by the account's keys, or none")


def _refill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refill-every", choices=("day", "week", "month"), help="grant credits every ...")
    p.add_argument("--refill-amount", type=amount, metavar="AMOUNT", help="... this much")
    p.add_argument("--rollover", action="store_true", help="add to what is left (default: top up to the amount)")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if hasattr(args, n)}


def _refill(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.refill_every is None and args.refill_amount is None:
        return None
    if args.refill_every is None or args.refill_amount is None:
        raise SpecError("refill: give both --refill-every and --refill-amount")
    return {"every": args.refill_every, "amount": args.refill_amount, "rollover": args.rollover}


async def _run(command: str, step) -> int:
    """Run an account operation; print what went wrong as one line, with the exit code."""
    try:
        return await step()
    except SpecError as exc:
        print(f"tollway accounts {command}: {exc}", file=sys.stderr)
        return 2
    except (AccountNotFound, ConfigAccount) as exc:
        hint = " (tollway accounts list shows them)" if isinstance(exc, AccountNotFound) else ""
        print(f"tollway accounts {command}: {exc}{hint}", file=sys.stderr)
        return 1
    except AccountExists as exc:
        print(f"tollway accounts {command}: account {exc.args[0]!r} exists already", file=sys.stderr)
        return 1


def _money(book: Accounts, micro: int) -> str:
    return f"{format_usd(micro)} {book.currency}"


def _details(book: Accounts, acc: Account) -> str:
    doc = account_document(book, acc)
    policy = acc.policy
    rows = [("id", acc.id), ("source", acc.source), ("status", "suspended" if policy.suspended else "active"),
            ("balance", "unlimited" if acc.unlimited else _money(book, acc.balance)),
            ("reserved", _money(book, acc.reserved)), ("spent", _money(book, acc.spent)),
            ("budgets", ", ".join(f"{p} {v:g}" for p, v in policy.budgets.to_dict().items()) or "none"),
            ("limits", ", ".join(f"{k} {v}" for k, v in policy.limits.to_dict().items()) or "none"),
            ("refill", "none" if policy.refill is None else
             f"{policy.refill.amount:g} every {policy.refill.every}"
             f"{' (rollover)' if policy.refill.rollover else ''}"),
            ("keys", ", ".join(doc["keys"]) or "none")]
    for status in doc["budget_status"]:
        rows.append((f"{status['period']} spend", f"{_money(book, status['spent_micro_usd'])} of "
                     f"{_money(book, status['limit_micro_usd'])}, resets {status['resets_at_local']}"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


async def cmd_list(book: Accounts, args: argparse.Namespace) -> int:
    rows = [(a.id, a.source, "suspended" if a.policy.suspended else "active",
             "unlimited" if a.unlimited else format_usd(a.balance), format_usd(a.spent),
             ", ".join(f"{p} {v:g}" for p, v in a.policy.budgets.to_dict().items()) or "-",
             sum(1 for k in book.by_id.values() if k.account_id == a.id))
            for a in sorted(book.accounts.values(), key=lambda a: a.id)]
    if not rows:
        print("no accounts yet: tollway accounts create ID --credits AMOUNT")
        return 0
    print(table(("ID", "SOURCE", "STATUS", f"BALANCE ({book.currency})", "SPENT", "BUDGETS", "KEYS"), rows))
    return 0


async def cmd_show(book: Accounts, args: argparse.Namespace) -> int:
    async def step() -> int:
        acc = find_account(book, args.account)
        print(orjson.dumps(account_document(book, acc), option=orjson.OPT_INDENT_2).decode() if args.json
              else _details(book, acc))
        return 0

    return await _run("show", step)


async def cmd_create(book: Accounts, args: argparse.Namespace) -> int:
    async def step() -> int:
        body: dict[str, Any] = {"id": args.account, "credits": None if args.unlimited else args.credits,
                                "suspended": args.suspended}
        if budgets := _given(args, PERIODS):
            body["budgets"] = budgets
        if limits := _given(args, LIMITS):
            body["limits"] = limits
        if (refill := _refill(args)) is not None:
            body["refill"] = refill
        print(_details(book, await create_account(book, body)))
        return 0

    return await _run("create", step)


async def cmd_topup(book: Accounts, args: argparse.Namespace) -> int:
    async def step() -> int:
        acc, micro = await top_up_account(book, args.account, {"amount": args.amount})
        print(f"added {_money(book, micro)} to account {acc.id}: balance {_money(book, acc.balance)}")
        return 0

    return await _run("topup", step)


async def _change(book: Accounts, args: argparse.Namespace, command: str, body: dict[str, Any]) -> int:
    async def step() -> int:
        print(_details(book, await change_account(book, args.account, body)))
        return 0

    return await _run(command, step)


async def cmd_suspend(book: Accounts, args: argparse.Namespace) -> int:
    return await _change(book, args, "suspend", {"suspended": True})


async def cmd_resume(book: Accounts, args: argparse.Namespace) -> int:
    return await _change(book, args, "resume", {"suspended": False})


async def cmd_budget(book: Accounts, args: argparse.Namespace) -> int:
    given = _given(args, PERIODS)
    if not given:
        print("tollway accounts budget: give at least one of --daily, --weekly, --monthly", file=sys.stderr)
        return 2
    acc = book.accounts.get(args.account)
    merged = {**(acc.policy.budgets.to_dict() if acc is not None else {}), **given}
    return await _change(book, args, "budget", {"budgets": {p: v for p, v in merged.items() if v is not None}})


async def cmd_limits(book: Accounts, args: argparse.Namespace) -> int:
    given = _given(args, LIMITS)
    if not given:
        print("tollway accounts limits: give at least one of --rpm, --tpm, --rpd", file=sys.stderr)
        return 2
    acc = book.accounts.get(args.account)
    merged = {**(acc.policy.limits.to_dict() if acc is not None else {}), **given}
    return await _change(book, args, "limits", {"limits": {k: v for k, v in merged.items() if v is not None}})


async def cmd_refill(book: Accounts, args: argparse.Namespace) -> int:
    if args.remove:
        return await _change(book, args, "refill", {"refill": None})
    try:
        refill = _refill(args)
    except SpecError as exc:
        print(f"tollway accounts refill: {exc}", file=sys.stderr)
        return 2
    if refill is None:
        print("tollway accounts refill: give --refill-every and --refill-amount, or --remove", file=sys.stderr)
        return 2
    return await _change(book, args, "refill", {"refill": refill})

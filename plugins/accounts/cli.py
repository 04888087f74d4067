"""``tollway keys create|list|show|update|revoke|topup`` and ``tollway usage``.

They work on the store named by the config (``--config``), through the same
accounts book the server uses: every change is written through at once and
bumps the store's version counter, which a server running on the same store
polls (``plugins.auth.poll_ms``, default 1 s) and then reloads keys and
balances. So a key created, revoked or topped up from the CLI takes effect in
the running server within a second, and no balance change is lost.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from proxy.cli import positive_int

from . import ACCOUNTS
from .model import Limits
from .options import iso
from .specs import KeyCreate, KeyPatch, SpecError, create_args, credits_micro, patch_changes
from .usage import rollups
from .views import table, usd

if TYPE_CHECKING:
    from proxy import Gateway

    from .book import Accounts
    from .model import KeyRecord


def add_keys_command(subparsers: argparse._SubParsersAction) -> None:
    from proxy.cli import add_config_arg

    keys = subparsers.add_parser("keys", help="manage API keys and their credits")
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    create = sub.add_parser("create", help="make a key (it is printed once)")
    add_config_arg(create)
    create.add_argument("--name", required=True)
    create.add_argument("--credits", type=usd_amount, default=0.0, help="opening credit in USD (default 0)")
    create.add_argument("--unlimited", action="store_true", help="no credit limit (spend is still recorded)")
    create.add_argument("--account", help="share this credit account (made if new)")
    create.add_argument("--models", type=name_list, help="comma-separated allowlist (default: every model)")
    for name in ("rpm", "tpm", "rpd", "concurrency"):
        create.add_argument(f"--{name}", type=positive_int)
    create.add_argument("--expires", help="expiry, ISO 8601 (e.g. 2030-01-31T00:00:00Z)")
    create.add_argument("--default-model",
                        help="the model of its requests that name none (before server.default_model)")
    create.set_defaults(func=book_command(cmd_create))

    listing = sub.add_parser("list", help="list keys with their balances")
    add_config_arg(listing)
    listing.set_defaults(func=book_command(cmd_list))

    update = sub.add_parser("update", help="change a key made by the API or the CLI")
    add_config_arg(update)
    update.add_argument("key", help="key id (or its name, when unique)")
    default = update.add_mutually_exclusive_group(required=True)
    default.add_argument("--default-model", metavar="MODEL",
                         help="the model of its requests that name none (before server.default_model)")
    default.add_argument("--no-default-model", action="store_true",
                         help="clear it: its requests without a model use server.default_model")
    update.set_defaults(func=book_command(cmd_update))

    for action, helptext, fn in (("show", "show one key", cmd_show), ("revoke", "revoke a key now", cmd_revoke)):
        p = sub.add_parser(action, help=helptext)
        add_config_arg(p)
        p.add_argument("key", help="key id (or its name, when unique)")
        p.set_defaults(func=book_command(fn))

    topup = sub.add_parser("topup", help="add credits to a key's account")
    add_config_arg(topup)
    topup.add_argument("key", help="key id (or its name, when unique)")
    topup.add_argument("amount", type=positive_usd, help="USD to add")
    topup.set_defaults(func=book_command(cmd_topup))


def add_usage_command(subparsers: argparse._SubParsersAction) -> None:
    from proxy.cli import add_config_arg

    usage = subparsers.add_parser("usage", help="usage per day, key and model, from the ledger")
    add_config_arg(usage)
    usage.add_argument("--key", help="only this key (id or name)")
    usage.add_argument("--model", help="only this model")
    usage.add_argument("--since", type=day_arg, help="first day, YYYY-MM-DD")
    usage.add_argument("--until", type=day_arg, help="last day, YYYY-MM-DD")
    usage.set_defaults(func=book_command(cmd_usage))


def add_rollups_command(subparsers: argparse._SubParsersAction) -> None:
    from proxy.cli import add_config_arg

    rollups_cmd = subparsers.add_parser("rollups", help="the hourly and daily usage rollups charts read")
    sub = rollups_cmd.add_subparsers(dest="rollups_command", metavar="ACTION", required=True)
    rebuild = sub.add_parser("rebuild", help="recompute them from the ledger (safe while a server runs)")
    add_config_arg(rebuild)
    rebuild.set_defaults(func=book_command(cmd_rollups_rebuild))


# -- argument types (argparse turns their errors into a clean usage message) ----------

def usd_amount(text: str) -> float:
    try:
        value = float(text)
        credits_micro(value, "amount")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc) if isinstance(exc, SpecError)
                                         else f"not an amount in USD: {text!r}") from None
    return value


def positive_usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return usd_amount(text)


def name_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated model names")
    return names


def day_arg(text: str) -> str:
    from datetime import date

    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day like 2025-01-31, got {text!r}") from None


# -- commands -------------------------------------------------------------------------

def book_command(fn):
    """A CLI command on the accounts book: ``async fn(accounts, args) -> int``,
    run with the config's gateway started (no server)."""
    from proxy.cli import gateway_command

    async def run(gw: Gateway, args: argparse.Namespace) -> int:
        accounts = gw.services.get(ACCOUNTS)
        if accounts is None:
            print("tollway: the auth plugin is not enabled in this config (plugins.enabled), so it has no keys",
                  file=sys.stderr)
            return 2
        return await fn(accounts, args)

    return gateway_command(run)


def _find(accounts: Accounts, ref: str) -> KeyRecord | None:
    """A key by id, or by name (a live key first, else a revoked one)."""
    record = accounts.by_id.get(ref)
    if record is None:
        named = [k for k in accounts.by_id.values() if k.name == ref]
        live = [k for k in named if k.revoked_at is None]
        candidates = live or named
        if len(candidates) > 1:
            print(f"tollway: {len(candidates)} keys are named {ref!r}; give the id", file=sys.stderr)
            return None
        record = candidates[0] if candidates else None
    if record is None:
        print(f"tollway: no key with id or name {ref!r} (tollway keys list shows them)", file=sys.stderr)
    return record


def _key_to_change(accounts: Accounts, ref: str, *, in_config: str | None = None,
                   revoked_too: bool = False) -> KeyRecord | None:
    """The key ``ref`` names (``_find``), or None once it is said why it cannot be changed: one of
    the YAML's keys (``in_config``: what to do there instead; None: they can be), revoked (unless
    ``revoked_too``)."""
    record = _find(accounts, ref)
    if record is None:
        return None
    if in_config is not None and record.source == "config":
        print(f"tollway: {record.id} is defined in the config file's keys: list; {in_config}", file=sys.stderr)
        return None
    if not revoked_too and record.revoked_at is not None:
        print(f"tollway: {record.id} has been revoked", file=sys.stderr)
        return None
    return record


def _details(accounts: Accounts, k: KeyRecord) -> str:
    acc = accounts.account_of(k)
    rows = [("id", k.id), ("name", k.name), ("prefix", k.prefix + "..."), ("status", k.status(time.time())),
            ("source", k.source), ("account", acc.id),
            ("balance", "unlimited" if acc.unlimited else usd(acc.balance)), ("spent", usd(acc.spent)),
            ("models", "all" if k.models is None else ", ".join(sorted(k.models))),
            ("limits", _limits(k.limits)), ("expires", iso(k.expires_at) or "never"),
            ("default", k.default_model or "none (server.default_model)"),  # for its requests that name none
            ("created", iso(k.created_at))]
    if k.revoked_at is not None:
        rows.append(("revoked", iso(k.revoked_at)))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def _limits(limits: Limits) -> str:
    d = limits.to_dict()
    d.pop("models", None)
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"


async def cmd_create(accounts: Accounts, args: argparse.Namespace) -> int:
    limits = Limits(rpm=args.rpm, tpm=args.tpm, rpd=args.rpd, concurrency=args.concurrency)
    spec = KeyCreate(name=args.name, credits=None if args.unlimited else args.credits, account=args.account,
                     models=args.models, limits=limits, expires_at=args.expires, default_model=args.default_model)
    try:
        kwargs = create_args(spec, accounts.config.models)
    except SpecError as exc:
        print(f"tollway keys create: {exc}", file=sys.stderr)
        return 2
    record, plain = await accounts.create_key(**kwargs)
    print(_details(accounts, record))
    print(f"\nkey: {plain}\n(shown once: store it now; only its hash is kept)")
    return 0


async def cmd_list(accounts: Accounts, args: argparse.Namespace) -> int:
    now = time.time()
    rows = []
    for k in accounts.by_id.values():
        acc = accounts.account_of(k)
        rows.append((k.id, k.name, k.prefix + "...", k.status(now), k.source,
                     "unlimited" if acc.unlimited else usd(acc.balance), usd(acc.spent),
                     "all" if k.models is None else ",".join(sorted(k.models)), _limits(k.limits),
                     iso(k.expires_at) or "never"))
    if not rows:
        print("no keys yet: tollway keys create --name NAME --credits USD")
        return 0
    print(table(("ID", "NAME", "PREFIX", "STATUS", "SOURCE", "BALANCE", "SPENT", "MODELS", "LIMITS", "EXPIRES"),
                rows))
    return 0


async def cmd_show(accounts: Accounts, args: argparse.Namespace) -> int:
    record = _find(accounts, args.key)
    if record is None:
        return 1
    print(_details(accounts, record))
    return 0


async def cmd_update(accounts: Accounts, args: argparse.Namespace) -> int:
    record = _key_to_change(accounts, args.key, in_config="change it there")
    if record is None:
        return 1
    try:
        changes = patch_changes(KeyPatch(default_model=None if args.no_default_model else args.default_model),
                                {"default_model": True}, accounts.config.models)
    except SpecError as exc:
        print(f"tollway keys update: {exc}", file=sys.stderr)
        return 2
    print(_details(accounts, await accounts.update_key(record.id, changes)))
    return 0


async def cmd_revoke(accounts: Accounts, args: argparse.Namespace) -> int:
    record = _key_to_change(accounts, args.key, in_config="remove it there", revoked_too=True)
    if record is None:
        return 1
    if record.revoked_at is None:
        await accounts.revoke_key(record.id)
    print(f"revoked {record.id} ({record.name})")
    return 0


async def cmd_topup(accounts: Accounts, args: argparse.Namespace) -> int:
    record = _key_to_change(accounts, args.key)
    if record is None:
        return 1
    micro = credits_micro(args.amount, "amount", positive=True)
    acc = await accounts.topup(record.id, micro)
    print(f"added {usd(micro)} to account {acc.id} ({record.name}): balance {usd(acc.balance)}")
    return 0


async def cmd_usage(accounts: Accounts, args: argparse.Namespace) -> int:
    key_id = None
    if args.key:
        record = _find(accounts, args.key)
        if record is None:
            return 1
        key_id = record.id
    rows = await rollups(accounts, key_id=key_id, model=args.model, since=args.since, until=args.until)
    if not rows:
        print("no usage recorded" + (" for these filters" if any((args.key, args.model, args.since, args.until))
                                     else ""))
        return 0
    names = {k.id: k.name for k in accounts.by_id.values()}
    body = [(r["day"], names.get(r["key_id"], r["key_id"] or "-"), r["model"], r["requests"], r["errors"],
             r["prompt_tokens"], r["completion_tokens"], usd(r["cost_micro_usd"])) for r in rows]
    total = sum(r["cost_micro_usd"] for r in rows)
    body.append(("total", "", "", sum(r["requests"] for r in rows), sum(r["errors"] for r in rows),
                 sum(r["prompt_tokens"] for r in rows), sum(r["completion_tokens"] for r in rows), usd(total)))
    print(table(("DAY", "KEY", "MODEL", "REQUESTS", "ERRORS", "PROMPT", "COMPLETION", "COST"), body))
    return 0


async def cmd_rollups_rebuild(accounts: Accounts, args: argparse.Namespace) -> int:
    from . import db
    from . import rollups as rollup_tables

    await accounts.writer.flush()
    started = time.monotonic()
    n = await rollup_tables.rebuild(accounts.store, db.LEDGER_COLUMNS)
    print(f"rebuilt the rollups from {n} ledger rows in {time.monotonic() - started:.1f}s")
    return 0


__all__ = ["add_keys_command", "add_rollups_command", "add_usage_command"]

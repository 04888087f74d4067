"""``tollway byok set|list|remove``: customers' own upstream keys, on the config's store.

The key is read from standard input (a pipe, or typed without echo), never from
the command line, where ``ps`` and shell histories would show it. A running
server picks the change up within ``plugins.byok.poll_ms``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING

from proxy import ProxyError
from proxy.schema import ConfigError

from .admin import check_upstream_key, owner_problem, provider_problem
from .vault import Owner

if TYPE_CHECKING:
    from proxy import Gateway

__all__ = ["add_byok_command"]


def add_byok_command(subparsers: argparse._SubParsersAction) -> None:
    from proxy.cli import add_config_arg, gateway_command

    byok = subparsers.add_parser("byok", help="customers' own upstream API keys (bring your own key)")
    sub = byok.add_subparsers(dest="byok_command", metavar="ACTION", required=True)
    for action, helptext, fn in (("set", "store a key's or an account's own key for a provider (read from stdin)",
                                  cmd_set),
                                 ("list", "list the stored keys (their hints, never the keys)", cmd_list),
                                 ("remove", "remove one", cmd_remove)):
        p = sub.add_parser(action, help=helptext)
        add_config_arg(p)
        who = p.add_mutually_exclusive_group(required=action != "list")
        who.add_argument("--key", help="the API key's id")
        who.add_argument("--account", help="the credit account's id (its keys share the upstream key)")
        if action != "list":
            p.add_argument("provider", help="the provider's name in the config")
        p.set_defaults(func=gateway_command(fn))


def _vault(gateway: Gateway):
    from . import VAULT

    vault = gateway.services.get(VAULT)
    if vault is None:
        raise ConfigError("plugins.enabled: the byok plugin is not enabled in this config")
    return vault


def _owner(gateway: Gateway, args: argparse.Namespace) -> Owner | None:
    owner = Owner("key", args.key) if args.key else Owner("account", args.account)
    if (problem := owner_problem(gateway, owner)) is not None:
        print(f"tollway: {problem}", file=sys.stderr)
        return None
    return owner


async def cmd_set(gateway: Gateway, args: argparse.Namespace) -> int:
    vault = _vault(gateway)
    owner = _owner(gateway, args)
    if owner is None:
        return 2
    if (problem := provider_problem(gateway, args.provider)) is not None:
        print(f"tollway: {problem}", file=sys.stderr)
        return 2
    text = getpass.getpass(f"{args.provider} API key: ") if sys.stdin.isatty() else sys.stdin.readline()
    try:
        key = check_upstream_key(text)
    except ProxyError as exc:
        print(f"tollway: {exc.message}", file=sys.stderr)
        return 2
    before = vault.listed.get((str(owner), args.provider))
    stored = await vault.put(owner, args.provider, key)
    if before is None:
        print(f"stored {owner.kind} {owner.id}'s key for {args.provider}: {stored.hint}")
    else:
        print(f"replaced {owner.kind} {owner.id}'s key for {args.provider}: {stored.hint} (was {before.hint})")
    return 0


async def cmd_list(gateway: Gateway, args: argparse.Namespace) -> int:
    vault = _vault(gateway)
    keys = sorted(vault.listed.values(), key=lambda k: (k.owner, k.provider))
    if args.key or args.account:
        who = str(Owner("key", args.key) if args.key else Owner("account", args.account))
        keys = [k for k in keys if k.owner == who]
    for k in keys:
        print(f"{k.owner}\t{k.provider}\t{k.hint}")
    return 0


async def cmd_remove(gateway: Gateway, args: argparse.Namespace) -> int:
    vault = _vault(gateway)
    owner = Owner("key", args.key) if args.key else Owner("account", args.account)
    if not await vault.remove(owner, args.provider):
        print(f"tollway: {owner.kind} {owner.id} has no upstream key for {args.provider}", file=sys.stderr)
        return 2
    print(f"removed {owner.kind} {owner.id}'s key for {args.provider}")
    return 0

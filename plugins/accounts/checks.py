"""What ``tollway check`` and start-up verify of the business sections (``keys:``,
``accounts:``, ``billing:``, the deployment), each mistake a ConfigError naming its path."""

from __future__ import annotations

import math
import re
import time

from proxy.schema import ConfigError, StartRefused, suggest

from .keys import ALPHABETS, MIN_BITS, display_prefix, hash_key, key_bits
from .model import KeyRecord
from .money import MoneyError, usd_to_micro
from .options import NAME_RE, KeyConfig, parse_time
from .periods import zone

__all__ = ["check_config", "claim_store", "config_record"]


def check_config(config) -> None:
    """What ``tollway check`` must catch: the deployment, and every YAML key."""
    check_deployment(config)
    check_key_format(config)
    check_accounts(config)
    for i, kc in enumerate(config.section("keys") or []):
        config_record(config, i, kc)


def check_key_format(config) -> None:
    auth = config.section("plugins.auth")
    if auth is None:
        return
    fmt = auth.key_format
    where = "plugins.auth.key_format"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{0,32}", fmt.prefix):
        raise ConfigError(f"{where}.prefix: use at most 32 letters, digits, '_', '.' or '-', got {fmt.prefix!r}")
    if not 1 <= fmt.length <= 256:
        raise ConfigError(f"{where}.length: must be 1 to 256 characters, got {fmt.length}")
    bits = key_bits(fmt.length, fmt.alphabet)
    if bits < MIN_BITS:
        need = math.ceil(MIN_BITS / math.log2(len(ALPHABETS[fmt.alphabet])))
        raise ConfigError(f"{where}.length: {fmt.length} {fmt.alphabet} characters carry {bits:.0f} random bits; "
                          f"a key needs at least {MIN_BITS} (use {need} or more)")


def check_accounts(config) -> None:
    """The YAML ``accounts:`` and ``billing:`` sections."""
    billing = config.section("billing")
    if billing is not None:
        try:
            zone(billing.timezone)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not re.fullmatch(r"[A-Z]{3}", billing.currency):
            raise ConfigError(f"billing.currency: use a 3-letter ISO 4217 code like USD, EUR or INR, "
                              f"got {billing.currency!r}")
        if not billing.usd_rate > 0:
            raise ConfigError("billing.usd_rate: must be more than 0 (units of billing.currency per USD)")
        if billing.currency == "USD" and billing.usd_rate != 1:
            raise ConfigError("billing.usd_rate: must be 1 when billing.currency is USD")
        try:
            usd_to_micro(billing.usd_rate, "billing.usd_rate")
        except MoneyError as exc:
            raise ConfigError(str(exc)) from None
    for aid, ac in (config.section("accounts") or {}).items():
        where = f"accounts.{aid}"
        if not NAME_RE.match(aid):
            raise ConfigError(f"{where}: an account name uses 1-64 letters, digits, '_', '.' or '-'")
        if ac.credits is not None:
            check_usd(ac.credits, f"{where}.credits")
        if ac.refill is not None:
            check_usd(ac.refill.amount, f"{where}.refill.amount", positive=True)
            if ac.credits is None:
                raise ConfigError(f"{where}.refill: an unmetered account (credits: null) has nothing to refill")
        for path, problem in ac.limits.problems() + ac.budgets.problems():
            raise ConfigError(f"{where}.{path}: {problem}")
        if ac.limits.concurrency is not None or ac.limits.models:
            raise ConfigError(f"{where}.limits: an account shares rpm, tpm and rpd; set concurrency and "
                              "per-model limits on its keys")


def check_usd(amount: float, path: str, positive: bool = False) -> None:
    """A ConfigError naming ``path`` unless ``amount`` is USD that micro-units can hold
    and not negative (with ``positive``: greater than 0)."""
    if positive and amount <= 0:
        raise ConfigError(f"{path}: must be greater than 0")
    if amount < 0:
        raise ConfigError(f"{path}: must not be negative")
    try:
        usd_to_micro(amount, path)
    except MoneyError as exc:
        raise ConfigError(str(exc)) from None


def config_record(config, i: int, kc: KeyConfig) -> KeyRecord:
    """The KeyRecord of the i-th YAML key, or a ConfigError naming what is wrong."""
    where = f"keys[{i}]"
    seen = {k.name for k in (config.section("keys") or [])[:i]}
    if not NAME_RE.match(kc.name):
        raise ConfigError(f"{where}.name: use 1-64 letters, digits, '_', '.' or '-', got {kc.name!r}")
    if kc.name in seen:
        raise ConfigError(f"{where}.name: duplicate key name {kc.name!r}")
    if not kc.key.strip():
        raise ConfigError(f"{where}.key: empty (is its ${{VAR}} set?)")
    if kc.account is not None and not NAME_RE.match(kc.account):
        raise ConfigError(f"{where}.account: use 1-64 letters, digits, '_', '.' or '-'")
    if kc.credits is not None:
        check_usd(kc.credits, f"{where}.credits")
    models = config.models
    for j, m in enumerate(kc.models or ()):
        if m not in models:
            raise ConfigError(f"{where}.models[{j}]: unknown model {m!r}{suggest(m, models)}")
    for m in kc.limits.models:
        if m not in models:
            raise ConfigError(f"{where}.limits.models.{m}: unknown model{suggest(m, models)}")
    if kc.default_model is not None and kc.default_model not in models:
        raise ConfigError(f"{where}.default_model: unknown model {kc.default_model!r}"
                          f"{suggest(kc.default_model, models)}")
    for path, problem in kc.limits.problems() + kc.budgets.problems():
        raise ConfigError(f"{where}.{path}: {problem}")
    try:
        expires = parse_time(kc.expires_at, f"{where}.expires_at")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    kid = "cfg_" + kc.name
    key = kc.key.strip()
    return KeyRecord(id=kid, name=kc.name, hash=hash_key(key), prefix=display_prefix(key),
                     account_id=kc.account or kid, models=None if kc.models is None else frozenset(kc.models),
                     limits=kc.limits, expires_at=expires, disabled=kc.disabled, metadata=dict(kc.metadata),
                     source="config", created_at=time.time(), budgets=kc.budgets, default_model=kc.default_model)


async def claim_store(store) -> None:
    """One serving process per store: balances, reservations and rate-limit
    counters live in its memory (storage.counters: memory), so a second one
    would spend the same credits again. The claim is a lock the store holds
    (released when the process ends, a crash included); the CLI takes none."""
    holder = await store.claim("serve")
    if holder is not None:
        raise StartRefused(
            f"storage.url: another tollway serve is already running on this store ({holder}); with "
            "storage.counters: memory the balances and rate limits live in that process's memory, so a second "
            "process would spend the same credits twice. Send the traffic to the running one (tollway keys and "
            "tollway usage work beside it), stop it first, or give this one its own storage.url")


def check_deployment(config) -> None:
    """Several processes need their balances and counters shared: Redis for the
    counters, PostgreSQL for the store."""
    counters = config.storage.counters
    if counters != "memory" and not counters.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"storage.counters: {counters!r} is not a counters URL; use 'memory' (one process) or "
                          "redis://host:port/db (several workers or instances)")
    if counters != "memory":
        try:
            import hiredis  # noqa: F401
            import redis  # noqa: F401
        except ImportError:
            raise ConfigError("storage.counters: Redis needs redis-py and hiredis; pip install 'tollway[scale]'") \
                from None
        from .redis_link import parse_counters_url

        try:
            parse_counters_url(counters)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if config.server.workers > 1 and counters == "memory":
        raise ConfigError(f"server.workers: {config.server.workers} workers cannot share the in-memory balances "
                          "and rate-limit counters of storage.counters: memory; set storage.counters: "
                          "redis://127.0.0.1:6379/0 and storage.url: postgresql://..., or run 1 worker")
    if config.server.workers > 1 and not config.storage.url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"server.workers: {config.server.workers} workers need a store several processes can "
                          "write at once; set storage.url: postgresql://... (or run 1 worker)")


async def claim_currency(store, currency: str) -> None:
    """Balances are stored in micro-units of ``billing.currency``: the currency is
    recorded at the first start and a different one is refused (it would reinterpret
    every balance and ledger row)."""
    rows = await store.fetchall("select name from tollway_meta where name like 'currency:%'")
    stored = [r[0].split(":", 1)[1] for r in rows]
    if not stored:
        await store.execute("insert into tollway_meta (name, value) values (?, 1) on conflict (name) do nothing",
                            (f"currency:{currency}",))
    elif currency not in stored:
        raise StartRefused(f"billing.currency: this store's balances and ledger are in {stored[0]}, not {currency}; "
                           f"set billing.currency: {stored[0]} (a change of currency needs the stored amounts "
                           "converted first)")

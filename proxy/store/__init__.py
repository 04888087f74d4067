"""Storage primitives: a small SQL interface over SQLite (default) or PostgreSQL.

The core opens the store named by ``storage.url`` and hands it to plugins via
``gateway.store``. Plugins own their tables: each creates and upgrades them
with numbered steps through ``migrations.migrate`` in its ``tollway_startup``.
``base.py`` states the contract both engines keep (transactions, claims).
SQL is written with ``?`` placeholders; the PostgreSQL store rewrites them
to ``$1, $2...``.
"""

from __future__ import annotations

from pathlib import Path

from ..schema import ConfigError
from .base import Store, refuses_text, unreachable
from .migrations import Migration, migrate, schema_version

__all__ = ["Migration", "Store", "migrate", "open_store", "refuses_text", "schema_version",
           "unreachable"]


def open_store(url: str, base_dir: Path) -> Store:
    """The store for ``storage.url`` (not yet connected: ``await store.connect()``)."""
    if url.startswith("sqlite://"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url, base_dir)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    if url == "memory":
        from .sqlite import SQLiteStore

        return SQLiteStore("sqlite://:memory:", base_dir)
    raise ConfigError(f"storage.url: unsupported {url!r} (use sqlite:///path.db or postgresql://...)")

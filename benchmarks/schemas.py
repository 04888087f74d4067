"""The PostgreSQL schemas a benchmark target's store needs, created before it starts.

A config such as ``configs/fleet.yaml`` puts each target of a run in a schema
of its own (``search_path=tollway_bench_fleet${TOLLWAY_BENCH_SLOT}``). tollway
refuses to start on a schema that does not exist (a misspelt one would be a new,
empty store), so the harness creates the ones its targets name: the README's
bench command works on a fresh machine.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")  # as proxy/config.py reads them


def expand(text: str, env: Mapping[str, str]) -> str:
    """``${VAR}`` / ``${VAR:-default}`` in ``text`` with the values of ``env``."""
    def sub(m: re.Match) -> str:
        got = env.get(m.group(1))
        return got if got else (m.group(2) or "")

    return _VAR.sub(sub, text)


def schemas_needed(config: Path, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """(the PostgreSQL URL without its search_path, the schemas its search_path names), or
    ("", []) when the config's store is not PostgreSQL."""
    try:
        raw = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "", []  # tollway itself will say what is wrong with the file
    url = ((raw.get("storage") or {}) if isinstance(raw, dict) else {}).get("url")
    if not isinstance(url, str):
        return "", []
    url = expand(url, env)
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        return "", []
    path = ",".join(parse_qs(parts.query).get("search_path", []))
    names = [n.strip().strip('"') for n in path.split(",") if n.strip() and n.strip() != '"$user"']
    return parts._replace(query="").geturl(), names


def create_schemas(config: Path, env: Mapping[str, str]) -> list[str]:
    """Create the schemas ``config``'s store names and does not have yet; the ones it named."""
    url, names = schemas_needed(config, env)
    if names:
        asyncio.run(_create(url, names))
    return names


async def _create(url: str, names: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        for name in names:
            await conn.execute('create schema if not exists "{}"'.format(name.replace('"', '""')))
    finally:
        await conn.close()

"""``tollway migrate``: the store's tables brought to this version's schema without serving,
on both engines; run again, it changes nothing; a password in the URL is never printed."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import asyncpg
import pytest
from stores import ENGINES, PG, fresh_database

CONFIG = """
storage:
  url: "{url}"
providers:
  mock: {{kind: mock}}
models:
  echo: {{provider: mock, price: {{input: 1, output: 2}}}}
keys:
  - {{name: a, key: sk-tollway-migrate-test-0000000001, credits: 1.00}}
plugins:
  enabled: [auth, ratelimit, quotas, pricing, ledger, batches, dashboard]
"""


async def migrate(config: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "proxy.cli", "migrate", "--config",
                                                str(config), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def tables(url: str) -> set[str]:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            return {name for (name,) in db.execute("select name from sqlite_master where type = 'table'")}
    schema = url.split("search_path=")[1]
    conn = await asyncpg.connect(PG)
    try:
        rows = await conn.fetch("select table_name from information_schema.tables where table_schema = $1", schema)
    finally:
        await conn.close()
    return {r["table_name"] for r in rows}


@pytest.mark.parametrize("engine", ENGINES)
async def test_migrate_creates_every_table_and_is_idempotent(tmp_path, engine):
    async with fresh_database(engine, tmp_path) as url:
        config = tmp_path / "tollway.yaml"
        config.write_text(CONFIG.format(url=url))
        assert not await tables(url)
        code, out, err = await migrate(config)
        assert code == 0, err
        kind = "sqlite" if engine == "sqlite" else "postgres"
        assert out.startswith(f"tollway: the {kind} store's schema is up to date: accounts ")
        for component in ("accounts", "batches", "dashboard", "responses"):
            assert f"{component} " in out
        made = await tables(url)
        assert {"tollway_schema", "tollway_keys", "tollway_ledger", "tollway_batches", "tollway_responses",
                "dashboard_sessions"} <= made
        again = await migrate(config)
        assert again == (0, out, err)
        assert await tables(url) == made


async def test_migrate_never_prints_the_stores_password(tmp_path):
    async with fresh_database("postgres", tmp_path) as url:
        # trust auth: the password is accepted and ignored, so the command still works
        with_password = url.replace("postgres@", "postgres:s3cret-hunter2@")
        config = tmp_path / "tollway.yaml"
        config.write_text(CONFIG.format(url=with_password))
        code, out, err = await migrate(config)
        assert code == 0, err
        assert "s3cret-hunter2" not in out + err


async def test_migrate_with_a_broken_config_says_what_to_fix(tmp_path):
    config = tmp_path / "tollway.yaml"
    config.write_text(CONFIG.format(url="sqlite:///x.db").replace("price: {input: 1, output: 2}", "price: {}"))
    code, out, err = await migrate(config)
    assert code == 2 and "models.echo.price" in err and "Traceback" not in err

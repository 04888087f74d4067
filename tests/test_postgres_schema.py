"""A PostgreSQL store whose ``search_path`` names a schema that does not exist: ``tollway serve``
(and every CLI command that opens the store) says so in one line with the SQL that creates it,
and the benchmark harness creates the schemas its targets name before starting them.

Needs PostgreSQL at 127.0.0.1:5432 (database ``test``, trust auth) and, for the harness's fleet
target, Redis at 127.0.0.1:6379: without them these tests fail, loudly."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
from pathlib import Path

import yaml
from business import biz_config
from stores import PG, run_pg

from benchmarks.procs import Children
from benchmarks.runner import start_target
from benchmarks.targets import CONFIGS, tollway_target


def _config(tmp_path: Path, url: str) -> str:
    config = biz_config()
    config["storage"] = {"url": url}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _tollway(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *argv], capture_output=True, text=True, timeout=60)


def test_a_missing_schema_is_one_line_naming_it_and_the_sql_that_creates_it(tmp_path):
    schema = "tollway_t_" + secrets.token_hex(6)
    config = _config(tmp_path, f"{PG}?search_path={schema}")
    try:
        for argv in (("serve", "--config", config, "--port", "0"), ("keys", "list", "--config", config)):
            done = _tollway(*argv)
            assert done.returncode == 2, (argv, done.stderr)
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
            assert f"create schema {schema};" in lines[0] and "search_path" in lines[0], lines[0]
        # The SQL it printed is the fix: run it and the store opens (migrations create the tables).
        sql = re.search(r"create schema [^;]+;", lines[0]).group(0)
        asyncio.run(run_pg(sql))
        done = _tollway("keys", "list", "--config", config)
        assert done.returncode == 0, done.stderr
        assert "demo" in done.stdout
    finally:
        asyncio.run(run_pg(f"drop schema if exists {schema} cascade"))


def test_the_bench_harness_creates_the_schema_of_a_fleet_target(tmp_path):
    schema = "tollway_t_" + secrets.token_hex(6)
    text = (CONFIGS / "fleet.yaml").read_text()
    text = text.replace("search_path=tollway_bench_fleet", f"search_path={schema}_")
    text = text.replace("prefix=tollway-bench-fleet", f"prefix={schema}-")
    assert schema in text
    config = tmp_path / "fleet.yaml"
    config.write_text(text)
    target = tollway_target("tollway-fleet", config)
    target.slot = 3
    kids = Children(tmp_path)
    try:
        start_target(kids, target, "http://127.0.0.1:9", tmp_path, None)
        assert target.failed is None, target.failed
        assert target.url.startswith("http://127.0.0.1:")
    finally:
        kids.stop_all()
        asyncio.run(run_pg(f"drop schema if exists {schema}_3 cascade"))

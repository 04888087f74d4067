"""Two `tollway serve` processes on one store would both spend the same balances
(each holds them in memory): the second is refused at start, with a message that
says why and what to do, on SQLite and PostgreSQL, also through the hidden
--reuse-port flag; the CLI still works beside the running server; a crash
(kill -9) releases the claim."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest
import yaml
from business import biz_config
from stores import ENGINES, fresh_database
from test_lifecycle import ROOT, Server


async def run_cli(*argv: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "proxy.cli", *argv, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # never leave a server behind
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_second_server_on_the_same_store_is_refused(tmp_path, engine):
    async with fresh_database(engine, tmp_path) as url:
        config = biz_config()
        config["server"] = {**config["server"], "host": "127.0.0.1"}
        config["storage"] = {"url": url}
        path = tmp_path / "tollway.yaml"
        path.write_text(yaml.safe_dump(config))
        first = Server(path, "--reuse-port")
        try:
            await first.wait_ready()
            # (Every CLI run is a process start: they run at once.)
            tries = [["serve", "--config", str(path), *extra] for extra in
                     (["--port", "0"], ["--reuse-port", "--port", str(first.port)])]
            for args, (code, out, err) in zip(tries, await asyncio.gather(*(run_cli(*a) for a in tries)), strict=True):
                assert code == 2, (args, out, err)
                assert err.startswith("tollway: cannot start: storage.url: another tollway serve is already "
                                      "running on this store ("), err
                assert f"process {first.proc.pid}" in err  # who holds it
                assert "spend the same credits twice" in err and "tollway keys" in err
                assert "Traceback" not in err and "listening" not in out
            # The CLI works beside the running server.
            uses = (["keys", "list"], ["usage"], ["keys", "topup", "demo", "1"])
            for argv, (code, _, err) in zip(uses, await asyncio.gather(*(run_cli(*a, "--config", str(path))
                                                                         for a in uses)), strict=True):
                assert code == 0, (argv, err)
            # A crash releases the claim: the next server starts.
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
            second = Server(path)
            try:
                await second.wait_ready()
            finally:
                code, _, err = second.stop()
                assert code == 0, err
        finally:
            if first.proc.poll() is None:
                first.proc.kill()
            first.proc.communicate()

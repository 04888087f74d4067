"""`tollway serve --workers 2` keeps its workers running (proxy/supervisor.py), through the
real server on Redis counters and a PostgreSQL schema of its own: a worker killed with
kill -9 is reaped at once (no zombie) and replaced, requests keep succeeding and the ledger
holds every one; SIGTERM while a worker is being replaced still ends everything; workers
that die at start every time make the parent back off and then give up, not spin."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from business import DEMO, chat
from stores import fresh_database
from test_fleet_money import ledger_and_balance, shared_config
from test_lifecycle import ROOT, STOP_DEADLINE, Server, config_file, free_port
from test_metrics import TOKEN, total
from test_metrics_workers import scrapes_until

pytestmark = [pytest.mark.fleet, pytest.mark.early]


@pytest.fixture
async def pg_url(tmp_path):
    async with fresh_database("postgres", tmp_path) as url:
        yield url


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (zombies too, until reaped), from each one's own
    /proc stat: the parent's ``task/<tid>/children`` lists only the children of that one thread,
    and the kernel calls it reliable only for stopped ones (a CI run once waited 60 s on it for
    two listening workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def state_of(pid: int) -> str | None:
    """The process's state letter (``Z`` for a zombie), None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None once it is gone: with the
    state, tells a process from a later one given the same pid (pids wrap on a busy machine)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a socket listening on ``port`` (from /proc/net/tcp*)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rpartition(":")[2], 16) == port and fields[3] == "0A" and fields[9] in inodes:
                return True
    return False


def workers_of_port(port: int) -> list[int]:
    """Every process (at any parent) that runs a tollway worker of ``port``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--reuse-port" in args and str(port).encode() in args and state_of(int(entry)) not in (None, "Z"):
                found.append(int(entry))
    return found


async def wait_for(check, what: str, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {seconds} s (last seen: {result!r})"
        await asyncio.sleep(0.05)


async def burst(server: Server, n: int) -> list[int]:
    """``n`` chats at once, each on a new connection (the kernel spreads them over the workers)."""
    api = type("Api", (), {"url": server.url + "/v1"})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        results = await asyncio.gather(*(chat(s, api, DEMO, content=f"n{i}", max_tokens=5) for i in range(n)))
    return [status for status, _, _ in results]


def start(tmp_path: Path, pg: str) -> Server:
    config = shared_config(pg)
    config["server"].update(host="127.0.0.1", access_log="off", workers=2, shutdown_timeout=5)
    config["metrics"] = {"token": TOKEN, "flush_seconds": 0.1}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    return Server(path)


def live_gauge_pids(worker: int) -> set[int]:
    """The pids whose live gauges are in the metrics files ``worker`` shares with the others."""
    env = dict(item.split(b"=", 1) for item in Path(f"/proc/{worker}/environ").read_bytes().split(b"\0") if item)
    metrics = Path(env[b"TOLLWAY_WORKERS_DIR"].decode()) / "metrics"
    return {int(f.stem.rpartition("_")[2]) for f in metrics.glob("gauge_live*.db")}


def kill_leftovers(server: Server) -> None:
    for pid in workers_of_port(server.port):
        os.kill(pid, signal.SIGKILL)
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.communicate()


async def test_a_worker_killed_with_kill_9_is_reaped_and_replaced_and_requests_keep_succeeding(tmp_path, pg_url):
    server = start(tmp_path, pg_url)
    try:
        await server.wait_ready()
        first = await wait_for(lambda: len(children_of(server.proc.pid)) == 2 and children_of(server.proc.pid),
                               "two workers")
        assert await burst(server, 20) == [200] * 20
        # (Rows a worker has not yet written when killed with kill -9 are not what this is about.)
        deadline = time.monotonic() + 30
        while (await ledger_and_balance(pg_url))[2] < 20:
            assert time.monotonic() < deadline, "the first 20 requests never reached the ledger"
            await asyncio.sleep(0.1)

        os.kill(first[0], signal.SIGKILL)
        now = await wait_for(lambda: (len(c := children_of(server.proc.pid)) == 2 and first[0] not in c) and c,
                             "a new worker in place of the killed one")
        assert state_of(first[0]) is None  # reaped at once: no zombie left
        assert first[1] in now  # the other worker was left alone
        new = next(pid for pid in now if pid != first[1])
        await wait_for(lambda: listens_on(new, server.port), "the new worker listening on the port")
        assert await burst(server, 50) == [200] * 50
        # /metrics: what the killed worker counted stays, the new one's counts join, and the
        # dead pid's live gauges are gone (marked dead by a survivor).
        await scrapes_until(server, lambda m: total(m, "tollway_requests_total", status="200") == 70,
                            "all 70 requests counted")
        await wait_for(lambda: first[0] not in (p := live_gauge_pids(new)) and new in p,
                       "the live gauges of the new worker only, not the killed one's")

        code, _, err = server.stop()
        assert code == 0, err
        assert f"worker {first[0]} killed by SIGKILL; starting a new one" in err
        assert workers_of_port(server.port) == []
        for pid in [*first, new]:
            assert state_of(pid) is None
        charged, balance, rows = await ledger_and_balance(pg_url)
        assert rows == 70  # every request, whichever worker served it, is in the ledger
        assert charged > 0 and balance == 5_000_000 - charged
    finally:
        kill_leftovers(server)


async def test_sigterm_while_a_worker_is_being_replaced_ends_every_process(tmp_path, pg_url):
    server = start(tmp_path, pg_url)
    try:
        await server.wait_ready()
        first = await wait_for(lambda: len(children_of(server.proc.pid)) == 2 and children_of(server.proc.pid),
                               "two workers")
        os.kill(first[0], signal.SIGKILL)
        # The replacement is starting now (it takes about a second to import and listen).
        await wait_for(lambda: first[0] not in children_of(server.proc.pid), "the killed worker reaped")
        seen = set(first) | set(children_of(server.proc.pid))
        code, _, err = server.stop()
        assert code == 0, err
        assert "Traceback" not in err
        assert workers_of_port(server.port) == []  # no worker left behind, replacement included
        for pid in seen:
            assert state_of(pid) is None
    finally:
        kill_leftovers(server)


async def test_workers_dying_at_start_every_time_make_the_parent_back_off_then_give_up(tmp_path):
    port = free_port()
    with socket.socket() as blocker:  # holds the port without SO_REUSEPORT: every worker fails to listen
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_file(tmp_path)),
                                 "--port", str(port), "--workers", "2"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"the parent did not give up; it printed:\n{err[-4000:]}") from None
    assert proc.returncode == 1, err
    failures = err.count(f"cannot listen on 127.0.0.1:{port}")
    # 5 deaths restarted at once, then 5 after 0.5, 1, 2, 4, 8 s; the 11th ends it (one more
    # worker may have been starting then): a bounded number of starts, never a loop of forks.
    assert 11 <= failures <= 12, err
    assert err.count("starting a new one in ") == 5, err
    assert "backing off, starting a new one in 8 s" in err
    assert "workers keep dying" in err and "giving up" in err
    assert "Traceback" not in err
    assert workers_of_port(port) == []


async def test_workers_of_a_parent_killed_with_kill_9_stop_and_free_the_port(tmp_path):
    """The parent cannot pass anything on when it is killed with kill -9: its workers get
    SIGTERM from the kernel (they asked for it at start) and stop as on a SIGTERM, instead of
    going on as orphans that hold the port (and a test's pipes) forever."""
    server = Server(config_file(tmp_path, shutdown_timeout=5), "--workers", "2")
    try:
        await server.wait_ready()
        workers = await wait_for(lambda: len(c := children_of(server.proc.pid)) == 2
                                 and all(listens_on(w, server.port) for w in c) and c, "two workers listening")
        started = {pid: start_time(pid) for pid in workers}
        os.kill(server.proc.pid, signal.SIGKILL)
        # Their stderr is the parent's: it ends once both have exited.
        _, err = await asyncio.to_thread(server.proc.communicate, timeout=STOP_DEADLINE)
        await wait_for(lambda: workers_of_port(server.port) == [], "no worker left", STOP_DEADLINE)
        assert err.count("tollway: stopping: finishing in-flight requests") == 2, err  # each stopped itself
        # Ended (a zombie until whoever adopted it reaps it). The kernel closes a process's files
        # (its stderr, its socket) before it marks the process a zombie: waited for, not assumed.
        await wait_for(lambda: all(state_of(pid) in (None, "Z") or start_time(pid) != started[pid] for pid in workers),
                       "both workers ended", STOP_DEADLINE)
        with socket.socket() as s:  # the port is free again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", server.port))
            s.listen()
    finally:
        kill_leftovers(server)

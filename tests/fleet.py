"""Helpers for the tests of shared counters and fleets: every kind of counters
(memory, Redis), each test with its own Redis key prefix; several real ``tollway serve``
processes on one config (``start_servers``), killed at the end whatever happened (``kill_all``);
``fleet_of`` does all of it around a config, with a PostgreSQL schema and a Redis prefix of their own.

Redis must be running at 127.0.0.1:6379: without it these tests fail, loudly.
``private_redis()`` starts a redis-server of the test's own on a free port (for
the tests that stop it)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from stores import PG, run_pg
from test_lifecycle import Server

from plugins.accounts.counters import Counters, MemoryCounters

COUNTER_KINDS = ("memory", "redis")
REDIS = "redis://127.0.0.1:6379/0"


def redis_url(base: str = REDIS) -> str:
    """A counters URL with a key prefix of its own (runs never collide)."""
    return f"{base}?prefix=t{secrets.token_hex(5)}:"


@asynccontextmanager
async def counters_of(kind: str, options: str = "") -> AsyncIterator[Counters]:
    """Fresh counters of this kind (Redis's with these URL ``options`` too: ``&hold_ttl=1``)."""
    if kind == "memory":
        counters: Counters = MemoryCounters()
    else:
        from plugins.accounts.redis_counters import RedisCounters
        from plugins.accounts.redis_link import RedisLink

        link = RedisLink(redis_url() + options)
        try:
            await link.redis.ping()
        except Exception as exc:
            await link.close()
            pytest.fail(f"this test needs Redis at 127.0.0.1:6379: {exc}")
        await link.connect_pipe()
        counters = RedisCounters(link)
        counters.start()
    try:
        yield counters
    finally:
        await counters.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def private_redis(tmp_path: Path, port: int | None = None, tls: bool = False) -> Iterator[subprocess.Popen]:
    """A redis-server of this test's own (no persistence) on a free port (or ``port``);
    ``.port`` on the result. ``tls``: it speaks only TLS there, with a self-signed
    certificate for 127.0.0.1 (``.url``: a ``rediss://`` URL that checks it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("this test needs redis-server on the PATH")
    # A free port can be taken by another process before redis-server binds it: then that
    # server exits at once, and a new free port is tried (a given ``port`` is tried once).
    for _ in range(1 if port else 5):
        proc = _start_redis(binary, tmp_path, port or free_port(), tls)
        if proc.returncode is None:
            break
    else:
        pytest.fail(f"redis-server did not start on 127.0.0.1 (exit code {proc.returncode})")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _start_redis(binary: str, tmp_path: Path, port: int, tls: bool) -> subprocess.Popen:
    """redis-server on ``port``, waited for until it answers a connection (``returncode`` set when
    it exited instead: the port was taken); ``.url`` and ``.port`` on the result."""
    listen = ["--port", str(port)]
    if tls:
        cert, key = tmp_path / "redis-cert.pem", tmp_path / "redis-key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                        "-out", str(cert)], check=True, capture_output=True)
        listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                  "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    proc = subprocess.Popen([binary, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.url = (f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'redis-cert.pem'}&ssl_cert_reqs=required"  # type: ignore[attr-defined]
                if tls else f"redis://127.0.0.1:{port}/0")
    proc.port = port  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            pytest.fail(f"redis-server did not answer on 127.0.0.1:{port} within 10 s")
    # Someone else may answer on a taken port while ours is exiting: ours must still run.
    time.sleep(0.05)
    proc.poll()
    return proc


async def start_servers(path: Path, n: int, env: dict[str, str] | None = None) -> list[Server]:
    """``n`` ``tollway serve`` processes on the config at ``path``, each ready: the first alone (it
    creates the tables), then the others at once. One that fails to start: every one is killed."""
    servers = [Server(path, env=env)]
    try:
        await servers[0].wait_ready()
        servers += [Server(path, env=env) for _ in range(n - 1)]
        await asyncio.gather(*(server.wait_ready() for server in servers[1:]))
    except BaseException:
        kill_all(servers)
        raise
    return servers


@dataclass
class Fleet:
    servers: list[Server]
    path: Path  # the config file they serve
    schema: str  # their PostgreSQL schema
    counters: str  # their counters URL (Redis, a prefix of their own)


@asynccontextmanager
async def fleet_of(tmp_path: Path, config: dict, n: int, env: dict[str, str] | None = None) -> AsyncIterator[Fleet]:
    """``n`` real ``tollway serve`` processes on ``config``, its ``storage`` pointed at a PostgreSQL
    schema and a Redis prefix of their own (the config's own ``counters`` URL kept if it names one,
    and other ``storage`` options); at the end, whatever
    happened, what still runs is killed and the schema dropped."""
    schema, counters = "tollway_f_" + secrets.token_hex(5), config.get("storage", {}).get("counters") or redis_url()
    config = {**config, "storage": {**config.get("storage", {}), "url": f"{PG}?search_path={schema}",
                                    "counters": counters}}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    await run_pg(f"create schema {schema}")
    servers: list[Server] = []
    try:
        servers = await start_servers(path, n, env=env)
        yield Fleet(servers, path, schema, counters)
    finally:
        kill_all(servers)
        await run_pg(f"drop schema if exists {schema} cascade")


def kill_all(servers: Iterable[Server]) -> None:
    """Kill what is still running of ``servers`` (a test's ``finally:``: they were stopped, or the
    test failed) and read what each printed, so no process or pipe outlives the test. What a
    server still running printed goes to stdout, which pytest shows when the test failed."""
    for server in servers:
        running = server.proc.poll() is None
        if running:
            server.proc.kill()
        _, err = server.proc.communicate()
        if running and err:
            print(f"--- {server.url} (killed) printed:\n{err[-8000:]}")


async def until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until ``predicate()`` (sync or async) is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class TcpProxy:
    """A TCP proxy on a free port to ``127.0.0.1:target`` that a test cuts (every connection
    dropped, new ones refused: the network path to PostgreSQL gone) and restores, or slows
    (``delay``: seconds each piece of data toward the target waits). A subclass decides what
    goes through (``passes``). ``connections``: how many it accepted."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.delay = 0.0
        self.connections = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    def passes(self, data: bytes, toward_target: bool) -> bool:
        """Whether this piece of data (toward the target, or back) is sent on; one that is not is
        never sent."""
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, toward_target: bool) -> None:
            try:
                while data := await src.read(65536):
                    if toward_target and self.delay:
                        await asyncio.sleep(self.delay)
                    if not self.passes(data, toward_target):
                        continue
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        self.writers -= {writer, up_writer}

    def drop_connections(self) -> None:
        """Drop every connection open now (what either side sent and was not read yet is lost)."""
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        self.drop_connections()

    async def close(self) -> None:
        if self.server is not None and self.server.is_serving():
            await self.cut()


async def stop(server: Server) -> tuple[int, str, str]:
    """``server.stop()`` in a thread: the test's event loop (a ``TcpProxy`` it runs, a client)
    goes on during the stop instead of being frozen until the process exited."""
    return await asyncio.to_thread(server.stop)


async def money_report(schema: str, account: str, counters_url: str, answers: list[tuple[bool, int, int | None]],
                       printed: str) -> str:
    """What a money assertion says when it fails: what the clients were told, by (stream,
    status, cost), against the ledger's rows by the columns a charge depends on, what Redis
    still holds for the account (balance, holds, the ledger stream's entries not stored), and
    what the server printed. ``answers``: (stream, status, cost told) per request."""
    from collections import Counter
    from urllib.parse import parse_qs, urlsplit

    import asyncpg
    import redis.asyncio as aioredis
    from stores import PG

    told = Counter((stream, status, cost) for stream, status, cost in answers)
    lines = [f"told ({len(answers)} requests, sum {sum(c or 0 for _, _, c in answers)}): (stream, status, cost) x n"]
    lines += [f"  {k} x {n}" for k, n in sorted(told.items(), key=repr)]
    conn = await asyncpg.connect(PG, server_settings={"search_path": schema})
    try:
        rows = await conn.fetch("select stream, status, cost_micro_usd, prompt_tokens, completion_tokens, estimated, "
                                "client_gone, incomplete, error_code, count(*) as n, min(time) as first, "
                                "max(time) as last from tollway_ledger where account_id = $1 group by 1, 2, 3, 4, 5, "
                                "6, 7, 8, 9 order by 1, 2, 3", account)
        stored = await conn.fetchrow("select balance_micro_usd, spent_micro_usd from tollway_accounts where id = $1",
                                     account)
    finally:
        await conn.close()
    lines.append(f"ledger ({sum(r['n'] for r in rows)} rows, sum {sum(r['n'] * r['cost_micro_usd'] for r in rows)}; "
                 f"stored balance {stored['balance_micro_usd']}, spent {stored['spent_micro_usd']}): "
                 f"(stream, status, cost, prompt, completion, estimated, client_gone, incomplete, error) x n")
    lines += [f"  {tuple(r)[:9]} x {r['n']} (times {r['first']:.3f}..{r['last']:.3f})" for r in rows]
    prefix = parse_qs(urlsplit(counters_url).query)["prefix"][0]
    redis = aioredis.from_url(counters_url.split("?")[0])
    try:
        acct = await redis.hgetall(f"{prefix}acct:{account}")
        holds = await redis.zrange(f"{prefix}holds:{account}", 0, -1, withscores=True)
        left = await redis.xrange(f"{prefix}ledger")
        try:
            pending = await redis.xpending(f"{prefix}ledger", "writers")
        except Exception as exc:  # no group
            pending = repr(exc)
    finally:
        await redis.aclose()
    lines.append(f"redis: account {acct}, holds {holds}, stream entries not stored {len(left)} "
                 f"(charges {[int(f[b'charge']) for _, f in left]}), pending {pending}")
    lines.append("the server printed:\n" + printed[-12000:])
    return "\n".join(lines)

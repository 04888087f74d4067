"""kill -9 during a paid burst: what the README promises a crash can lose, checked exactly.

The promise (README, "What a crash can lose"): every answer whose cost was told
to its client (``x-tollway-cost``, the stream's usage chunk) more than
``plugins.ledger.flush_ms`` before the crash is in the ledger, with that cost,
and its balance change is stored with it; an answer told within the last
``flush_ms`` may be missing from both (never from one only); nothing is in the
ledger that a client was not told; requests in flight at the crash are not
billed. Checked here against a real `tollway serve` killed with SIGKILL.

"Before the crash" is measured in the writer's own commits, not in seconds, so
that a loaded machine that starves the server cannot fail the test: a watcher
reads the ledger file while the burst runs and notes each commit it sees. An
answer told before at least ``COMMITS`` commits that began after it was told
must be in the ledger (the writer takes every queued row at each flush, so a
row misses at most the flush under way when it is queued).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time

import aiohttp
import orjson
import yaml
from business import DEMO, bearer, biz_config
from test_lifecycle import Server

FLUSH_MS = 200
COMMITS = 3  # commits seen after an answer was told, after which it must be in the ledger
OPENING = 5_000_000


class CommitWatcher:
    """Reads the ledger in a thread while the server writes it, and keeps each read's
    start (monotonic) and whether it found rows the read before it had not."""

    def __init__(self, path) -> None:
        self.path = path
        self.reads: list[tuple[float, bool]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last: frozenset[int] = frozenset()
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
                try:
                    rows = frozenset(w for (w,) in db.execute("select completion_tokens from tollway_ledger"))
                finally:
                    db.close()
            except sqlite3.Error:  # not created yet, or a read racing the first migration
                rows = last
            self.reads.append((began, rows != last))
            last = rows
            self.stop.wait(0.01)

    def commits_after(self, moment: float) -> int:
        """Commits that certainly happened after ``moment``: new rows found by a read
        whose previous read began after ``moment`` (a lower bound: commits between two
        reads count once)."""
        reads = list(self.reads)
        return sum(1 for (prev, _), (_, new) in zip(reads, reads[1:], strict=False) if new and prev > moment)


async def test_kill_9_loses_at_most_the_last_flush_interval_and_never_half(tmp_path):
    config = biz_config(ledger={"flush_ms": FLUSH_MS})
    config["server"].update(host="127.0.0.1", access_log="off")
    config["storage"] = {"url": "sqlite:///tollway.db"}
    config["providers"]["local"] = {"kind": "mock", "chunk_delay": 0.002}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    server = Server(path)
    watcher = CommitWatcher(tmp_path / "tollway.db")
    told: dict[int, tuple[int, float]] = {}  # words (= completion tokens, unique) -> (cost told, when)
    failed: set[int] = set()

    async def one(s: aiohttp.ClientSession, words: int) -> None:
        stream = words % 2 == 0
        payload = {"model": "echo", "stream": stream, "stream_options": {"include_usage": True},
                   "messages": [{"role": "user", "content": " ".join("w" for _ in range(words))}]}
        try:
            async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(DEMO)) as r:
                body = await r.read()
                if stream:
                    last = [line for line in body.split(b"\n") if line.startswith(b"data: {")][-1]
                    cost = orjson.loads(last[6:])["usage"]["cost"]
                    assert body.endswith(b"data: [DONE]\n\n")
                else:
                    cost = float(r.headers["x-tollway-cost"])
                told[words] = (round(cost * 1e6), time.monotonic())
        except (aiohttp.ClientError, AssertionError, IndexError, KeyError):
            failed.add(words)

    try:
        await server.wait_ready()
        watcher.thread.start()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:
            tasks, killed, killed_at = [], None, 0
            for words in range(1, 20_001):
                tasks.append(asyncio.create_task(one(s, words)))
                await asyncio.sleep(0.004)
                # Kill once the burst is under way and the writer has been seen committing
                # (a loaded machine gets there later; it gets there).
                if killed is None and words >= 250 and told and \
                        watcher.commits_after(min(at for _, at in told.values())) > COMMITS:
                    server.proc.send_signal(signal.SIGKILL)
                    killed, killed_at = time.monotonic(), words
                if killed is not None and words >= killed_at + 150:
                    break
            await asyncio.gather(*tasks)
            assert killed is not None, "the server never answered and committed while the burst ran"
        server.proc.wait()
    finally:
        watcher.stop.set()
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.communicate()
    # After the restart, as the operator sees it.
    again = Server(path)
    try:
        await again.wait_ready()
    finally:
        assert again.stop()[0] == 0
    db = sqlite3.connect(tmp_path / "tollway.db")
    ledger = dict(db.execute("select completion_tokens, cost_micro_usd from tollway_ledger"))
    [(balance,)] = db.execute("select balance_micro_usd from tollway_accounts where id = 'cfg_demo'").fetchall()

    before_kill = {w: cost for w, (cost, at) in told.items() if at < killed}
    assert len(before_kill) > 50 and failed  # a real burst, and the kill cut requests in flight
    # Nothing in the ledger that no client was told, and every row at the price told.
    assert all(ledger[w] == told[w][0] for w in ledger)
    # The stored balance moved exactly by the ledger: a crash never keeps one without the other.
    assert OPENING - balance == sum(ledger.values()) and balance >= 0
    # Told before the writer committed COMMITS more times: in the ledger, whatever the machine's load.
    watcher.thread.join(timeout=60)
    for words, (_cost, at) in told.items():
        if at < killed and watcher.commits_after(at) >= COMMITS:
            assert words in ledger, f"told {watcher.commits_after(at)} commits before the kill, not in the ledger"
    # In flight at the kill: not billed.
    assert not set(ledger) & failed

"""What makes the slowest requests at concurrency 1: each request timed in the target, with what ran beside it.

``python -m benchmarks.looptimes [--target tollway-full] [--scenarios latency,stream_whole_c1]
[--requests 5000] [--top 25] [--out DIR]`` starts the mock and the target under a probe that
SIGUSR1 switches on and SIGUSR2 off (writing ``OUT/looptimes-TARGET-SCENARIO.json``), sends a
warm-up, then ``--requests`` requests one at a time, and prints:

- each request's time in the application (``proxy/server_loop.handle_request``, or aiohttp's
  ``_handle_request`` when a request runs in a task of its own: wall, the loop thread's CPU, its
  involuntary context switches: a request slow by wall but not by CPU waited, for the CPU
  or the upstream), p50/p90/p99, and what overlapped the slowest 1% (and the costliest 1%
  by CPU) against how often it overlaps any request: SQLite's thread's trips (aiosqlite's
  thread, timed around each ``in_thread`` call), garbage collections (``gc.callbacks``),
  the access log's writes, the ledger writer's steps on the loop (asyncio's loop only), a
  flush's synchronous work on the loop (its rows summed into the rollups, its statements made);
- SQLite's trips: wall and that thread's CPU, and which checkpointed the WAL (the database
  file, written only by checkpoints in WAL mode, changed in the trip);
- the writer's flushes: rows each, how long the oldest row had waited when one began and how
  long it took (``plugins.ledger.flush_ms`` promises the two together within ``flush_ms``);
- with ``TOLLWAY_LOOPTIMES_ASYNCIO=1``: asyncio's loop instead of uvloop (whose callbacks
  cannot be timed from Python), every loop callback timed by what it ran (a task's
  coroutine, else the callback) and the writer's steps among them. ``loop.slow_callback_duration``
  needs debug mode, which slows every callback; this costs two ``perf_counter`` calls each.

``TOLLWAY_LOOPTIMES_CHUNK`` / ``TOLLWAY_LOOPTIMES_SLICE`` set SQLite's rows per insert and the
rollups' rows per loop turn in the target, to compare; ``TOLLWAY_LOOPTIMES_NICE=N`` raises the nice
value of SQLite's thread (aiosqlite's) by N; ``TOLLWAY_LOOPTIMES_SWITCH=S`` sets the GIL's switch
interval (``sys.setswitchinterval``, seconds; CPython's default 0.005) in the target.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from .probe import Probe, probe_parser, run_probe

#: Callbacks at least this long (seconds) are kept one by one; shorter ones only counted.
KEEP_S = 0.0002
RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", 1)  # (Linux)


def _name(callback: object) -> str:
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return "task " + getattr(coro, "__qualname__", repr(coro))
    return getattr(callback, "__qualname__", None) or repr(callback)


def _where(coro: object) -> str:
    """Where a suspended coroutine waits: its innermost awaited coroutine's function and line."""
    where = "done"
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        frame = coro.cr_frame  # type: ignore[attr-defined]
        where = f"{frame.f_code.co_name}:{frame.f_lineno}"
        coro = getattr(coro, "cr_await", None)
    return where


def time_requests(requests: list, on: list[bool]) -> None:
    """Time each request in the application while ``on[0]``: (start, wall, the loop thread's CPU,
    its involuntary and voluntary context switches) appended to ``requests``. The gateway awaits
    a request's handling in the connection's own task (``proxy/server_loop.handle_request``,
    looked up in its module at each request), in aiohttp's ``_handle_request`` only once a
    handler set a context variable: both are timed (timing aiohttp's alone saw no request)."""
    from aiohttp import web_protocol

    from proxy import server_loop

    clock = time.perf_counter

    def timed(handle):  # type: ignore[no-untyped-def]
        async def timed_handle(self, *args):  # type: ignore[no-untyped-def]
            t0, cpu0, usage0 = clock(), time.thread_time(), resource.getrusage(RUSAGE_THREAD)
            try:
                return await handle(self, *args)
            finally:
                if on[0]:
                    usage = resource.getrusage(RUSAGE_THREAD)
                    requests.append((t0, clock() - t0, time.thread_time() - cpu0,
                                     usage.ru_nivcsw - usage0.ru_nivcsw, usage.ru_nvcsw - usage0.ru_nvcsw))
        return timed_handle

    handler = web_protocol.RequestHandler
    handler._handle_request = timed(handler._handle_request)  # type: ignore[method-assign]
    server_loop.handle_request = timed(server_loop.handle_request)


def serve_probed(argv: list[str]) -> None:
    """Run ``python -m proxy.cli ...`` with every loop callback timed while switched on."""
    out = os.environ["TOLLWAY_LOOPTIMES"]
    clock = time.perf_counter
    on = [False]
    counts: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # name -> [calls, seconds]
    slow: list[tuple[float, float, str]] = []  # (start, seconds, name)
    gcs: list[tuple[float, float, int]] = []  # (start, seconds, generation)
    trips: list[tuple[float, float, float, int]] = []  # SQLite's thread's trips (see timed_in_thread)
    flush_steps: list[tuple[float, float]] = []  # a flush's synchronous work on the event loop: (start, seconds)
    lateness: list[tuple[int, float, float]] = []  # each flush: (rows, seconds its oldest row waited, seconds it took)
    writer: list[tuple[float, float]] = []  # the ledger writer's steps on the loop (asyncio's loop only)
    handle_run = asyncio.events.Handle._run

    def timed_run(self: asyncio.events.Handle) -> None:
        if not on[0]:
            return handle_run(self)
        t0 = clock()
        handle_run(self)
        took = clock() - t0
        name = _name(self._callback)
        entry = counts[name]
        entry[0] += 1
        entry[1] += took
        if took >= KEEP_S:
            slow.append((t0, took, name))
        if name == "task Writer._run":
            writer.append((t0, took, _where(self._callback.__self__.get_coro())))

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
    gc_start = [0.0]

    def gc_timer(phase: str, info: dict) -> None:
        if phase == "start":
            gc_start[0] = clock()
        elif on[0]:
            gcs.append((gc_start[0], clock() - gc_start[0], info["generation"]))

    gc.callbacks.append(gc_timer)
    if os.environ.get("TOLLWAY_LOOPTIMES_ASYNCIO"):
        sys.modules["uvloop"] = None  # type: ignore[assignment]  # asyncio's loop: its Handle._run is Python
    requests: list[tuple[float, float]] = []  # (start, seconds) of each request in the application
    flushes: list[tuple[float, float]] = []  # the access log's writes
    from proxy import accesslog
    from proxy.store import sqlite as sqlite_store

    if os.environ.get("TOLLWAY_LOOPTIMES_CHUNK"):  # rows per multi-row insert, to compare
        sqlite_store.INSERT_CHUNK = int(os.environ["TOLLWAY_LOOPTIMES_CHUNK"])
    if os.environ.get("TOLLWAY_LOOPTIMES_SLICE"):  # rollup rows summed per loop turn, to compare
        from plugins.accounts import rollup_upserts
        rollup_upserts.SLICE_ROWS = int(os.environ["TOLLWAY_LOOPTIMES_SLICE"])
    if os.environ.get("TOLLWAY_LOOPTIMES_SWITCH"):  # how long a thread holds the GIL when another waits
        sys.setswitchinterval(float(os.environ["TOLLWAY_LOOPTIMES_SWITCH"]))
    time_requests(requests, on)
    log_flush = accesslog.AccessLog.flush

    def timed_flush(self):  # type: ignore[no-untyped-def]
        t0 = clock()
        log_flush(self)
        if on[0]:
            flushes.append((t0, clock() - t0))

    accesslog.AccessLog.flush = timed_flush  # type: ignore[method-assign]

    nice = int(os.environ.get("TOLLWAY_LOOPTIMES_NICE") or 0)  # added to SQLite's thread's nice value, to compare
    niced: set[int] = set()
    original_in_thread = sqlite_store.in_thread
    db_files: dict[int, str] = {}  # connection id -> its database file (written only by WAL checkpoints)

    def _mtime(conn) -> int:  # type: ignore[no-untyped-def]
        path = db_files.get(id(conn))
        if path is None:
            path = db_files[id(conn)] = conn.execute("pragma database_list").fetchone()[2] or ""
        try:
            return os.stat(path).st_mtime_ns if path else 0
        except OSError:
            return 0

    async def timed_in_thread(db, fn):  # type: ignore[no-untyped-def]
        def timed(conn):  # type: ignore[no-untyped-def]
            if nice and threading.get_native_id() not in niced:
                tid = threading.get_native_id()
                niced.add(tid)
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
            m0 = _mtime(conn) if on[0] else 0
            t0, cpu0 = clock(), time.thread_time()
            try:
                return fn(conn)
            finally:
                if on[0]:
                    # (start, wall, this thread's CPU, 1 when the trip checkpointed the WAL into the database)
                    trips.append((t0, clock() - t0, time.thread_time() - cpu0, int(_mtime(conn) != m0)))
        return await original_in_thread(db, timed)

    from plugins.accounts import writer as accounts_writer
    flush_held = accounts_writer.Writer.flush_held

    async def timed_flush_held(self):  # type: ignore[no-untyped-def]
        rows, waited = len(self.rows), (time.monotonic() - self.oldest_at if self.rows else 0.0)
        t0 = clock()
        try:
            return await flush_held(self)
        finally:
            if on[0] and rows:
                lateness.append((rows, waited, clock() - t0))

    accounts_writer.Writer.flush_held = timed_flush_held  # type: ignore[method-assign]
    from plugins.accounts import db as accounts_db
    from plugins.accounts import rollup_upserts
    from plugins.accounts import rollups as accounts_rollups

    def timed_sync(owner, name: str) -> None:  # type: ignore[no-untyped-def]
        """A flush's work on the event loop (its rows counted, its statements made), timed."""
        inner = getattr(owner, name)

        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            t0 = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                if on[0]:
                    flush_steps.append((t0, clock() - t0))
        setattr(owner, name, timed)

    timed_sync(accounts_rollups.Aggregator, "add")
    timed_sync(rollup_upserts, "project")
    timed_sync(sqlite_store.SQLiteStore, "insert_steps")
    del accounts_db

    sqlite_store.in_thread = timed_in_thread

    def start(_sig: int, _frame: object) -> None:
        on[0] = True

    def stop(_sig: int, _frame: object) -> None:
        on[0] = False
        Path(out).write_text(json.dumps({"counts": counts, "slow": slow, "gcs": gcs, "trips": trips,
                                               "requests": requests, "flushes": flushes, "lateness": lateness,
                                               "flush_steps": flush_steps,
                                               "writer": writer}))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from proxy.cli import main as cli_main

    sys.exit(cli_main(argv))


def _overlaps(start: float, took: float, spans: list) -> float:
    end = start + took
    return sum(max(0.0, min(end, s + d) - max(start, s)) for s, d, *_ in spans)


def _tail(requests: list, spans: dict[str, list]) -> None:
    """The requests' time in the application, and what overlapped its slowest 1%."""
    if not requests:
        return
    took = sorted(r[1] for r in requests)
    n = len(took)
    print(f"  in the application (ms): p50 {took[n // 2] * 1e3:.3f}  p90 {took[n * 9 // 10] * 1e3:.3f}  "
          f"p99 {took[n * 99 // 100] * 1e3:.3f}  max {took[-1] * 1e3:.3f}")
    cut = took[n * 99 // 100]
    tail = [r for r in requests if r[1] >= cut]
    mid = sorted(requests, key=lambda r: r[1])[n * 45 // 100:n * 55 // 100]
    for label, group in (("the middle 10%", mid), ("the slowest 1%", tail)):
        k = len(group)
        print(f"  {label}: wall {sum(r[1] for r in group) / k * 1e3:.3f} ms, the loop thread's CPU "
              f"{sum(r[2] for r in group) / k * 1e3:.3f} ms, preempted (involuntary switches) "
              f"{sum(r[3] for r in group) / k:.2f}, in one or more: {sum(1 for r in group if r[3]) / k:.0%}; "
              f"voluntary switches {sum(r[4] for r in group) / k:.2f}")
    cpu = sorted(r[2] for r in requests)
    cpu_cut = cpu[n * 99 // 100]
    cpu_tail = [r for r in requests if r[2] >= cpu_cut]
    print(f"  the loop thread's CPU per request (ms): p50 {cpu[n // 2] * 1e3:.3f}  p90 {cpu[n * 9 // 10] * 1e3:.3f}  "
          f"p99 {cpu_cut * 1e3:.3f}  max {cpu[-1] * 1e3:.3f}; of the 1% slowest by wall, "
          f"{sum(1 for r in tail if r[2] >= cpu_cut)} are among the 1% costliest by CPU")
    for what, got in spans.items():
        if not got:
            continue  # (the writer's steps: asyncio's loop only)
        got = sorted(got)
        every = sum(1 for s, d, *_ in requests if _overlaps(s, d, got) > 0)
        slowest = sum(1 for s, d, *_ in tail if _overlaps(s, d, got) > 0)
        costliest = sum(1 for s, d, *_ in cpu_tail if _overlaps(s, d, got) > 0)
        apart = sorted(r[1] for r in requests if _overlaps(r[0], r[1], got) == 0)
        beside = sorted(r[1] for r in requests if _overlaps(r[0], r[1], got) > 0)
        if beside and apart:
            cpu_beside = sorted(r[2] for r in requests if _overlaps(r[0], r[1], got) > 0)
            print(f"  {what}: the requests beside one, p50 {beside[len(beside) // 2] * 1e3:.3f} ms (CPU "
                  f"{cpu_beside[len(cpu_beside) // 2] * 1e3:.3f}); the others' "
                  f"p50 {apart[len(apart) // 2] * 1e3:.3f}  p90 {apart[len(apart) * 9 // 10] * 1e3:.3f}  "
                  f"p99 {apart[len(apart) * 99 // 100] * 1e3:.3f} ms")
        print(f"  overlapped by a {what}: {slowest}/{len(tail)} of the slowest 1%, {costliest}/{len(cpu_tail)} of "
              f"the costliest 1% by CPU, {every}/{n} of all "
              f"({len(got)} of them, {sum(d for _, d, *_ in got) * 1e3:.1f} ms)")


def report(path: Path, requests: int, top: int) -> None:
    data = json.loads(path.read_text())
    counts, slow, gcs, trips = data["counts"], data["slow"], data["gcs"], data["trips"]
    total = sum(s for _, s in counts.values())
    print(f"  {total / requests * 1e6:8.1f} us/request in loop callbacks; by what ran (us/request, calls/request):")
    for name, (n, s) in sorted(counts.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"  {s / requests * 1e6:8.1f} {n / requests:7.3f}  {name}")
    gc_s = sum(d for _, d, _ in gcs)
    print(f"  gc: {len(gcs)} collections, {gc_s * 1e3:.1f} ms, longest "
          f"{max((d for _, d, _ in gcs), default=0) * 1e3:.2f} ms")
    trips = [(*t, 0.0, 0)[:4] for t in trips]  # (files written before trips had their CPU and checkpoint)
    trip_s = [t[1] for t in trips]
    print(f"  SQLite's thread: {len(trips)} trips, {sum(trip_s) * 1e3:.1f} ms, "
          f"longest {max(trip_s, default=0) * 1e3:.2f} ms; its CPU in them {sum(t[2] for t in trips) * 1e3:.1f} ms; "
          f"{sum(t[3] for t in trips)} checkpointed the WAL")
    if trips:
        k = len(trips)
        walls, cpus = sorted(trip_s), sorted(t[2] for t in trips)
        print(f"  a trip (ms): wall p50 {walls[k // 2] * 1e3:.3f} p90 {walls[k * 9 // 10] * 1e3:.3f}; CPU p50 "
              f"{cpus[k // 2] * 1e3:.3f} p90 {cpus[k * 9 // 10] * 1e3:.3f}; the longest (wall, CPU, checkpoint):")
        for t in sorted(trips, key=lambda t: -t[1])[:5]:
            print(f"    {t[1] * 1e3:7.3f} {t[2] * 1e3:7.3f} {'yes' if t[3] else 'no'}")
    late = data.get("lateness", [])
    if late:
        k = len(late)
        waited = sorted(w for _, w, _ in late)
        took = sorted(d for _, _, d in late)
        print(f"  the writer's flushes: {k}, rows p50 {sorted(r for r, _, _ in late)[k // 2]} max "
              f"{max(r for r, _, _ in late)}; the oldest row's wait at the flush's start (ms) p50 "
              f"{waited[k // 2] * 1e3:.1f} max {waited[-1] * 1e3:.1f}; a flush (ms) p50 {took[k // 2] * 1e3:.1f} "
              f"max {took[-1] * 1e3:.1f}; wait + flush max {max(w + d for _, w, d in late) * 1e3:.1f}")
    slow.sort(key=lambda r: -r[1])
    print(f"  callbacks >= {KEEP_S * 1e3:.1f} ms: {len(slow)} ({len(slow) / requests:.2%} of requests); "
          "the slowest (ms, overlapped by gc ms, by SQLite's thread ms):")
    for start, took, name in slow[:top]:
        print(f"  {took * 1e3:7.3f} {_overlaps(start, took, gcs) * 1e3:6.3f} {_overlaps(start, took, trips) * 1e3:6.3f}"
              f"  {name}")
    _tail(data["requests"], {"SQLite trip": trips, "collection": gcs, "access log write": data["flushes"],
                            "writer step on the loop": data.get("writer", []),
                            "flush's work on the loop": data.get("flush_steps", [])})
    with_trip = [r for r in slow if _overlaps(r[0], r[1], trips) > 0]
    with_gc = [r for r in slow if _overlaps(r[0], r[1], gcs) > 0]
    steps = sorted(r[1] for r in data.get("writer", []))
    if steps:
        k = len(steps)
        print(f"  the writer's steps on the loop (ms): {k}, p50 {steps[k // 2] * 1e3:.3f}  p90 "
              f"{steps[k * 9 // 10] * 1e3:.3f}  max {steps[-1] * 1e3:.3f}; by where each ended (calls, mean ms, max):")
        ends: dict[str, list[float]] = defaultdict(list)
        for _, d, where in data["writer"]:
            ends[where].append(d)
        for where, ds in sorted(ends.items(), key=lambda kv: -sum(kv[1])):
            print(f"    {len(ds):5d} {sum(ds) / len(ds) * 1e3:7.3f} {max(ds) * 1e3:7.3f}  {where}")
    print(f"  of those: {len(with_trip)} overlap a SQLite trip, {len(with_gc)} a collection")


def main(argv: list[str] | None = None) -> int:
    p = probe_parser(__doc__, requests=5000, warmup=300, top=25)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/looptimes"))
    args = p.parse_args(argv)
    probe = Probe("looptimes", "benchmarks.looptimes:serve_probed", "TOLLWAY_LOOPTIMES", ".json", report)
    return run_probe(probe, args, args.out)


if __name__ == "__main__":
    sys.exit(main())

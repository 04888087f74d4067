"""Where a tollway target's Python time goes per request: cProfile in the target, by module.

``python -m benchmarks.pyprofile [--target tollway-full] [--scenarios latency,stream_whole_c1]
[--requests 2000] [--top 30]`` starts the mock and the target with a profiler that
SIGUSR1 switches on and SIGUSR2 off (writing ``OUT/pyprofile-TARGET-SCENARIO.prof``),
sends a warm-up, then ``--requests`` requests one at a time, and prints the
event loop thread's own time per module (``plugins/ledger.py``, ``aiohttp/web_protocol.py``
...) and the top functions. cProfile slows every Python call alike, so read the
shares as a ranking; ``benchmarks.instructions`` measures the totals.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from .procs import Children
from .progress import Progress
from .runner import run_loadgen, start_target
from .scenarios import PROFILES, jobs_for, with_overrides
from .targets import BENCH_KEY, builtin


def serve_profiled(argv: list[str]) -> None:
    """Run ``python -m proxy.cli ...`` (``argv`` after ``-m proxy.cli``) with the signal-driven profiler."""
    out = os.environ["TOLLWAY_PYPROFILE"]
    prof = cProfile.Profile()

    def on(_sig: int, _frame: object) -> None:
        prof.enable()

    def off(_sig: int, _frame: object) -> None:
        prof.disable()
        prof.dump_stats(out)

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    from proxy.cli import main as cli_main

    sys.exit(cli_main(argv))


def _module(filename: str) -> str:
    for marker in ("site-packages/", "/proxy/", "/plugins/", "lib/python3"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return (marker.strip("/") + "/" + tail) if marker in ("/proxy/", "/plugins/") else tail
    return filename or "~builtins"


def report(path: Path, requests: int, top: int) -> None:
    stats = pstats.Stats(str(path))
    by_module: Counter[str] = Counter()
    rows = []
    for (filename, line, name), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        by_module[_module(filename)] += tt
        rows.append((tt, ct, nc, f"{_module(filename)}:{line}:{name}"))
    total = sum(by_module.values())
    print(f"  {total / requests * 1e6:8.1f} us/request profiled (own time, event loop thread)")
    for mod, tt in by_module.most_common(top):
        print(f"  {tt / requests * 1e6:8.1f} us  {tt / total:6.1%}  {mod}")
    print("  top functions by own time (us/request own, cumulative, calls/request):")
    for tt, ct, nc, where in sorted(rows, reverse=True)[:top]:
        print(f"  {tt / requests * 1e6:8.1f} {ct / requests * 1e6:8.1f} {nc / requests:6.2f}  {where}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="tollway-full")
    p.add_argument("--scenarios", default="latency,stream_whole_c1")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--src", type=Path, help="run the target from this source tree")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/pyprofile"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    profile = with_overrides(PROFILES["full"], latency_requests=args.requests, warmup=args.warmup, max_seconds=3600)
    kids = Children(args.out)
    try:
        mock = kids.start_server("mock", [sys.executable, "-m", "benchmarks.serve_mock"])
        for label in (s.strip() for s in args.scenarios.split(",") if s.strip()):
            (_, job), = jobs_for(label, profile)
            target = builtin(args.target)
            if args.src is not None:
                target.src = args.src.resolve()
            out = (args.out / f"pyprofile-{target.name}-{label}.prof").resolve()
            out.unlink(missing_ok=True)
            os.environ["TOLLWAY_PYPROFILE"] = str(out)
            wrap = (sys.executable, "-c", "import sys; from benchmarks.pyprofile import serve_profiled; "
                    "serve_profiled(sys.argv[sys.argv.index('proxy.cli') + 1:])")
            start_target(kids, target, mock.url, args.out, None, wrap=wrap, timeout=60.0)
            if target.failed:
                print(f"pyprofile: {target.name} did not start: {target.failed}", file=sys.stderr)
                return 1
            base = {**job, "url": target.chat_url, "model": "bench",
                    "headers": {"Authorization": f"Bearer {BENCH_KEY}"}}
            run_loadgen({**base, "requests": args.warmup, "warmup": 0}, kids, None, Progress(1, quiet=True))
            os.kill(target.pid, signal.SIGUSR1)
            res = run_loadgen({**base, "warmup": 0}, kids, None, Progress(1, quiet=True))
            os.kill(target.pid, signal.SIGUSR2)
            for _ in range(100):
                if out.exists():
                    break
                time.sleep(0.1)
            time.sleep(0.5)
            for child in list(kids.children):
                if child.pid == target.pid:
                    kids.stop(child, timeout=60)
            print(f"{label} {target.name}: {res.get('ok', 0)} ok, {res.get('errors', 0)} errors")
            report(out, max(res.get("ok", 0), 1), args.top)
    finally:
        kids.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bytecodes and Python calls per request, per function, in a served target: a count, not a time.

``python -m benchmarks.opcounts [--target tollway-full | path/to/NAME.yaml] [--scenarios
latency,stream_whole_c1] [--requests 200] [--warmup 250] [--top 40] [--src DIR]`` starts the
mock and the target with a tracer that SIGUSR1 switches on (``sys.settrace`` with opcode
events, on the event loop's thread) and SIGUSR2 off (writing the counts), sends a warm-up,
then ``--requests`` requests one at a time, and prints the bytecodes and calls a request
per module and per function. The counts repeat exactly from run to run (no timer); they
rank the Python, not what its builtins and C extensions cost inside one bytecode
(``benchmarks.instructions`` measures that, the totals under callgrind).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from .instructions import target_named
from .procs import Children
from .progress import Progress
from .pyprofile import _module
from .runner import run_loadgen, start_target
from .scenarios import PROFILES, jobs_for, with_overrides
from .targets import BENCH_KEY


def serve_counted(argv: list[str]) -> None:
    """Run ``python -m proxy.cli ...`` (``argv`` after ``-m proxy.cli``) with the signal-driven counter."""
    out = os.environ["TOLLWAY_OPCOUNTS"]
    ops: Counter = Counter()
    calls: Counter = Counter()

    def local(frame, event, _arg):  # noqa: ANN001  (the trace protocol)
        if event == "opcode":
            ops[frame.f_code] += 1
        return local

    def glob(frame, event, _arg):  # noqa: ANN001
        if event != "call":
            return None
        frame.f_trace_opcodes = True
        calls[frame.f_code] += 1  # (a coroutine's every resumption is a "call" too)
        return local

    def on(_sig: int, _frame: object) -> None:
        sys.settrace(glob)

    def off(_sig: int, _frame: object) -> None:
        sys.settrace(None)
        rows = [[c.co_filename, c.co_firstlineno, c.co_qualname, ops[c], calls[c]] for c in set(ops) | set(calls)]
        Path(out).write_bytes(orjson.dumps(rows))

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    from proxy.cli import main as cli_main

    sys.exit(cli_main(argv))


def report(path: Path, requests: int, top: int) -> None:
    rows = orjson.loads(path.read_bytes())
    by_module: Counter[str] = Counter()
    for filename, _line, _name, n, _calls in rows:
        by_module[_module(filename)] += n
    total = sum(by_module.values())
    print(f"  {total / requests:8.0f} bytecodes/request, "
          f"{sum(r[4] for r in rows) / requests:.0f} Python frames entered/request")
    for mod, n in by_module.most_common(top):
        print(f"  {n / requests:8.0f}  {n / total:6.1%}  {mod}")
    print("  functions (bytecodes/request, frames entered/request):")
    for filename, line, name, n, c in sorted(rows, key=lambda r: -r[3])[:top]:
        print(f"  {n / requests:8.1f} {c / requests:6.2f}  {_module(filename)}:{line}:{name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="tollway-full", help="a built-in target or a tollway config file (NAME.yaml)")
    p.add_argument("--scenarios", default="latency,stream_whole_c1")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--warmup", type=int, default=250)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--src", type=Path, help="run the target from this source tree")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/opcounts"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    profile = with_overrides(PROFILES["full"], latency_requests=args.requests, warmup=args.warmup, max_seconds=3600)
    kids = Children(args.out)
    try:
        mock = kids.start_server("mock", [sys.executable, "-m", "benchmarks.serve_mock"])
        for label in (s.strip() for s in args.scenarios.split(",") if s.strip()):
            (_, job), = jobs_for(label, profile)
            target = target_named(args.target)
            if args.src is not None:
                target.src = args.src.resolve()
            out = (args.out / f"opcounts-{target.name}-{label}.json").resolve()
            out.unlink(missing_ok=True)
            os.environ["TOLLWAY_OPCOUNTS"] = str(out)
            wrap = (sys.executable, "-c", "import sys; from benchmarks.opcounts import serve_counted; "
                    "serve_counted(sys.argv[sys.argv.index('proxy.cli') + 1:])")
            start_target(kids, target, mock.url, args.out, None, wrap=wrap, timeout=60.0)
            if target.failed:
                print(f"opcounts: {target.name} did not start: {target.failed}", file=sys.stderr)
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

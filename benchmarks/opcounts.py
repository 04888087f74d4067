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

import os
import signal
import sys
from collections import Counter
from pathlib import Path

import orjson

from .probe import Probe, probe_parser, run_probe
from .pyprofile import _module


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
    p = probe_parser(__doc__, requests=200, warmup=250, top=40)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/opcounts"))
    args = p.parse_args(argv)
    probe = Probe("opcounts", "benchmarks.opcounts:serve_counted", "TOLLWAY_OPCOUNTS", ".json", report)
    return run_probe(probe, args, args.out)


if __name__ == "__main__":
    sys.exit(main())

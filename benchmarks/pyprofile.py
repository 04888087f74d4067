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

import cProfile
import os
import pstats
import signal
import sys
from collections import Counter
from pathlib import Path

from .probe import Probe, probe_parser, run_probe


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
    p = probe_parser(__doc__, requests=2000, warmup=200, top=30)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/pyprofile"))
    args = p.parse_args(argv)
    probe = Probe("pyprofile", "benchmarks.pyprofile:serve_profiled", "TOLLWAY_PYPROFILE", ".prof", report)
    return run_probe(probe, args, args.out)


if __name__ == "__main__":
    sys.exit(main())

"""Where a target's time goes under load: py-spy on the target while the load generator runs.

``python -m benchmarks.profile [--target tollway-full] [--scenario throughput]
[--seconds 15] [--top 25]`` starts the mock and the target (pinned as in the
benchmark), runs the scenario's load for ``--seconds``, samples the target
with ``py-spy record --nonblocking`` (so sampling does not stop the target),
and prints the functions ranked by on-CPU time: self (the function's own
code) and total (with what it calls). The collapsed stacks are kept
(``OUT/profile-TARGET-SCENARIO.txt``) for a flame graph (e.g. speedscope).
py-spy is not a dependency: ``pip install py-spy``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .procs import Children, cpu_plan
from .progress import Progress
from .runner import run_loadgen, start_target
from .scenarios import PROFILES, jobs_for, with_overrides
from .targets import BENCH_KEY, builtin, tollway_target


def rank(collapsed: str) -> tuple[int, Counter, Counter]:
    """(samples, self counts, total counts) per frame from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[_short(frames[-1])] += n
        for frame in {_short(f) for f in frames}:
            total[frame] += n
    return samples, own, total


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``file.py:func`` (line numbers dropped, paths shortened)."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{name}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="tollway-full")
    p.add_argument("--config", type=Path, help="profile this tollway config (named --target) instead of a built-in")
    p.add_argument("--scenario", default="throughput",
                   choices=("throughput", "stream", "latency", "stream_whole", "stream_whole_c1"))
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--no-pin", action="store_true")
    args = p.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        print("profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    target = tollway_target(args.target, args.config.resolve()) if args.config else builtin(args.target)
    if target.skip:
        print(f"profile: {target.name} skipped: {target.skip}", file=sys.stderr)
        return 2
    profile = with_overrides(PROFILES["full"], throughput_seconds=args.seconds + 2, stream_seconds=args.seconds + 2,
                             latency_requests=10**6, max_seconds=args.seconds + 2)
    (_, job), = jobs_for(args.scenario, profile)
    cpus = cpu_plan(not args.no_pin)
    kids = Children(args.out)
    collapsed = args.out / f"profile-{target.name}-{args.scenario}.txt"
    try:
        mock = kids.start_server("mock", [sys.executable, "-m", "benchmarks.serve_mock"], cpus=cpus["mock"])
        start_target(kids, target, mock.url, args.out, cpus["target"])
        if target.failed:
            print(f"profile: {target.name} failed: {target.failed}", file=sys.stderr)
            return 1
        job = {**job, "url": target.chat_url, "model": "bench", "headers": {"Authorization": f"Bearer {BENCH_KEY}"},
               "warmup": 0}
        spy = kids.spawn("py-spy", [pyspy, "record", "--nonblocking", "-r", str(args.rate), "-d",
                                    str(int(args.seconds)), "-f", "raw", "-o", str(collapsed), "-p", str(target.pid)],
                         cpus=cpus["loadgen"])
        time.sleep(0.5)
        res = run_loadgen(job, kids, cpus["loadgen"], Progress(1, quiet=True))
        try:
            spy.popen.wait(args.seconds + 30)
        except subprocess.TimeoutExpired:
            pass
    finally:
        kids.stop_all()
    print(f"{target.name} {args.scenario}: {res.get('rps', 0):.0f} req/s, errors {res.get('errors')} "
          f"(under py-spy; lower than the benchmark's)")
    samples, own, total = rank(collapsed.read_text() if collapsed.exists() else "")
    if not samples:
        print("profile: py-spy collected no samples (is ptrace allowed?)", file=sys.stderr)
        return 1
    print(f"{samples} on-CPU samples; collapsed stacks: {collapsed}\n")
    print(f"{'self %':>7} {'total %':>8}  function")
    for frame, n in own.most_common(args.top):
        print(f"{100 * n / samples:7.1f} {100 * total[frame] / samples:8.1f}  {frame}")
    print(f"\n{'total %':>8}  function (inclusive, tollway and plugins only)")
    ours = [(f, n) for f, n in total.most_common() if f.startswith(("proxy/", "plugins/", "benchmarks/"))]
    for frame, n in ours[:args.top]:
        print(f"{100 * n / samples:8.1f}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

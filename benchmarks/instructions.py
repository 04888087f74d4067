"""Instructions per request under callgrind: a cost that the machine's noise cannot move.

``python -m benchmarks.instructions [--targets floor,tollway-full] [--scenarios latency,stream_whole_c1]
[--requests 400] [--baseline DIR]`` starts the mock (natively) and each target under
``valgrind --tool=callgrind`` with instrumentation off (start-up runs at near native
speed and is not counted), sends a warm-up, switches instrumentation on
(``callgrind_control -i on``), sends ``--requests`` requests one at a time, switches
it off, and reads the instructions counted (every thread: the event
loop, the ledger's SQLite thread, the tokenizer's). It prints instructions per
request per target and job, and the ratio to the floor's. On a shared machine
req/s swings 15% between rounds; these counts repeat within about 1%.

The callgrind files stay in ``--out`` (``callgrind_annotate FILE`` ranks the
functions; Python frames show as the interpreter's C functions).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .procs import Children
from .progress import Progress
from .runner import run_loadgen, start_target
from .scenarios import PROFILES, jobs_for, with_overrides
from .targets import BENCH_KEY, Target, baseline_targets, builtin, tollway_target

TOTALS = re.compile(rb"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


def callgrind_argv(out: Path, name: str, threads: bool = False) -> tuple[str, ...]:
    return ("valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no",
            *(("--separate-threads=yes",) if threads else ()),
            f"--callgrind-out-file={out / f'callgrind-{name}.out'}",
            f"--log-file={out / f'valgrind-{name}.log'}")  # its banner quotes the upstream's URL: not in the log read


def toggle(pid: int, on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def switched_load(job: dict, target: Target, warmup: int, kids: Children,
                  switch: Callable[[bool], None]) -> dict:
    """Warm ``target`` up with ``warmup`` requests of ``job``, then run ``job`` between
    ``switch(True)`` and ``switch(False)`` (a probe or callgrind counting only those): the
    load generator's result."""
    base = {**job, "url": target.chat_url, "model": "bench", "headers": {"Authorization": f"Bearer {BENCH_KEY}"}}
    run_loadgen({**base, "requests": warmup, "warmup": 0}, kids, None, Progress(1, quiet=True))
    switch(True)
    try:
        return run_loadgen({**base, "warmup": 0}, kids, None, Progress(1, quiet=True))
    finally:
        switch(False)


def instructions(path: Path) -> int:
    """The instructions a callgrind file counted (the sum over its parts, one per thread or dump)."""
    total = 0
    for part in sorted(path.parent.glob(path.name + "*")):
        total += sum(int(m) for m in TOTALS.findall(part.read_bytes()))
    return total


def per_thread(path: Path) -> list[int]:
    """Instructions per thread (with ``--threads``: one file per thread), the event loop's first."""
    counts = [sum(int(m) for m in TOTALS.findall(part.read_bytes()))
              for part in sorted(path.parent.glob(path.name + "*"))]
    return [c for c in counts if c]


def target_named(name: str) -> Target:
    """A built-in target, or tollway serving a config file (``path/to/NAME.yaml``: target NAME)."""
    if name.endswith((".yaml", ".yml")):
        return tollway_target(Path(name).stem, Path(name).resolve())
    return builtin(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="floor,tollway-core,tollway-full",
                   help="built-in target names or tollway config files (NAME.yaml)")
    p.add_argument("--scenarios", default="latency,stream_whole_c1",
                   help="one-at-a-time jobs of the benchmark (latency: non-stream; stream_whole_c1: one-write streams)")
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--baseline", type=Path, help="also run each tollway target from this source tree (NAME@base)")
    p.add_argument("--threads", action="store_true",
                   help="count each thread apart (the event loop, the ledger's SQLite thread, ...)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/callgrind"))
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    # Absolute: a --baseline target runs from its own tree, and a relative path there wrote its
    # counts under DIR while they were read here (the base reported 0 instructions).
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    targets = [target_named(n.strip()) for n in args.targets.split(",") if n.strip()]
    if args.baseline is not None:
        targets += baseline_targets(targets, args.baseline)
    for slot, target in enumerate(targets, 1):
        target.slot = slot
    profile = with_overrides(PROFILES["full"], latency_requests=args.requests, warmup=args.warmup, max_seconds=3600)
    jobs = [job for s in args.scenarios.split(",") for _, job in jobs_for(s.strip(), profile)]
    labels = [s.strip() for s in args.scenarios.split(",")]
    counts: dict[str, dict[str, float]] = {}
    kids = Children(args.out)
    try:
        mock = kids.start_server("mock", [sys.executable, "-m", "benchmarks.serve_mock"])
        for target in targets:
            for label, job in zip(labels, jobs, strict=True):
                name = f"{target.name}-{label}"
                for old in args.out.glob(f"callgrind-{name}.out*"):
                    old.unlink()
                start_target(kids, target, mock.url, args.out, None, wrap=callgrind_argv(args.out, name, args.threads),
                             timeout=600.0)
                if target.failed:
                    print(f"instructions: {target.name} did not start: {target.failed}", file=sys.stderr)
                    return 1
                pid = target.pid
                res = switched_load(job, target, args.warmup, kids, lambda on, pid=pid: toggle(pid, on))
                for child in list(kids.children):
                    if child.pid == target.pid:
                        kids.stop(child, timeout=120)
                ok = res.get("ok", 0)
                ir = instructions(args.out / f"callgrind-{name}.out")
                counts.setdefault(label, {})[target.name] = ir / ok if ok else float("nan")
                print(f"{label:16} {target.name:22} {ir / max(ok, 1):12,.0f} instructions/request "
                      f"({ok} ok, {res.get('errors', 0)} errors)", flush=True)
                if args.threads:
                    parts = per_thread(args.out / f"callgrind-{name}.out")
                    print(f"{'':16} {'':22} per thread: " + ", ".join(f"{c / max(ok, 1):,.0f}" for c in parts))
    finally:
        kids.stop_all()
    print()
    for label, by_target in counts.items():
        floor = by_target.get("floor")
        print(label)
        for name, ir in by_target.items():
            x = f"{ir / floor:6.3f}x floor" if floor else ""
            print(f"  {name:22} {ir:12,.0f}  {x}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run served targets under a probe that signals switch on and off, one scenario at a time.

The driver shared by ``benchmarks.pyprofile`` (cProfile) and ``benchmarks.opcounts``
(bytecode counts): it starts the mock and the target through the probe's ``serve``
function (which installs SIGUSR1: on, SIGUSR2: off and write the file named by the
probe's environment variable), sends a warm-up, switches the probe on for ``--requests``
requests one at a time, switches it off, stops the target and has the probe report.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .instructions import switched_load, target_named
from .procs import Children
from .runner import start_target
from .scenarios import PROFILES, jobs_for, with_overrides


@dataclass(frozen=True)
class Probe:
    name: str  # the tool's name: its output files' prefix and its messages'
    serve: str  # "module:function" that serves ``python -m proxy.cli`` arguments under the probe
    env: str  # the environment variable naming the file the probe writes when switched off
    suffix: str  # that file's suffix
    report: Callable[[Path, int, int], None]  # (file, requests measured, top N): prints


def probe_parser(doc: str, requests: int, warmup: int, top: int) -> argparse.ArgumentParser:
    """The command line every probe takes."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--target", default="tollway-full", help="a built-in target or a tollway config file (NAME.yaml)")
    p.add_argument("--scenarios", default="latency,stream_whole_c1")
    p.add_argument("--requests", type=int, default=requests)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--top", type=int, default=top)
    p.add_argument("--src", type=Path, help="run the target from this source tree")
    return p


def run_probe(probe: Probe, args: argparse.Namespace, out_dir: Path) -> int:
    """Each of ``args.scenarios`` on ``args.target`` under ``probe``; 1 when the target did not start."""
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = with_overrides(PROFILES["full"], latency_requests=args.requests, warmup=args.warmup, max_seconds=3600)
    module, function = probe.serve.split(":")
    wrap = (sys.executable, "-c", f"import sys; from {module} import {function}; "
            f"{function}(sys.argv[sys.argv.index('proxy.cli') + 1:])")
    kids = Children(out_dir)
    try:
        mock = kids.start_server("mock", [sys.executable, "-m", "benchmarks.serve_mock"])
        for label in (s.strip() for s in args.scenarios.split(",") if s.strip()):
            (_, job), = jobs_for(label, profile)
            target = target_named(args.target)
            if args.src is not None:
                target.src = args.src.resolve()
            out = (out_dir / f"{probe.name}-{target.name}-{label}{probe.suffix}").resolve()
            out.unlink(missing_ok=True)
            os.environ[probe.env] = str(out)
            start_target(kids, target, mock.url, out_dir, None, wrap=wrap, timeout=60.0)
            if target.failed:
                print(f"{probe.name}: {target.name} did not start: {target.failed}", file=sys.stderr)
                return 1
            pid = target.pid
            res = switched_load(job, target, args.warmup, kids,
                                lambda on, pid=pid: os.kill(pid, signal.SIGUSR1 if on else signal.SIGUSR2))
            for _ in range(100):
                if out.exists():
                    break
                time.sleep(0.1)
            time.sleep(0.5)
            for child in list(kids.children):
                if child.pid == target.pid:
                    kids.stop(child, timeout=60)
            print(f"{label} {target.name}: {res.get('ok', 0)} ok, {res.get('errors', 0)} errors")
            probe.report(out, max(res.get("ok", 0), 1), args.top)
    finally:
        kids.stop_all()
    return 0

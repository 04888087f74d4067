"""The orchestration: start the mock and the targets, run every job, stop everything.

Order of work: every target is started once, up front, and stays idle until
its turn. Then, round after round, each job runs against each target in turn
(interleaved, so slow drift of a shared machine spreads over all targets),
and the soak runs last, once per target. Each job is a fresh load generator
process. Every child is stopped in ``finally``, so also on Ctrl-C or error.
"""

from __future__ import annotations

import os
import platform
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from proxy.processes import process_running

from .procs import Children, StartError, cpu_plan
from .progress import Progress
from .scenarios import Profile, jobs_for
from .schemas import create_schemas
from .stats import cpu_seconds, median_of_rounds, rss_mb
from .targets import BENCH_KEY, Target, argv_for, env_for, runs_on


@dataclass
class Plan:
    profile_name: str
    profile: Profile
    targets: list[Target]
    scenarios: list[str]
    outdir: Path
    pin: bool = True
    model: str = "bench"
    quiet: bool = False
    command: str = ""
    stamp: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S"))


def run(plan: Plan) -> dict:
    """Run the plan; return the raw report data (see ``report.build``)."""
    logdir = plan.outdir / f"logs-{plan.stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    cpus = cpu_plan(plan.pin)
    children = Children(logdir)
    per_round = [(s, label, job) for s in plan.scenarios if s != "soak" for label, job in jobs_for(s, plan.profile)]
    soak = jobs_for("soak", plan.profile) if "soak" in plan.scenarios else []
    live = [t for t in plan.targets if not t.skip]
    on = {s: runs_on(s, live) for s in plan.scenarios}
    idle = [t for t in live if not any(t in ts for ts in on.values())]
    live = [t for t in live if t not in idle]
    progress = Progress(sum(len(on[s]) for s, _, _ in per_round) * plan.profile.rounds
                        + len(soak) * len(on.get("soak", [])), quiet=plan.quiet)
    results: dict[str, dict[str, list[dict]]] = {}
    started = time.time()
    try:
        mock = children.start_server("mock", [sys.executable, "-m", "benchmarks.serve_mock"], cpus=cpus["mock"])
        for t in plan.targets:
            if t.skip:
                progress.note(f"{t.name}: skipped: {t.skip}")
                continue
            if t in idle:
                t.skip = f"none of the scenarios {', '.join(plan.scenarios)} runs on it"
                progress.note(f"{t.name}: not started: {t.skip}")
                continue
            start_target(children, t, mock.url, logdir, cpus["target"])
            if t.failed:
                progress.note(f"{t.name}: FAILED to start: {t.failed}")
        for round_no in range(plan.profile.rounds):
            for scenario, label, job in per_round:
                for t in round_order(on[scenario], round_no):
                    run_one(plan, t, scenario, label, job, cpus, logdir, progress, children, results)
        for label, job in soak:
            for t in on["soak"]:
                run_one(plan, t, "soak", label, {**job, "rss_pid": t.pid}, cpus, logdir, progress, children,
                        results)
    finally:
        children.stop_all()
    return {
        "meta": meta(plan, cpus, started),
        "targets": {t.name: {"kind": t.kind, "url": t.url, "config": str(t.config) if t.config else None,
                             "skipped": t.skip, "failed": t.failed, "cache": t.cache,
                             **({"scenarios": list(t.scenarios)} if t.scenarios is not None else {})}
                    for t in plan.targets},
        "labels": {label: scenario for scenario, label, _ in per_round} | {label: "soak" for label, _ in soak},
        "runs": results,
        "results": {label: {name: median_of_rounds(rounds) for name, rounds in by_target.items()}
                    for label, by_target in results.items()},
    }


def round_order(targets: list[Target], round_no: int) -> list[Target]:
    """The targets of one job in round ``round_no``, rotated by one place a round: the same
    code measured 4-8% cheaper in a later slot of a round than in an earlier one (the machine
    warm from the job before), so a fixed order favoured whoever came last, ``@base`` targets
    included. Rotated, each target takes each slot in turn (with at least as many rounds as
    targets), and the medians compare like with like."""
    if not targets:
        return targets
    shift = round_no % len(targets)
    return targets[shift:] + targets[:shift]


def start_target(children: Children, t: Target, upstream: str, logdir: Path, cpus: set[int] | None,
                 wrap: tuple[str, ...] = (), timeout: float = 30.0) -> None:
    """Start ``t`` (its command after ``wrap``, e.g. valgrind's) and wait until it listens."""
    if t.kind == "url":
        return
    env = env_for(t, upstream, logdir)
    try:
        if t.config is not None:
            create_schemas(t.config, env)
    except Exception as exc:  # the target cannot start without them: say why, in one line
        t.failed = f"could not create the PostgreSQL schema its storage.url names: {type(exc).__name__}: {exc}"
        return
    try:
        child = children.start_server(t.name, [*wrap, *argv_for(t, upstream)], cpus=cpus,
                                      env=env, cwd=t.src, timeout=timeout)
    except StartError as exc:
        t.failed = str(exc)
        return
    t.pid = child.pid
    t.url = child.url + "/v1"
    if t.workers > 1:
        _wait_for_workers(children, child, t, timeout)


def _wait_for_workers(children: Children, child, t: Target, timeout: float) -> None:
    """``tollway serve --workers N`` says it listens before its workers do: wait until N
    sockets listen on its port (each worker has its own, SO_REUSEPORT)."""
    port = int(child.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening_sockets(port) >= t.workers:
            return
        if child.popen.poll() is not None:
            break
        time.sleep(0.05)
    t.failed = f"{t.workers} workers did not all listen on port {port} within {timeout:g}s: {child.log_tail()}"
    children.stop(child)


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on ``port`` (Linux /proc/net/tcp; state 0A is LISTEN)."""
    suffix = f":{port:04X}"
    try:
        with open("/proc/net/tcp", encoding="ascii") as fh:
            return sum(1 for line in fh if (f := line.split()) and f[1].endswith(suffix) and f[3] == "0A")
    except OSError:
        return 0


def run_one(plan: Plan, t: Target, scenario: str, label: str, job: dict, cpus: dict, logdir: Path,
            progress: Progress, children: Children, results: dict) -> None:
    progress.job(label, t.name)
    if t.failed:
        progress.done("skipped (target failed)")
        return
    if t.pid is not None and not process_running(t.pid):
        t.failed = f"the process exited during the run; see {logdir / (t.name + '.log')}"
        progress.done("target died")
        return
    job = {**job, "url": t.chat_url, "model": plan.model, "headers": {"Authorization": f"Bearer {BENCH_KEY}"}}
    cpu_before = cpu_seconds(t.pid) if t.pid else None
    try:
        res = run_loadgen(job, children, cpus["loadgen"], progress)
    except LoadgenError as exc:
        res = {"requests": 0, "ok": 0, "errors": 1, "error_kinds": {"loadgen": str(exc)}}
    cpu_after = cpu_seconds(t.pid) if t.pid else None
    sent = res.get("requests", 0) + res.get("warmup", 0)
    if cpu_before is not None and cpu_after is not None and sent:
        res["cpu_us_per_req"] = (cpu_after - cpu_before) / sent * 1e6
    res["target_rss_mb"] = rss_mb(t.pid) if t.pid else None
    results.setdefault(label, {}).setdefault(t.name, []).append(res)
    lat = res.get("latency_ms") or {}
    progress.done(f"{res.get('rps', 0):8.0f} req/s  p50 {lat.get('p50', float('nan')):7.3f} ms  "
                  f"p99 {lat.get('p99', float('nan')):7.3f} ms  errors {res.get('errors', 0)}")


class LoadgenError(RuntimeError):
    pass


def run_loadgen(job: dict, children: Children, cpus: set[int] | None, progress: Progress) -> dict:
    """Run one job in a load generator process; bounded by the job's own limits plus a margin."""
    cap = float(job.get("duration", 60)) + float(job.get("grace", 0)) + 90.0
    child = children.spawn("loadgen", [sys.executable, "-m", "benchmarks.loadgen", orjson.dumps(job).decode()],
                           cpus=cpus, stdout=subprocess.PIPE)
    deadline = time.monotonic() + cap
    result = None
    buf = b""
    sel = selectors.DefaultSelector()
    sel.register(child.popen.stdout, selectors.EVENT_READ)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LoadgenError(f"no result within {cap:.0f}s")
            if not sel.select(min(left, 1.0)):
                continue
            data = os.read(child.popen.stdout.fileno(), 65536)
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = orjson.loads(line)
                if "progress" in msg:
                    progress.update(msg["progress"], msg["of"])
                elif "result" in msg:
                    result = msg["result"]
        child.popen.wait(10)
    finally:
        sel.close()
        child.popen.stdout.close()
        children.stop(child)
    if result is None:
        raise LoadgenError(f"the load generator exited ({child.popen.returncode}) without a result: "
                           f"{child.log_tail(3)}")
    return result


def meta(plan: Plan, cpus: dict, started: float) -> dict:
    uname = platform.uname()
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "command": plan.command,
        "profile": plan.profile_name,
        "settings": {k: v for k, v in plan.profile.__dict__.items()},
        "rounds": plan.profile.rounds,
        "machine": {"cpu": model, "cpus": os.cpu_count(), "system": f"{uname.system} {uname.release}",
                    "python": platform.python_version()},
        "pinning": {role: sorted(c) if c else None for role, c in cpus.items()},
    }

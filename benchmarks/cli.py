"""``tollway bench`` / ``python -m benchmarks``: the whole benchmark in one command.

Writes ``OUT/bench-STAMP.json`` (and ``OUT/latest.json``), a PNG of latency
versus load next to it, child logs in ``OUT/logs-STAMP/``, and prints the
table. Exit status: 0 when every target ran, 1 when one failed, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

import orjson

from . import report
from .plot import plot
from .runner import Plan, run
from .scenarios import DESCRIPTIONS, PROFILES, SCENARIOS, with_overrides
from .targets import BUILTIN_TARGETS, FLEET_TARGETS, Target, baseline_targets, builtin, parse_named, tollway_target

DEFAULT_OUT = Path("benchmarks/results")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tollway bench", description="Measure tollway's added latency and throughput against a bare floor.",
        epilog="scenarios: " + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items()))
    p.add_argument("--profile", choices=sorted(PROFILES), default="full",
                   help="how long and how hard (default: full, ~12 minutes; quick: ~2; smoke: seconds)")
    p.add_argument("--quick", action="store_const", const="quick", dest="profile", help="same as --profile quick")
    p.add_argument("--targets", default=",".join(BUILTIN_TARGETS),
                   help=f"comma-separated built-in targets (default: {','.join(BUILTIN_TARGETS)}; also "
                        f"{', '.join(FLEET_TARGETS)}: Redis and PostgreSQL on this machine)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated (default: all: "
                                                                       f"{','.join(SCENARIOS)})")
    p.add_argument("--config", action="append", default=[], metavar="[NAME=]FILE",
                   help="an extra tollway config to measure (its provider can use ${TOLLWAY_BENCH_UPSTREAM})")
    p.add_argument("--workers", action="append", default=[], metavar="NAME=N",
                   help="serve the tollway target NAME with N worker processes (tollway serve --workers N, on a "
                        "free port the harness picks); its CPU per request counts every worker")
    p.add_argument("--url", action="append", default=[], metavar="[NAME=]URL",
                   help="an external gateway's OpenAI base URL (…/v1) on 127.0.0.1, already running in front "
                        "of nothing the harness knows: give it an upstream of your own")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="also run each tollway target from the source tree DIR (named NAME@base), for a "
                        "before/after in one run; e.g. mkdir DIR && git archive HEAD proxy plugins | tar -x -C DIR")
    p.add_argument("--model", default="bench", help="the model name to ask for (default: bench)")
    p.add_argument("--rounds", type=int, help="repeat every job this many times; the table shows medians")
    p.add_argument("--concurrency", type=int, help="connections in the throughput run")
    p.add_argument("--rates", help="comma-separated offered rates for the sweep, e.g. 500,1000,2000")
    p.add_argument("--rate", type=float, help="the sweep rate shown in the table")
    p.add_argument("--soak", type=int, help="requests in the soak (RSS is read after N/10 and N)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return p


def make_plan(args: argparse.Namespace, argv: list[str]) -> Plan:
    profile = PROFILES[args.profile]
    rates = tuple(float(r) for r in args.rates.split(",")) if args.rates else None
    profile = with_overrides(profile, rounds=args.rounds, concurrency=args.concurrency, rates=rates,
                             reference_rate=args.rate or (rates[len(rates) // 2] if rates else None),
                             soak_requests=args.soak)
    if profile.reference_rate not in profile.rates:
        profile = with_overrides(profile, rates=tuple(sorted({*profile.rates, profile.reference_rate})))
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            raise ValueError(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    targets = [builtin(n.strip()) for n in args.targets.split(",") if n.strip()]
    for spec in args.config:
        name, path = parse_named(spec, "tollway-")
        targets.append(tollway_target(name, Path(path).resolve()))
    for spec in args.workers:
        name, _, count = spec.partition("=")
        target = next((t for t in targets if t.name == name.strip() and t.kind == "tollway"), None)
        if target is None or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"--workers {spec}: expected NAME=N with NAME a tollway target of this run")
        target.workers = int(count)
    for i, spec in enumerate(args.url):
        name, url = parse_named(spec, f"external{i + 1 if len(args.url) > 1 else ''}")
        if not url.startswith("http://127.0.0.1"):
            raise ValueError(f"--url {url}: the benchmark only sends traffic to 127.0.0.1")
        targets.append(Target(name, "url", url=url))
    if args.baseline is not None:
        if not (args.baseline / "proxy").is_dir():
            raise ValueError(f"--baseline {args.baseline}: no proxy/ package there")
        targets += baseline_targets(targets, args.baseline)
    for slot, t in enumerate(targets, 1):
        t.slot = slot
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"target names must differ: {', '.join(names)}")
    return Plan(profile_name=args.profile, profile=profile, targets=targets, scenarios=scenarios,
                outdir=args.out, pin=not args.no_pin, model=args.model, quiet=args.quiet,
                command=shlex.join(["tollway", "bench", *argv]))


def _terminate(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        plan = make_plan(args, argv)
    except ValueError as exc:
        print(f"tollway bench: {exc}", file=sys.stderr)
        return 2
    plan.outdir.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM: stop the children, as Ctrl-C does
    try:
        data = report.derive(run(plan))
    finally:
        signal.signal(signal.SIGTERM, previous)
    stem = plan.outdir / f"bench-{plan.stamp}"
    blob = orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    stem.with_suffix(".json").write_bytes(blob)
    (plan.outdir / "latest.json").write_bytes(blob)
    print()
    print(report.table(data, plan.profile.reference_rate))
    print(f"\njson: {stem.with_suffix('.json')}")
    if not args.no_plot:
        print(plot(data, stem.with_suffix(".png")))
    failed = [n for n, t in data["targets"].items() if t["failed"]]
    for name in failed:
        print(f"{name}: FAILED: {data['targets'][name]['failed']}", file=sys.stderr)
    return 1 if failed else 0

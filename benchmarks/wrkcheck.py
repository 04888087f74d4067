"""Issue 10 item 12's budget measured the way the issue first measured it: nginx, wrk.

``python -m benchmarks.wrkcheck [--rounds 15] [--seconds 5] [--targets floor,tollway-full]
[--shapes stream,whole]`` serves the benchmark's answers from nginx as static files, each in one
write with a ``Content-Length`` (``stream``: the 52-event SSE answer of ``stream_whole``;
``whole``: the JSON answer of ``throughput``), puts each target in front of it and loads each with
``wrk`` at 64 connections, round after round, the targets' order alternating. nginx and wrk share
one CPU, the targets another (``procs.cpu_plan``), as in ``tollway bench``. It prints each round's
ratio to the floor's, their median and a distribution-free interval for it
(``report.rounds_verdict``), and writes them to ``OUT/wrkcheck-STAMP.json``.

nginx and wrk are not tollway's dependencies (Debian: ``apt-get install nginx-light wrk``);
``tollway bench`` measures the same shapes with its own mock and load generator. This is the
cross-check with third-party tools in C, whose own cost is not what is measured.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import orjson

from .loadgen import PROMPT
from .mock_upstream import MockSettings, render_completion, render_stream
from .procs import Child, Children, cpu_plan
from .report import BUDGET, rounds_verdict
from .runner import listening_sockets, round_order, start_target
from .scenarios import PROFILES
from .stats import cpu_seconds, median
from .targets import BENCH_KEY, Target, baseline_targets, builtin, free_port

#: The answers nginx serves: the benchmark's one-write stream and its non-stream answer.
SHAPES = ("stream", "whole")
PROMPT_TOKENS = 12  # what the answers' usage says (nginx does not read the request)
#: Where Debian puts nginx, for a PATH without it (a non-root user's).
SBIN = "/usr/sbin:/sbin"
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def answer(shape: str) -> bytes:
    """The bytes nginx serves for ``shape``: what the mock answers in that benchmark job."""
    if shape == "stream":
        mock = PROFILES["quick"].whole_mock
        return b"".join(render_stream("bench", mock["chunks"], mock["chunk_size"], PROMPT_TOKENS, True,
                                      mock.get("usage_null", False)))
    settings = MockSettings()
    return render_completion("bench", settings.chunks, settings.chunk_size, PROMPT_TOKENS)


def nginx_conf(workdir: Path, ports: dict[str, int]) -> str:
    """One server a shape, its answer a static file sent to a POST too (nginx's static module
    answers POST with 405: ``error_page`` turns that into the file, 200)."""
    servers = []
    for shape, port in ports.items():
        kind = "text/event-stream" if shape == "stream" else "application/json"
        servers.append(f"  server {{ listen 127.0.0.1:{port}; root {workdir / shape}; default_type {kind};\n"
                       f"           location / {{ error_page 405 =200 $uri; }} }}")
    return "\n".join([
        "daemon off;", "master_process off;", "worker_processes 1;", f"pid {workdir / 'nginx.pid'};",
        f"error_log {workdir / 'nginx-error.log'};", "events { worker_connections 4096; }", "http {",
        "  access_log off;", "  sendfile off;", "  keepalive_requests 100000000;", "  keepalive_timeout 600;",
        *servers, "}", ""])


def wrk_script(stream: bool) -> str:
    """wrk's Lua: the load generator's request (its prompt, max_tokens, the bench key)."""
    body = orjson.dumps({"model": "bench", "messages": PROMPT, "max_tokens": 256, "stream": stream}).decode()
    return (f'wrk.method = "POST"\nwrk.body = {orjson.dumps(body).decode()}\n'
            f'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {BENCH_KEY}"\n')


def parse_wrk(text: str) -> dict:
    """Requests a second, the requests answered, and the failures wrk counted (non-2xx answers,
    socket errors)."""
    rps = _RPS.search(text)
    requests = _REQUESTS.search(text)
    non_2xx = _NON_2XX.search(text)
    sock = _SOCKET_ERRORS.search(text)
    return {"rps": float(rps.group(1)) if rps else 0.0, "requests": int(requests.group(1)) if requests else 0,
            "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "socket_errors": sum(int(g) for g in sock.groups()) if sock else 0}


def run_wrk(kids: Children, wrk: str, url: str, script: Path, seconds: float, connections: int,
            cpus: set[int] | None, target_pid: int | None = None) -> dict:
    """One wrk run; with ``target_pid``, also the target's CPU time a request (µs, user + system,
    all its threads): the figure a noisy host disturbs least."""
    cpu_before = cpu_seconds(target_pid) if target_pid else None
    child = kids.spawn("wrk", [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script),
                               url], cpus=cpus, stdout=subprocess.PIPE)
    out, _ = child.popen.communicate(timeout=seconds + 60)
    kids.children.remove(child)
    result = parse_wrk(out.decode(errors="replace"))
    cpu_after = cpu_seconds(target_pid) if target_pid else None
    if cpu_before is not None and cpu_after is not None and result["requests"]:
        result["cpu_us_per_req"] = (cpu_after - cpu_before) / result["requests"] * 1e6
    return result


def wait_listening(nginx: Child, ports: Iterable[int], error_log: Path, timeout: float = 10.0) -> None:
    """Until nginx listens on every port; a clear error (its error log's end) when it exits or does not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(listening_sockets(port) for port in ports):
            return
        if nginx.popen.poll() is not None:
            break
        time.sleep(0.05)
    said = error_log.read_text(errors="replace").strip() if error_log.exists() else ""
    tail = "\n".join([*said.splitlines()[-3:], nginx.log_tail(3)]).strip()
    state = (f"exited with status {nginx.popen.returncode}" if nginx.popen.poll() is not None
             else f"did not listen within {timeout:g}s")
    raise RuntimeError(f"nginx {state}" + (f":\n{tail}" if tail else ""))


def measure(args: argparse.Namespace) -> dict:
    # (absolute: nginx reads a relative path from its own prefix, /usr/share/nginx, not from here)
    workdir = args.out.resolve() / f"wrkcheck-{time.strftime('%Y%m%d-%H%M%S')}"
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {shape: free_port() for shape in args.shapes}
    for shape in args.shapes:
        (workdir / shape / "v1" / "chat").mkdir(parents=True, exist_ok=True)
        (workdir / shape / "v1" / "chat" / "completions").write_bytes(answer(shape))
        (workdir / f"{shape}.lua").write_text(wrk_script(shape == "stream"))
    (workdir / "nginx.conf").write_text(nginx_conf(workdir, ports))
    cpus = cpu_plan(True)
    kids = Children(workdir)
    report: dict = {"rounds": args.rounds, "seconds": args.seconds, "connections": args.connections,
                    "workdir": str(workdir), "shapes": {}}
    try:
        error_log = workdir / "nginx-error.log"
        nginx = kids.spawn("nginx", [args.nginx, "-c", str(workdir / "nginx.conf"), "-e", str(error_log)],
                           cpus=cpus["mock"])
        wait_listening(nginx, ports.values(), error_log)
        for shape in args.shapes:
            upstream = f"http://127.0.0.1:{ports[shape]}"
            targets: list[Target] = [builtin(name) for name in args.targets]
            if args.baseline is not None:
                targets += baseline_targets(targets, args.baseline)
            for t in targets:
                t.name = f"{t.name}-{shape}"  # its log and ledger file in workdir
                start_target(kids, t, upstream, workdir, cpus["target"])
                if t.failed:
                    raise RuntimeError(f"{t.name} did not start: {t.failed}")
            script = workdir / f"{shape}.lua"
            for t in targets:  # warm-up, not counted
                run_wrk(kids, args.wrk, t.chat_url, script, 2, args.connections, cpus["loadgen"])
            runs: dict[str, list[dict]] = {t.name: [] for t in targets}
            for round_no in range(args.rounds):
                for t in round_order(targets, round_no):
                    runs[t.name].append(run_wrk(kids, args.wrk, t.chat_url, script, args.seconds,
                                                args.connections, cpus["loadgen"], t.pid))
                if not args.quiet:
                    print(f"{shape} round {round_no + 1}: " + "  ".join(
                        f"{t.name} {runs[t.name][-1]['rps']:.0f}/s" for t in targets), flush=True)
            report["shapes"][shape] = summary(runs, targets)
            for t in targets:
                kids.stop(next(c for c in kids.children if c.pid == t.pid))
    finally:
        kids.stop_all()
    return report


def summary(runs: dict[str, list[dict]], targets: list[Target]) -> dict:
    floor = targets[0].name
    out: dict = {"runs": runs, "targets": {}}
    for t in targets:
        rounds = runs[t.name]
        row: dict = {"rps": median(r["rps"] for r in rounds),
                     "failures": sum(r["non_2xx"] + r["socket_errors"] for r in rounds)}
        if cpu := [r["cpu_us_per_req"] for r in rounds if "cpu_us_per_req" in r]:
            row["cpu_us_per_req"] = median(cpu)
        if t.name != floor:
            pairs = list(zip(rounds, runs[floor], strict=True))
            ratios = [mine["rps"] / base["rps"] for mine, base in pairs if base["rps"]]
            row["ratios"] = ratios
            row.update(rounds_verdict(ratios, BUDGET["throughput_ratio"], True) if ratios else {})
            # the floor's CPU a request over the target's, per round (> 1: the target is the cheaper)
            if cpu_ratios := [base["cpu_us_per_req"] / mine["cpu_us_per_req"] for mine, base in pairs
                              if mine.get("cpu_us_per_req") and base.get("cpu_us_per_req")]:
                row["cpu_ratios"] = cpu_ratios
                row["cpu_rounds_median"] = median(cpu_ratios)
        out["targets"][t.name] = row
    return out


def table(report: dict) -> str:
    lines = [f"wrk -c{report['connections']}, {report['rounds']} rounds of {report['seconds']:g} s, nginx upstream "
             "(one write)"]
    for shape, s in report["shapes"].items():
        lines.append(f"{shape}:")
        for name, row in s["targets"].items():
            line = f"  {name:22s} {row['rps']:9.0f}/s  failures {row['failures']}"
            if "cpu_us_per_req" in row:
                line += f"  CPU {row['cpu_us_per_req']:.0f} us/req"
            if "margin" in row:
                lo, hi = row["interval"]
                line += (f"  x floor per round {' '.join(f'{r:.2f}' for r in row['ratios'])}\n"
                         f"  {'':22s} the rounds' median {row['rounds_median']:.3f}x, {row['coverage']:.0%} interval "
                         f"{lo:.3f} .. {hi:.3f}: {row['margin']} (want >= {BUDGET['throughput_ratio']}x)")
            if "cpu_rounds_median" in row:
                line += (f"\n  {'':22s} CPU a request, the floor's over this one's per round: the rounds' median "
                         f"{row['cpu_rounds_median']:.3f}x")
            lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.wrkcheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="floor,tollway-full",
                   help="comma-separated built-in targets, the floor first (default: floor,tollway-full)")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--seconds", type=float, default=5.0, help="each wrk run (whole seconds; at least 1)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="also run each tollway target from this source tree (NAME@base; e.g. "
                        "git archive OLD proxy plugins | tar -x -C DIR): before/after in one run")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    args.shapes = [s for s in args.shapes.split(",") if s]
    tools = {tool: shutil.which(tool) or shutil.which(tool, path=SBIN) for tool in ("nginx", "wrk")}
    missing = [tool for tool, path in tools.items() if path is None]
    if missing:
        print(f"wrkcheck: {' and '.join(missing)} not found: install them (Debian: apt-get install nginx-light wrk)",
              file=sys.stderr)
        return 2
    if args.targets[:1] != ["floor"] or len(args.targets) < 2:
        print("wrkcheck: --targets must start with floor and name at least one more", file=sys.stderr)
        return 2
    if bad := [s for s in args.shapes if s not in SHAPES]:
        print(f"wrkcheck: unknown shape(s) {', '.join(bad)}; known: {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("wrkcheck: --rounds must be at least 1", file=sys.stderr)
        return 2
    if args.baseline is not None and not (args.baseline / "proxy").is_dir():
        print(f"wrkcheck: --baseline {args.baseline}: no proxy/ package there", file=sys.stderr)
        return 2
    try:
        for name in args.targets:
            builtin(name)
    except ValueError as exc:
        print(f"wrkcheck: {exc}", file=sys.stderr)
        return 2
    args.nginx, args.wrk = tools["nginx"], tools["wrk"]
    try:
        report = measure(args)
    except RuntimeError as exc:  # nginx or a target did not start
        print(f"wrkcheck: {exc}", file=sys.stderr)
        return 1
    out = Path(report["workdir"]).with_suffix(".json")
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(table(report))
    print(f"json: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks.wrkcheck: the item 12 budget measured with nginx and wrk, end to end.

nginx and wrk come from Debian (.ci/run installs them); this fails, not skips, without them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from benchmarks import wrkcheck
from proxy.sse import split_events

ROOT = Path(__file__).resolve().parent.parent

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:41393/v1/chat/completions
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    18.20ms    4.01ms  52.31ms   80.12%
    Req/Sec     3.52k   201.33     3.90k    72.00%
  17514 requests in 5.00s, 181.46MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   3502.09
Transfer/sec:     36.29MB
"""


def test_wrk_output_is_read_for_the_rate_and_every_failure():
    assert wrkcheck.parse_wrk(WRK_OUTPUT) == {"rps": 3502.09, "requests": 17514, "non_2xx": 7, "socket_errors": 3}
    assert wrkcheck.parse_wrk("Requests/sec:   12.50\n") == {"rps": 12.5, "requests": 0, "non_2xx": 0,
                                                          "socket_errors": 0}


def test_nginx_serves_the_benchmarks_own_answers():
    events = split_events(wrkcheck.answer("stream"))
    assert len(events) == 54  # role, 50 pieces, stop, usage, [DONE]: the stream_whole job's answer
    assert events[-1] == b"data: [DONE]\n\n" and b'"usage":{' in events[-2]
    whole = orjson.loads(wrkcheck.answer("whole"))
    assert whole["object"] == "chat.completion" and whole["usage"]["completion_tokens"] == 8


def test_without_nginx_or_wrk_it_says_what_to_install(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.wrkcheck", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={"PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert "not found: install them (Debian: apt-get install nginx-light wrk)" in proc.stderr  # (wrk at least)


def test_an_nginx_that_cannot_start_is_named_with_what_it_said(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nginx").write_text("#!/bin/sh\necho 'nginx: [emerg] bind() to 127.0.0.1 failed' >&2\nexit 1\n")
    (fake / "nginx").chmod(0o755)
    (fake / "wrk").symlink_to(shutil.which("wrk"))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.wrkcheck", "--out", str(tmp_path), "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={"PATH": str(fake)})
    assert proc.returncode == 1, proc.stderr
    assert "wrkcheck: nginx exited with status 1" in proc.stderr and "[emerg] bind()" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["--targets", "floor,tollway-nope"], "unknown target 'tollway-nope'"),
    (["--targets", "tollway-full,floor"], "--targets must start with floor"),
    (["--shapes", "stream,paced"], "unknown shape(s) paced"),
    (["--rounds", "0"], "--rounds must be at least 1"),
])
def test_bad_arguments_get_a_message(argv, message, capsys):
    assert wrkcheck.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.early
def test_floor_and_tollway_full_behind_nginx_under_wrk(tmp_path):
    # --out relative to where it runs, as its default is (nginx must not read it from its own prefix)
    out = os.path.relpath(tmp_path, ROOT)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.wrkcheck", "--rounds", "1", "--seconds", "1",
                           "--out", out, "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = orjson.loads(next(tmp_path.glob("wrkcheck-*.json")).read_bytes())
    for shape in ("stream", "whole"):
        rows = report["shapes"][shape]["targets"]
        for name in (f"floor-{shape}", f"tollway-full-{shape}"):
            assert rows[name]["rps"] > 0 and rows[name]["failures"] == 0, (name, rows[name])
        ratio = rows[f"tollway-full-{shape}"]
        assert ratio["ratios"] == [pytest.approx(ratio["rps"] / rows[f"floor-{shape}"]["rps"])]
        # each target's CPU a request, from its own process's times over the requests wrk counted
        for name in (f"floor-{shape}", f"tollway-full-{shape}"):
            run = report["shapes"][shape]["runs"][name][0]
            assert run["requests"] > 0 and 1 < run["cpu_us_per_req"] < 1e6, (name, run)
        assert ratio["cpu_ratios"] == [pytest.approx(rows[f"floor-{shape}"]["cpu_us_per_req"]
                                                     / ratio["cpu_us_per_req"])]
        # tollway answered through its whole stack: each answer billed in its ledger, at the answers' usage
        db = sqlite3.connect(Path(report["workdir"]) / f"tollway-full-{shape}.db")
        billed = db.execute("select count(*), min(status), max(status), min(cost_micro_usd), min(prompt_tokens), "
                            "max(prompt_tokens), min(completion_tokens) from tollway_ledger").fetchone()
        db.close()
        completion = 50 if shape == "stream" else 8
        assert billed[0] > 0 and billed[1:] == (200, 200, billed[3], 12, 12, completion) and billed[3] > 0, billed
    assert "the rounds' median" in proc.stdout and "x floor per round" in proc.stdout and " us/req" in proc.stdout

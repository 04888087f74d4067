"""A short run of every scenario through the real entry point (``tollway bench``):
real processes (mock, targets, load generator), small counts, seconds.

Checks the shape of the JSON and that nothing failed; never how fast anything was.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from benchmarks.cli import main as bench_main
from benchmarks.procs import Children
from benchmarks.scenarios import SCENARIOS
from benchmarks.targets import CONFIGS, builtin, missing_plugins
from proxy.cli import build_parser, cmd_bench


def _descendants() -> set[int]:
    """Live processes whose parent is this one (zombies excluded)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == os.getpid():
            out.add(int(entry))
    return out


@pytest.mark.early
def test_smoke_run_of_every_scenario(tmp_path, capsys):
    before = _descendants()
    rc = bench_main(["--profile", "smoke", "--out", str(tmp_path), "--no-pin", "--no-plot", "--quiet"])
    out = capsys.readouterr()
    assert rc == 0, out.err

    data = orjson.loads((tmp_path / "latest.json").read_bytes())
    assert set(data) >= {"meta", "targets", "labels", "results", "runs", "budget"}
    assert data["meta"]["profile"] == "smoke"
    assert data["meta"]["machine"]["cpus"] >= 1

    full_missing = missing_plugins(CONFIGS / "full.yaml")
    expected = {"direct", "floor", "tollway-core"} | (set() if full_missing else {"tollway-full"})
    if full_missing:
        assert "plugins not available yet" in data["targets"]["tollway-full"]["skipped"]
        assert "tollway-full: skipped" in out.err
    assert not any(t["failed"] for t in data["targets"].values())
    cache_runs = builtin("tollway-cache").skip is None
    # the cache scenario: the target with the cache and the one compared with it; nothing else
    expected_cache = {"tollway-cache", "tollway-core" if full_missing else "tollway-full"} if cache_runs else set()

    assert set(data["labels"].values()) == set(SCENARIOS)
    for label, by_target in data["results"].items():
        if data["labels"][label] == "cache":
            assert set(by_target) == expected_cache, label
            continue
        assert set(by_target) == expected, label
        for name, res in by_target.items():
            where = f"{label} / {name}: {res.get('error_kinds')}"
            assert res["errors"] == 0, where
            assert res["ok"] > 0, where
            assert res["latency_ms"]["p50"] > 0, where
            for key in ("p50", "p90", "p99"):
                assert key in res["latency_ms"]
            assert "x_floor_rps" in res
            if name != "direct":
                assert "vs_direct_p50" in res["added_latency_ms"]
            assert res["target_rss_mb"] is None or res["target_rss_mb"] > 1
        if data["labels"][label] in ("stream", "stream_paced", "stream_whole", "stream_whole_c1"):
            assert all("ttfb_ms" in r and "gap_ms" in r for r in by_target.values())
        if data["labels"][label] == "soak":
            assert all(len(r["rss_mb"]) == 2 for r in by_target.values())

    if cache_runs:
        meant = {"cache_exact": "HIT", "cache_semantic": "SEMANTIC-HIT", "cache_miss": "MISS"}
        for label, status in meant.items():
            for name, res in data["results"][label].items():
                assert res["errors"] == 0 and res["ok"] > 0, (label, name, res.get("error_kinds"))
                if name == "tollway-cache":  # every measured request was what the job is about
                    assert res["cache_status"] == {status: res["ok"]}, (label, res["cache_status"])
                else:
                    assert res["cache_status"] == {"none": res["ok"]}, (label, res["cache_status"])
        summary = data["cache"]["targets"]["tollway-cache"]
        assert data["cache"]["reference"] in expected_cache - {"tollway-cache"}
        for job in ("exact", "semantic", "miss"):
            assert summary[f"{job}_p50_ms"] > 0
            assert isinstance(summary[f"{job}_vs_no_cache_p50_ms"], float)
        assert "a miss:" in out.out

    for word in ("latency", "throughput", "stream_paced", "soak", "budget"):
        assert word in out.out
    assert _descendants() <= before  # every process the harness started is gone


def test_tollway_bench_hands_every_option_to_the_harness(tmp_path, capsys):
    args = build_parser().parse_args(["bench", "--targets", "nope", "--out", str(tmp_path), "-h"][:-1])
    assert args.func is cmd_bench
    assert args.bench_args == ["--targets", "nope", "--out", str(tmp_path)]
    assert cmd_bench(args) == 2
    assert "unknown target 'nope'" in capsys.readouterr().err


def test_children_are_stopped_even_when_never_waited_for(tmp_path):
    import sys

    kids = Children(tmp_path)
    child = kids.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    kids.stop_all()
    assert child.popen.poll() is not None


def test_the_fleet_targets_are_built_in_with_one_and_two_workers(tmp_path, capsys):
    """`--targets tollway-fleet,tollway-fleet-w2` (issue 11's target: the full stack on Redis and
    PostgreSQL) needs no --config; the default run leaves them out (it needs neither)."""
    from benchmarks.cli import build_parser as bench_parser
    from benchmarks.cli import make_plan

    argv = ["--targets", "floor,tollway-fleet,tollway-fleet-w2", "--baseline", str(Path(__file__).parents[1])]
    plan = make_plan(bench_parser().parse_args(argv), argv)
    by_name = {t.name: t for t in plan.targets}
    assert set(by_name) == {"floor", "tollway-fleet", "tollway-fleet-w2", "tollway-fleet@base",
                            "tollway-fleet-w2@base"}
    for name, workers in (("tollway-fleet", 1), ("tollway-fleet-w2", 2)):
        for t in (by_name[name], by_name[f"{name}@base"]):
            assert (t.kind, t.config, t.workers, t.skip) == ("tollway", CONFIGS / "fleet.yaml", workers, None)
    default = make_plan(bench_parser().parse_args([]), [])
    assert not any(t.name.startswith("tollway-fleet") for t in default.targets)
    assert cmd_bench(build_parser().parse_args(["bench", "--targets", "tollway-flet"])) == 2
    assert "tollway-fleet, tollway-fleet-w2" in capsys.readouterr().err

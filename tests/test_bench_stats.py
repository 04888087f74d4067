"""The benchmark's statistics and report arithmetic, on known samples."""

from __future__ import annotations

import math
import os

import pytest

from benchmarks import report
from benchmarks.stats import median, median_of_rounds, percentile, ratio, rss_mb, summarize


@pytest.mark.parametrize("p, expected", [(0, 1.0), (25, 1.75), (50, 2.5), (75, 3.25), (100, 4.0), (90, 3.7)])
def test_percentile_interpolates_like_numpy_linear(p, expected):
    assert percentile([4, 1, 3, 2], p) == pytest.approx(expected)


def test_percentile_of_one_to_hundred():
    data = list(range(1, 101))
    assert percentile(data, 50) == pytest.approx(50.5)
    assert percentile(data, 99) == pytest.approx(99.01)
    assert percentile(data, 90) == pytest.approx(90.1)


def test_percentile_edges():
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_summarize_scales_and_orders():
    s = summarize([0.003, 0.001, 0.002], scale=1000.0)
    assert s["n"] == 3
    assert s["min"] == pytest.approx(1.0)
    assert s["max"] == pytest.approx(3.0)
    assert s["p50"] == pytest.approx(2.0)
    assert s["mean"] == pytest.approx(2.0)
    assert s["p99"] == pytest.approx(2.98)
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["p50"])


def test_median_skips_missing():
    assert median([3, None, 1, float("nan"), 2]) == 2
    assert math.isnan(median([]))


def test_median_of_rounds_medians_numbers_sums_counts_keeps_the_rest():
    rounds = [
        {"rps": 100.0, "errors": 1, "ok": 10, "latency_ms": {"p50": 1.0, "n": 10}, "error_kinds": {"x": 1}},
        {"rps": 300.0, "errors": 0, "ok": 10, "latency_ms": {"p50": 3.0, "n": 10}, "error_kinds": {}},
        {"rps": 200.0, "errors": 2, "ok": 10, "latency_ms": {"p50": 2.0, "n": 10}, "error_kinds": {}},
    ]
    merged = median_of_rounds(rounds)
    assert merged["rps"] == 200.0
    assert merged["errors"] == 3
    assert merged["ok"] == 30
    assert merged["latency_ms"] == {"p50": 2.0, "n": 30}
    assert median_of_rounds(rounds[:1]) is rounds[0]


def test_median_of_rounds_sums_the_tallies():
    rounds = [{"ok": 5, "cache_status": {"HIT": 5}, "error_kinds": {"timeout": 1}},
              {"ok": 5, "cache_status": {"HIT": 4, "MISS": 1}, "error_kinds": {}}]
    merged = median_of_rounds(rounds)
    assert merged["cache_status"] == {"HIT": 9, "MISS": 1}
    assert merged["error_kinds"] == {"timeout": 1}


def test_ratio():
    assert ratio(80, 100) == 0.8
    assert math.isnan(ratio(1, 0))
    assert math.isnan(ratio(None, 1))


def test_rss_of_this_process_and_of_nothing():
    mine = rss_mb(os.getpid())
    assert mine is None or mine > 1
    assert rss_mb(2**22 + 12345) is None


def _data():
    def res(rps, p50, p99, errors=0, **extra):
        return {"rps": rps, "ok": 100, "errors": errors, "latency_ms": {"p50": p50, "p90": p50, "p99": p99},
                **extra}
    return {
        "labels": {"latency": "latency", "throughput": "throughput", "soak": "soak"},
        "results": {
            "latency": {"direct": res(5000, 0.2, 0.3), "floor": res(1500, 0.6, 1.0),
                        "tollway-full": res(1400, 0.8, 1.2)},
            "throughput": {"direct": res(10000, 1, 2), "floor": res(4000, 2, 3), "tollway-full": res(3000, 3, 4)},
            "soak": {"floor": res(3000, 1, 2, rss_mb={"20000": 40.0, "200000": 40.0}),
                     "tollway-full": res(2500, 1, 2, errors=2, rss_mb={"200000": 55.0, "20000": 50.0})},
        },
    }


def test_derive_adds_vs_direct_vs_floor_and_ratios():
    data = report.derive(_data())
    full = data["results"]["latency"]["tollway-full"]
    assert full["added_latency_ms"]["vs_direct_p50"] == pytest.approx(0.6)
    assert full["added_latency_ms"]["vs_floor_p50"] == pytest.approx(0.2)
    assert data["results"]["throughput"]["tollway-full"]["x_floor_rps"] == pytest.approx(0.75)
    assert data["results"]["soak"]["tollway-full"]["rss_growth"] == pytest.approx(0.10)


def test_budget_names_each_check():
    checks = {c["check"]: c for c in report.derive(_data())["budget"]["checks"]}
    assert checks["throughput vs floor"]["ok"] is False
    assert checks["added p50 at c=1 vs floor (ms)"]["ok"] is True
    assert checks["RSS growth N/10 -> N"]["ok"] is True  # exactly 10%
    assert checks["errors where the floor has none"]["ok"] is False
    assert "soak" in checks["errors where the floor has none"]["want"]


def test_budget_shows_the_ratio_of_each_round():
    data = _data()
    data["runs"] = {"throughput": {"floor": [{"rps": 4000}, {"rps": 2000}, {"rps": 4000}],
                                   "tollway-full": [{"rps": 3000}, {"rps": 2100}, {"rps": 3600}]}}
    derived = report.derive(data)
    check = next(c for c in derived["budget"]["checks"] if c["check"] == "throughput vs floor")
    assert check["rounds"] == pytest.approx([0.75, 1.05, 0.9])
    assert "per round 0.75 1.05 0.90" in report.table(derived)


def test_table_has_every_target_and_the_budget():
    text = report.table(report.derive(_data()))
    for word in ("latency", "throughput", "soak", "direct", "floor", "tollway-full", "0.75x", "+10.0%", "MISS"):
        assert word in text


def _cache_data():
    def res(p50, status):
        return {"rps": 100, "ok": 10, "errors": 0, "latency_ms": {"p50": p50, "p90": p50, "p99": p50 * 2},
                "cache_status": status}
    return {
        "targets": {"tollway-full": {"cache": False}, "tollway-cache": {"cache": True}},
        "labels": {"cache_exact": "cache", "cache_semantic": "cache", "cache_miss": "cache"},
        "results": {
            "cache_exact": {"tollway-full": res(1.0, {"none": 10}), "tollway-cache": res(0.3, {"HIT": 10})},
            "cache_semantic": {"tollway-full": res(1.0, {"none": 10}),
                               "tollway-cache": res(6.0, {"SEMANTIC-HIT": 9, "MISS": 1})},
            "cache_miss": {"tollway-full": res(1.1, {"none": 10}), "tollway-cache": res(8.1, {"MISS": 10})},
        },
    }


def test_cache_jobs_are_compared_with_the_target_without_a_cache():
    data = report.derive(_cache_data())
    assert data["cache"]["reference"] == "tollway-full"
    row = data["cache"]["targets"]["tollway-cache"]
    assert row["exact_vs_no_cache_p50_ms"] == pytest.approx(-0.7)
    assert row["semantic_vs_no_cache_p50_ms"] == pytest.approx(5.0)
    assert row["miss_vs_no_cache_p50_ms"] == pytest.approx(7.0)  # what a miss adds
    assert row["semantic_as_meant"] == "9/10 SEMANTIC-HIT"
    assert data["results"]["cache_miss"]["tollway-full"]["added_latency_ms"]["vs_no_cache_p50"] == 0.0
    text = report.table(data)
    for word in ("cache_miss", "+7.000", "MISS:10", "SEMANTIC-HIT:9", "a miss: 8.100 ms", "10/10 MISS"):
        assert word in text


def test_no_cache_summary_without_cache_jobs():
    assert report.derive(_data())["cache"] == {}


def test_the_cache_scenario_runs_on_cache_targets_and_one_reference():
    from benchmarks.targets import Target, runs_on

    direct, core = Target("direct", "direct"), Target("tollway-core", "tollway")
    full = Target("tollway-full", "tollway")
    cache = Target("tollway-cache", "tollway", cache=True, scenarios=("cache",))
    everyone = [direct, core, full, cache]
    assert runs_on("cache", everyone) == [full, cache]
    assert runs_on("cache", [direct, core, cache]) == [core, cache]
    assert runs_on("cache", [direct, core, full]) == []  # nothing to measure without a cache
    assert runs_on("latency", everyone) == [direct, core, full]


def test_a_cache_target_is_skipped_when_its_embedder_cannot_load():
    from benchmarks.targets import missing_embedder_modules

    assert missing_embedder_modules({"plugins": {"cache": {"semantic": False}}}) == []
    assert missing_embedder_modules({"plugins": {"cache": {"embedder": "hashing"}}}) == []  # numpy: a test dep
    assert set(missing_embedder_modules({"plugins": {"cache": {"embedder": "wordllama"}}})) <= {"wordllama"}
    # the default retrieval needs no model; its synonym judge needs MiniLM (the 'cache' extra)
    assert missing_embedder_modules({"plugins": {"cache": {"semantic": True, "synonyms": False}}}) == []


def test_budget_holds_p99_at_concurrency_1_within_a_tenth_of_a_millisecond_of_the_floor():
    data = _data()
    data["labels"]["stream_whole_c1"] = "stream_whole_c1"
    data["results"]["stream_whole_c1"] = {
        "floor": {"rps": 900, "ok": 100, "errors": 0, "latency_ms": {"p50": 1.0, "p90": 1.1, "p99": 1.50}},
        "tollway-full": {"rps": 950, "ok": 100, "errors": 0, "latency_ms": {"p50": 0.9, "p90": 1.0, "p99": 1.58}}}
    derived = report.derive(data)
    checks = {c["check"]: c for c in derived["budget"]["checks"]}
    assert checks["stream_whole_c1: added p99 at c=1 vs floor (ms)"]["ok"] is True
    assert checks["stream_whole_c1: added p99 at c=1 vs floor (ms)"]["value"] == pytest.approx(0.08)
    assert checks["latency: added p99 at c=1 vs floor (ms)"]["ok"] is False  # 1.2 vs 1.0
    assert "+p99 vs floor" in report.table(derived)


def test_each_target_takes_each_slot_of_a_round_in_turn():
    """A later slot in a round measured cheaper for the same code: the order rotates a round."""
    from benchmarks.runner import round_order

    targets = ["floor", "tollway-full", "tollway-full@base"]
    orders = [round_order(targets, r) for r in range(3)]
    assert orders[0] == targets
    assert sorted(orders[1]) == sorted(targets) and orders[1] != targets
    for t in targets:  # every slot, once each
        assert sorted(order.index(t) for order in orders) == [0, 1, 2]
    assert round_order(targets, 3) == targets and round_order([], 5) == []

"""The benchmark's statistics and report arithmetic, on known samples."""

from __future__ import annotations

import math
import os
import random

import pytest

from benchmarks import report
from benchmarks.stats import median, median_interval, median_of_rounds, percentile, ratio, rss_mb, summarize


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


def test_median_interval_is_the_kth_smallest_and_largest_with_its_binomial_coverage():
    values = [15 - i for i in range(15)]  # any order
    assert median_interval(values) == (4, 12, pytest.approx(1 - 2 * 576 / 2**15))  # P(B <= 3) = 576/2^15
    assert median_interval(list(range(1, 42)))[:2] == (14, 28)  # the textbook ranks for n = 41
    lo, hi, coverage = median_interval([3.0, 1.0, 2.0, 5.0, 4.0])  # too few for 95%: the extremes, and what they give
    assert (lo, hi) == (1.0, 5.0) and coverage == pytest.approx(1 - 2 / 32)
    assert median_interval([2.0, math.nan, 1.0, 3.0])[:2] == (1.0, 3.0)
    assert all(math.isnan(x) for x in median_interval([]))


def test_median_interval_holds_the_median_as_often_as_it_says():
    rng = random.Random(1)
    for n in (7, 15, 41):
        said = median_interval(list(range(n)))[2]
        trials = 3000
        held = 0
        for _ in range(trials):  # rounds from a skewed distribution whose median is 1.0
            lo, hi, _ = median_interval([rng.lognormvariate(0.0, 0.3) for _ in range(n)])
            held += lo <= 1.0 <= hi
        assert abs(held / trials - said) < 0.02, (n, held / trials, said)


@pytest.mark.parametrize("rounds, margin", [
    ([1.10, 1.05, 1.20, 1.08, 1.15, 1.02, 1.12], "met beyond the noise"),
    ([1.30, 0.90, 1.20, 0.95, 1.15, 1.02, 0.97], "within the noise"),
    ([0.90, 0.95, 0.85, 0.97, 0.92, 0.99, 0.91], "missed beyond the noise"),
])
def test_budget_says_whether_the_rounds_settle_the_throughput_check(rounds, margin):
    data = _data()
    data["runs"] = {"throughput": {"floor": [{"rps": 1000.0} for _ in rounds],
                                   "tollway-full": [{"rps": 1000.0 * r} for r in rounds]}}
    derived = report.derive(data)
    check = next(c for c in derived["budget"]["checks"] if c["check"] == "throughput vs floor")
    assert check["margin"] == margin
    assert check["interval"] == [pytest.approx(min(rounds)), pytest.approx(max(rounds))]  # 7 rounds: the extremes
    assert check["rounds_median"] == pytest.approx(sorted(rounds)[3])
    assert f"98% interval {min(rounds):.3f} .. {max(rounds):.3f}: {margin}" in report.table(derived)


def test_budget_says_when_there_are_too_few_rounds_for_an_interval():
    data = _data()
    rounds = [1.2, 1.3, 1.25, 1.4, 1.1]  # all above, but 5 rounds hold the median only 94% of the time
    data["runs"] = {"throughput": {"floor": [{"rps": 1000.0} for _ in rounds],
                                   "tollway-full": [{"rps": 1000.0 * r} for r in rounds]}}
    check = next(c for c in report.derive(data)["budget"]["checks"] if c["check"] == "throughput vs floor")
    assert check["margin"] == "too few rounds to tell (5; 6 give a 95% interval)"
    assert median_interval([1.0] * report.FEWEST_ROUNDS)[2] >= report.CONFIDENCE > median_interval([1.0] * 5)[2]


def test_budget_reads_the_c1_p99_round_by_round_against_the_floor_of_the_same_round():
    data = _data()
    added = [0.02, -0.05, 0.08, 0.01, -0.02, 0.05, 0.0]
    floor_p99 = [1.0, 1.5, 0.9, 1.2, 1.1, 1.3, 1.0]  # a round slow for both moves both
    data["runs"] = {"latency": {
        "floor": [{"latency_ms": {"p99": f}} for f in floor_p99],
        "tollway-full": [{"latency_ms": {"p99": f + a}} for f, a in zip(floor_p99, added, strict=True)]}}
    check = next(c for c in report.derive(data)["budget"]["checks"]
                 if c["check"] == "latency: added p99 at c=1 vs floor (ms)")
    assert check["rounds"] == pytest.approx(added)
    assert check["margin"] == "met beyond the noise"  # every round within 0.1 ms
    data["runs"]["latency"]["tollway-full"][2]["latency_ms"]["p99"] += 0.5
    check = next(c for c in report.derive(data)["budget"]["checks"]
                 if c["check"] == "latency: added p99 at c=1 vs floor (ms)")
    assert check["margin"] == "within the noise"


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

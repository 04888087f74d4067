"""benchmarks.looptimes' report: which periodic work overlapped the slowest requests."""

from __future__ import annotations

import json

from benchmarks.looptimes import report


def test_report_counts_what_overlapped_the_slowest_requests(tmp_path, capsys):
    # 200 requests one at a time, a millisecond apart; two of them (the slowest 1%) took 5 ms
    # and overlapped a SQLite trip each; one ordinary request overlapped the access log's write.
    requests = [[i * 0.010, 0.0004, 0.0002, 0, 1] for i in range(200)]
    requests[50][1:3] = [0.005, 0.0009]
    requests[120][1:3] = [0.005, 0.0009]
    trips = [[0.501, 0.002], [1.201, 0.003], [1.905, 0.001]]  # the last beside no request
    data = {"counts": {}, "slow": [], "gcs": [], "trips": trips, "requests": requests,
            "flushes": [[0.7001, 0.0001]], "writer": [[0.5015, 0.0002, "sleep:1"], [1.2015, 0.0003, "_execute:2"]]}
    path = tmp_path / "looptimes.json"
    path.write_text(json.dumps(data))
    report(path, 200, 5)
    out = capsys.readouterr().out
    assert "overlapped by a SQLite trip: 2/2 of the slowest 1%, 2/2 of the costliest 1% by CPU, 2/200 of all" in out
    assert ("overlapped by a access log write: 0/2 of the slowest 1%, 0/2 of the costliest 1% by CPU, "
            "1/200 of all") in out
    assert "overlapped by a writer step on the loop: 2/2 of the slowest 1%" in out
    assert "p50 0.400  p90 0.400  p99 5.000" in out
    assert "1   0.200   0.200  sleep:1" in out

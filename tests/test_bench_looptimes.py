"""benchmarks.looptimes' report: which periodic work overlapped the slowest requests."""

from __future__ import annotations

import json

import aiohttp
from business import biz_config, chat

from benchmarks.looptimes import report, time_requests

KEY = "sk-test-looptimes-01"


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


def test_report_says_each_trips_cpu_its_checkpoints_and_the_flushes_lateness(tmp_path, capsys):
    requests = [[i * 0.010, 0.0004, 0.0002, 0, 1] for i in range(100)]
    requests[30][1:3] = [0.004, 0.0012]
    # (start, wall, SQLite's thread's CPU, checkpointed): the second checkpointed the WAL
    trips = [[0.101, 0.0015, 0.0012, 0], [0.301, 0.009, 0.005, 1], [0.601, 0.001, 0.0009, 0]]
    data = {"counts": {}, "slow": [], "gcs": [], "trips": trips, "requests": requests, "flushes": [],
            "lateness": [[120, 0.100, 0.002], [150, 0.101, 0.011], [90, 0.100, 0.001]],
            "flush_steps": [[0.3001, 0.0002], [0.9, 0.0001]]}
    path = tmp_path / "looptimes.json"
    path.write_text(json.dumps(data))
    report(path, 100, 5)
    out = capsys.readouterr().out
    assert "3 trips, 11.5 ms, longest 9.00 ms; its CPU in them 7.1 ms; 1 checkpointed the WAL" in out
    assert "     9.000   5.000 yes" in out
    assert ("the writer's flushes: 3, rows p50 120 max 150; the oldest row's wait at the flush's start (ms) "
            "p50 100.0 max 101.0; a flush (ms) p50 2.0 max 11.0; wait + flush max 112.0") in out
    assert "overlapped by a flush's work on the loop: 1/1 of the slowest 1%" in out


def test_report_reads_trips_without_their_cpu(tmp_path, capsys):
    """Files written before the trips had their CPU and checkpoint still report."""
    data = {"counts": {}, "slow": [], "gcs": [], "trips": [[0.1, 0.002]], "requests": [], "flushes": []}
    path = tmp_path / "looptimes.json"
    path.write_text(json.dumps(data))
    report(path, 1, 5)
    assert "1 trips, 2.0 ms, longest 2.00 ms" in capsys.readouterr().out


async def test_the_probe_times_the_requests_the_gateway_serves(start_gateway, monkeypatch):
    """Through the real server: each request is timed once, whether the gateway handles it in
    the connection's task (``server_loop.handle_request``) or aiohttp's ``_handle_request``
    (the probe timed only the latter, which the gateway no longer uses: no request was seen)."""
    from aiohttp import web_protocol

    from proxy import server_loop

    # (the probe replaces both for the process; restored after the test)
    monkeypatch.setattr(server_loop, "handle_request", server_loop.handle_request)
    monkeypatch.setattr(web_protocol.RequestHandler, "_handle_request", web_protocol.RequestHandler._handle_request)
    requests: list = []
    time_requests(requests, [True])
    running = await start_gateway(biz_config(keys=[{"name": "k", "key": KEY, "credits": 5.0}]))
    async with aiohttp.ClientSession() as s:
        for stream in (False, True):
            status, _, _ = await chat(s, running, KEY, stream=stream)
            assert status == 200
    assert len(requests) == 2
    for start, wall, cpu, involuntary, voluntary in requests:
        assert start > 0 and wall >= 0 and cpu >= 0 and involuntary >= 0 and voluntary >= 0

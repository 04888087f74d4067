"""``tollway serve`` settles its heap once started (``proxy/heap.py``): what start-up made is
frozen out of the cyclic collector's traversals and the young threshold is raised, so the
collector stops costing requests under load what it cost (~9 us each at 64 connections)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from proxy.heap import YOUNG_THRESHOLD

# Serves the config; when the server listens (its banner), prints the collector's state and stops.
DRIVER = """
import gc, json, os, signal, sys
from proxy import cli

def banner(gateway, address):
    print(json.dumps({"frozen": gc.get_freeze_count(), "thresholds": gc.get_threshold()}), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

cli.print_banner = banner
sys.exit(cli.main(["serve", "--config", sys.argv[1]]))
"""


def test_a_started_server_has_frozen_its_start_up_objects(tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"server: {{port: 0, access_log: 'off'}}\nstorage: {{url: 'sqlite:///{tmp_path}/t.db'}}\n"
                   "providers: {local: {kind: mock}}\nmodels: {echo: {provider: local, price: {input: 0, output: 0}}}\n"
                   "keys: [{name: k, key: sk-heap-test, credits: 1}]\n"
                   "plugins: {enabled: [auth, ratelimit, quotas, pricing, ledger]}\n")
    done = subprocess.run([sys.executable, "-c", DRIVER, str(cfg)], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout.splitlines()[0])
    # The modules, config and tables of a gateway are tens of thousands of tracked objects.
    assert state["frozen"] > 10_000
    assert state["thresholds"] == [YOUNG_THRESHOLD, 10, 10]

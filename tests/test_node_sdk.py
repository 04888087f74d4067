"""The official openai Node SDK (tests/node: chat, embeddings with its default base64
encoding, responses create and stream) against the real server. Runs when Node and the
package are there (``npm ci --prefix tests/node``); says so loudly when they are not."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
from pathlib import Path

import pytest
from business import DEMO, biz_config

NODE_DIR = Path(__file__).parent / "node"


def _node_ready() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed (apt-get install -y nodejs npm; .ci/run does it)"
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        return "the openai npm package is missing: npm ci --prefix tests/node (.ci/run does it)"
    return None


async def test_the_node_sdk_reads_every_answer(start_gateway):
    missing = _node_ready()
    if missing is not None:
        pytest.fail(missing)
    config = biz_config()
    config["models"]["echo"]["price"] = {"input": 1.0, "output": 2.0}
    running = await start_gateway(config)
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "sdk.mjs"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TOLLWAY_URL": running.url, "TOLLWAY_KEY": DEMO})
    async with asyncio.timeout(60):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    got = json.loads(stdout)
    assert got["chat"] == "hi node"
    assert len(got["embedding"]) == 16 and math.isclose(sum(v * v for v in got["embedding"]), 1.0, rel_tol=1e-5)
    assert got["responses"]["text"] == "hello responses" and got["responses"]["status"] == "completed"
    assert got["responses"]["cost"] > 0
    assert got["stream"] == {"text": "hello stream", "first": "response.created", "last": "response.completed",
                             "cost": got["stream"]["cost"]} and got["stream"]["cost"] > 0

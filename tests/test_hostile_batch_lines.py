"""A batch line refused while it runs (its upstream cannot be reached, or refuses it) is an
error line, and the batch completes, through the real server with the official openai SDK.
Before: answering a detached call's error read the error style from the HTTP request, which a
batch line has none of (AttributeError); the batch step failed and was retried for ever, the
batch stayed in_progress. A Responses line to a translated model is refused in the Responses
API's own terms there too (``input[0]...``, not ``messages[0]...``)."""

from __future__ import annotations

import openai
import orjson
from business import DEMO, add_claude, biz_config
from test_batches import chat_line, jsonl, wait_done


async def test_lines_refused_while_the_batch_runs_are_error_lines(start_gateway):
    config = biz_config(enabled=["auth", "ratelimit", "quotas", "pricing", "ledger", "batches"])
    config["providers"]["dead"] = {"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key": "x"}
    config["models"]["dead"] = {"provider": "dead", "price": {"input": 1.0, "output": 1.0}}
    add_claude(config, "http://127.0.0.1:1")  # (refused before it is called)
    running = await start_gateway(config)
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        lines = [chat_line(0), chat_line(1, model="dead")]
        f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")
        batch = await wait_done(client, batch.id)
        assert (batch.status, batch.request_counts.completed, batch.request_counts.failed) == ("completed", 1, 1)
        [error] = [orjson.loads(x) for x in (await client.files.content(batch.error_file_id)).text.splitlines()]
        assert error["custom_id"] == "req-1" and error["response"]["status_code"] == 502
        assert error["error"]["code"] == "upstream_unreachable"

        image = {"type": "input_image", "image_url": "ftp://x/y.png"}
        line = {"custom_id": "resp-0", "method": "POST", "url": "/v1/responses",
                "body": {"model": "claude", "input": [{"role": "user", "content": [image]}], "max_output_tokens": 5}}
        f = await client.files.create(file=("in.jsonl", jsonl([line])), purpose="batch")
        batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
        batch = await wait_done(client, batch.id)
        assert batch.status == "completed" and batch.request_counts.failed == 1
        [error] = [orjson.loads(x) for x in (await client.files.content(batch.error_file_id)).text.splitlines()]
        assert error["response"]["status_code"] == 400
        assert error["response"]["body"]["error"]["param"] == "input[0].content[0].image_url", error

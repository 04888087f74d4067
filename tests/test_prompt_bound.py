"""The prompt bound's one pass over the messages (``estimate._image_parts``) answers what
the two passes it replaced answered: whether part of the prompt is upstream, else how many
image parts it has. Held against the old definitions on bodies built from their pieces."""

from __future__ import annotations

import random

from plugins.accounts.estimate import FILE_PARTS, SERVER_TOOLS, _image_parts


def _old_context_upstream(body: dict) -> bool:
    if body.get("previous_response_id") is not None or body.get("conversation") is not None \
            or isinstance(body.get("prompt"), dict) or body.get("mcp_servers") or body.get("web_search_options"):
        return True
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if isinstance(kind, str) and kind.startswith(SERVER_TOOLS):
                return True
    items = body.get("input") if isinstance(body.get("input"), list) and "messages" not in body \
        else body.get("messages")
    for message in items if isinstance(items, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in FILE_PARTS:
                    return True
    return False


def _old_image_parts(body: dict) -> int:
    items = body.get("input")
    messages = items if isinstance(items, list) and "messages" not in body else body.get("messages")
    n = 0
    for message in messages or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("image_url", "image", "input_image",
                                                                   "document"):
                    n += 1
    return n


PART_TYPES = ["text", "image_url", "image", "input_image", "document", "input_file", "file", "input_text", None]


def _body(rng: random.Random) -> dict:
    def messages() -> list:
        out = []
        for _ in range(rng.randrange(4)):
            if rng.random() < 0.1:
                out.append("not a message")
                continue
            parts = [rng.choice([{"type": rng.choice(PART_TYPES)}, {"text": "x"}, "part"])
                     for _ in range(rng.randrange(4))]
            content = rng.choice(["hi", None, parts])
            out.append({"role": "user", "content": content})
        return out

    body: dict = {"model": "m"}
    where = rng.choice(["messages", "input", "both", "input-text"])
    if where in ("messages", "both"):
        body["messages"] = messages()
    if where in ("input", "both"):
        body["input"] = messages()
    if where == "input-text":
        body["input"] = "hello"
    for key, values in (("previous_response_id", [None, "resp_1"]), ("conversation", [None, "conv_1"]),
                        ("prompt", ["text", {"id": "p"}]), ("mcp_servers", [[], [{"url": "x"}]]),
                        ("web_search_options", [{}, {"size": 1}])):
        if rng.random() < 0.08:
            body[key] = rng.choice(values)
    if rng.random() < 0.3:
        body["tools"] = [rng.choice([{"type": "function"}, {"type": "web_search_preview"}, {"type": "mcp"},
                                     {"type": 3}, "tool"]) for _ in range(rng.randrange(3))]
    return body


def test_one_pass_answers_as_the_two_did():
    rng = random.Random(5)
    for _ in range(20000):
        body = _body(rng)
        expected = None if _old_context_upstream(body) else _old_image_parts(body)
        assert _image_parts(body) == expected, body

"""A batch's input lines: read from the JSONL file, each checked on its own.

A line is ``{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body"}``;
the body is checked as the endpoint would check it. A malformed line is not a
failed batch: it becomes an error line in the error file (``invalid_line`` and
what to fix), and the other lines run.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from proxy import Gateway, ProxyError
from proxy.validate import check_depth, validate_embeddings

#: the batch endpoint -> (the call's endpoint, its dialect)
ENDPOINTS = {"/v1/chat/completions": ("chat", "openai"), "/v1/embeddings": ("embeddings", "openai"),
             "/v1/completions": ("completions", "completions"), "/v1/responses": ("responses", "responses")}


@dataclass(slots=True)
class Line:
    number: int  # 0-based line number in the input file
    custom_id: str
    body: bytes | None  # the request body, None when the line is refused
    error: tuple[str, str] | None = None  # (code, message)


def read_lines(gateway: Gateway, content: str, endpoint: str, models: frozenset[str] | None,
               max_lines: int) -> list[Line]:
    """Every line of the input file, checked; 400 when the file as a whole is unusable."""
    kind, dialect = ENDPOINTS[endpoint]
    out: list[Line] = []
    seen: set[str] = set()
    # Lines end at "\n" alone (a "\r" before it is JSON whitespace): str.splitlines would also
    # cut at U+2028, U+0085 and others, which a JSON string may hold as they are.
    # A leading BOM (editors on Windows write one) is not part of the first line.
    lines = content.removeprefix("\ufeff").split("\n")
    raw_lines = [(i, text) for i, text in enumerate(lines) if text.strip()]
    if not raw_lines:
        raise ProxyError(400, "the input file has no lines", param="input_file_id", code="empty_file")
    if len(raw_lines) > max_lines:
        raise ProxyError(400, f"the input file has {len(raw_lines)} lines; a batch may have at most {max_lines}",
                         param="input_file_id", code="too_many_lines")
    for number, text in raw_lines:
        custom_id = f"line-{number + 1}"
        try:
            item = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            out.append(Line(number, custom_id, None, ("invalid_line", f"line {number + 1} is not JSON: {exc}")))
            continue
        if not isinstance(item, dict):
            out.append(Line(number, custom_id, None, ("invalid_line", f"line {number + 1} is not a JSON object")))
            continue
        if isinstance(item.get("custom_id"), str) and item["custom_id"]:
            custom_id = item["custom_id"]
        problem = _problem(gateway, item, text, endpoint, kind, dialect, models, seen)
        if problem is not None:
            out.append(Line(number, custom_id, None, ("invalid_line", f"line {number + 1}: {problem}")))
            continue
        seen.add(custom_id)
        out.append(Line(number, custom_id, orjson.dumps(item["body"])))
    return out


def _problem(gateway: Gateway, item: dict, text: str, endpoint: str, kind: str, dialect: str,
             models: frozenset[str] | None, seen: set[str]) -> str | None:
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "'custom_id' is required: a string naming the line in the output"
    if custom_id in seen:
        return f"'custom_id' {custom_id!r} is used by an earlier line"
    if item.get("method", "POST") != "POST":
        return "'method' must be POST"
    if item.get("url") != endpoint:
        return f"'url' must be the batch's endpoint {endpoint!r}, got {item.get('url')!r}"
    body = item.get("body")
    if not isinstance(body, dict):
        return "'body' is required: the request's JSON body"
    if body.get("stream") is True:
        return "'body.stream' must not be true in a batch"
    try:
        check_depth(body, text.encode())  # as an interactive request's body (and what orjson writes back)
        if kind == "embeddings":
            validate_embeddings(body)
        else:
            gateway.dialects[dialect].validate(body)
    except ProxyError as err:
        return f"body: {err.message}"
    model = body["model"]
    if model not in gateway.config.models:
        return f"'body.model' {model!r} does not exist; GET /v1/models lists the models you can use"
    if models is not None and model not in models:
        return f"this API key may not use model {model!r}"
    return None

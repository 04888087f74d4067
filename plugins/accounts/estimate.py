"""Token estimates made before the upstream answers.

Two different needs:

- ``prompt_bound``: an UPPER bound of the prompt's tokens, for the money
  reservation. Every prompt token comes from at least one byte of the request
  body (BPE tokens are at least one byte, and JSON only adds bytes), so the
  body's length bounds the text; each image part adds ``IMAGE_TOKENS``. The
  bound is capped by the model's context window when one is configured. A
  prompt that is partly upstream (a stored conversation or prompt, a file by
  id, a search the upstream runs) is bounded by the window alone.
- ``tokens_estimate``: a fair guess for the tokens-per-minute limiter (about
  four bytes a token, plus the requested output), reconciled with the real
  usage afterwards.

And one made after the answer went out, when the upstream never said what
it used (a stream cut, timed out or abandoned before its usage event, an
upstream that sends none): ``counted_usage`` counts the output that was
produced (``Billing.streamed``, or the completion) and the prompt with a
real tokenizer (``tokens.py``), each capped by the bound its reservation
was made with, so the estimate never costs more than was reserved. When the
tokenizer (or reading the text out of the stream) fails, the count falls
back to about four bytes a token of the raw bytes (``byte_count``), capped the
same way: a count that fails never makes output free.

With no output to count, what is billed follows what the upstream did:

- it FINISHED its answer (``finished``: a whole non-stream answer was read, or a
  stream reached its end event, the client there or gone and drained to the end):
  it read the prompt and billed it, so the counted prompt is billed (0 output
  tokens, estimated, capped by the prompt's bound and so by the reservation), an
  empty answer with no usage included;
- it FAILED before any output (an error status: no usage hook runs; a stream cut,
  timed out, or left by its client with the drain bound hit, before any output):
  free, the failure is not the client's to pay, and what the upstream billed for
  it is unknown.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson

from proxy import Usage
from proxy.logs import throttled
from proxy.outputtext import completion_text, prompt_text, transcript_text

from .tokens import count_tokens

if TYPE_CHECKING:
    from collections.abc import Callable

    from proxy import Call, Dialect

IMAGE_TOKENS = 2000
BYTES_PER_TOKEN = 4

log = logging.getLogger("tollway.estimate")


def byte_count(size: int) -> int:
    """The fallback count: about four bytes a token, rounded up."""
    return -(-size // BYTES_PER_TOKEN)


def _size_of(completion: dict) -> int:
    """The bytes of a completion object, as the client got it (its repr if it will not serialise)."""
    try:
        return len(orjson.dumps(completion))
    except (TypeError, orjson.JSONEncodeError):
        return len(repr(completion))


async def _count(text_of: Callable[[], str], size: int) -> int:
    """Tokens of ``text_of()``; when counting fails, ``byte_count(size)``."""
    try:
        return await count_tokens(text_of())
    except Exception:
        throttled(log, logging.WARNING, "count_failed", "token count failed; billed on byte length / 4",
                  exc_info=True)
        return byte_count(size)


def call_input_is_items(body: dict) -> bool:
    """A Responses API body, whose messages are its ``input`` items."""
    return isinstance(body.get("input"), list) and "messages" not in body


def prompt_bound(call: Call) -> int:
    window = call.route.config.context_window if call.route is not None else None
    images = _image_parts(call.body)
    if images is None:
        return window or UNKNOWN_WINDOW
    bound = len(call.raw_body if not call.body_changed else call.body_bytes()) + IMAGE_TOKENS * images  # (a call less)
    return (window if window < bound else bound) if window else bound  # (min(), without the builtin's call)


#: Content parts that may name their document (a file id, a URL) instead of holding it.
FILE_PARTS = frozenset(("input_file", "file", "document"))
#: Tools the upstream runs itself, adding what they find to the prompt (web pages, files, code output).
SERVER_TOOLS = ("web_search", "web_fetch", "code_execution", "code_interpreter", "file_search", "mcp",
                "image_generation")
#: The prompt bound of a request whose prompt lives upstream, on a model with no ``context_window``.
UNKNOWN_WINDOW = 1_000_000


#: The body fields ``_image_parts`` reads besides ``messages``: a body with none of them
#: (the usual chat request) has its whole prompt in ``messages``.
ELSEWHERE_FIELDS = frozenset(("previous_response_id", "conversation", "prompt", "mcp_servers", "web_search_options",
                              "tools", "input"))

#: Content parts that count ``IMAGE_TOKENS`` each in a prompt's bound.
IMAGE_PARTS = frozenset(("image_url", "image", "input_image", "document"))


def _image_parts(body: dict) -> int | None:
    """The prompt's image parts; None when part of the prompt is not in the body, so its
    bytes do not bound it: a stored conversation (``previous_response_id``,
    ``conversation``) or prompt (``prompt: {id}``), a file or document part, a tool the
    upstream runs itself. (One pass over the messages for both questions.)"""
    if body.keys().isdisjoint(ELSEWHERE_FIELDS):  # the usual chat body: none of them, one C call
        messages = body.get("messages")
    else:
        if body.get("previous_response_id") is not None or body.get("conversation") is not None \
                or isinstance(body.get("prompt"), dict) or body.get("mcp_servers") or body.get("web_search_options"):
            return None
        tools = body.get("tools")
        if isinstance(tools, list):
            for tool in tools:
                kind = tool.get("type") if isinstance(tool, dict) else None
                if isinstance(kind, str) and kind.startswith(SERVER_TOOLS):
                    return None
        items = body.get("input")  # a Responses API body's messages are its items (call_input_is_items, inline)
        messages = items if isinstance(items, list) and "messages" not in body else body.get("messages")
    n = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    kind = part.get("type")
                    if kind in FILE_PARTS:
                        return None
                    if kind in IMAGE_PARTS:
                        n += 1
    return n


OUTPUT_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def requested_output(call: Call) -> int | None:
    """The client's output cap (``max_completion_tokens``, ``max_tokens``, or the Responses
    API's ``max_output_tokens``), times ``n`` where one request asks for several answers."""
    body = call.body
    value = body.get("max_tokens")  # the usual one alone: read it first, without the loop or the keys' view
    if type(value) is int and value > 0 and "max_completion_tokens" not in body:
        return value if "n" not in body else value * choices(body)
    if body.keys().isdisjoint(OUTPUT_CAPS):  # a body that names none: one C call, not three look-ups
        return None
    for name in OUTPUT_CAPS:
        value = body.get(name)
        # (``type() is int``: a JSON number, the usual case, without two isinstance calls; bool is not int's type)
        if value is not None and (type(value) is int or isinstance(value, int) and not isinstance(value, bool)) \
                and value > 0:
            return value if "n" not in body else value * choices(body)
    return None


def choices(body: dict) -> int:
    """How many answers one request asks for (``n``)."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 < n <= 128 else 1


#: ``output_bound``'s ``asked`` when the caller has not read the client's cap.
UNREAD = -1


def output_bound(call: Call, default_cap: int, asked: int | None = UNREAD) -> int:
    """The most completion tokens this request can be billed for (``asked``: the client's
    own cap, when the caller already has it from ``requested_output``)."""
    if call.endpoint == "embeddings":
        return 0
    if asked == UNREAD:
        asked = requested_output(call)
    if asked is not None:
        return asked
    model_cap = call.route.config.max_output_tokens if call.route is not None else None
    return (model_cap or default_cap) * choices(call.body)  # each of n answers may use the whole cap


#: Endpoints whose output is text (a transcript) though their input is audio.
TRANSCRIPT_ENDPOINTS = frozenset(("transcriptions", "translations"))


async def unit_output(call: Call, default_cap: int) -> int:
    """The output tokens billed for an images, speech or audio answer on a model priced by
    tokens whose upstream gave no output count: a transcript's text is in the answer, so it
    is counted (the tokenizer, as for chat; on failure four bytes a token), capped by the
    output's bound; images and audio out cannot be counted, so they cost the bound."""
    bound = output_bound(call, default_cap)
    if call.endpoint not in TRANSCRIPT_ENDPOINTS:
        return bound
    text = transcript_text(call.response.answer, call.body.get("response_format", "json"))
    if text is None:  # no text to count (an answer of another shape): the bound, as before
        return bound
    count = await _count(lambda: text, len(text.encode("utf-8", "replace")))
    return count if count < bound else bound


def tokens_estimate(call: Call) -> int:
    if call.billing.units is not None:  # images and audio: an upload's bytes are not tokens; its text fields may be
        return max(1, sum(len(v) for v in call.body.values() if isinstance(v, str)) // 4)
    prompt = len(call.raw_body if not call.body_changed else call.body_bytes()) // 4  # (body_bytes: a call less)
    return (prompt if prompt > 1 else 1) + (requested_output(call) or 0)  # (max(1, ...), without the builtin)


async def counted_usage(call: Call, dialect: Dialect, default_cap: int) -> Usage | None:
    """The gateway's own count of what a request used, when the upstream said
    nothing (or, for a stream that ended early or a usage without an output
    count, only part: ``billing.partial_usage``, whose prompt counts are kept and
    whose output count is a floor): None when no output went out."""
    billing = call.billing
    if call.stream:
        if not billing.streamed:
            completion = 0
        else:
            blob = b"".join(billing.streamed)
            completion = await _count(lambda: dialect.streamed_text(blob), len(blob))
            if billing.streamed_dropped:  # past what was kept: the same tokens per byte
                completion += -(-completion * billing.streamed_dropped // len(blob))
    elif call.response.completion is not None:
        completion = await _count(lambda: completion_text(call.response.completion),
                                  _size_of(call.response.completion))
    elif call.response.answer is not None:  # a native answer of another dialect (responses, completions)
        answer = call.response.answer
        completion = await _count(lambda: dialect.answer_text(answer), _size_of(answer))
    else:
        return None
    partial = billing.partial_usage
    if partial is not None:
        completion = max(completion, partial.completion_tokens)
    completion = min(completion, output_bound(call, default_cap))
    if completion <= 0:
        if partial is not None or not finished(call):
            return None  # no output, and a failure (or the caller bills what the upstream said)
        return Usage(prompt_tokens=await counted_prompt(call), completion_tokens=0)  # (see the docstring)
    if partial is not None and partial.prompt_tokens:
        # The upstream's own counts of the prompt (sent before it stopped, or without an output count).
        return Usage(prompt_tokens=min(partial.prompt_tokens, prompt_bound(call)), completion_tokens=completion,
                     cached_tokens=partial.cached_tokens, cache_write_tokens=partial.cache_write_tokens)
    return Usage(prompt_tokens=await counted_prompt(call), completion_tokens=completion)


async def counted_prompt(call: Call) -> int:
    """The gateway's count of the request's prompt, capped by its bound."""
    prompt = await _count(lambda: prompt_text(call.body), len(call.body_bytes()))
    return min(prompt, prompt_bound(call))


def finished(call: Call) -> bool:
    """The upstream finished its answer: a stream reached its end event, or a whole answer
    was read (and parsed: ``response.completion`` or ``answer``)."""
    if call.stream:
        return call.billing.stream_complete
    return call.response.completion is not None or call.response.answer is not None


def byte_usage(call: Call, default_cap: int) -> Usage | None:
    """The last resort when ``counted_usage`` itself fails: the bytes that went
    out and the request's bytes, four a token, capped like the count."""
    billing = call.billing
    if call.stream:
        size = sum(len(part) for part in billing.streamed) + billing.streamed_dropped
    else:
        completion_obj = call.response.completion
        size = _size_of(completion_obj) if completion_obj is not None else 0
    completion = min(byte_count(size), output_bound(call, default_cap))
    if completion <= 0 and not finished(call):
        return None
    return Usage(prompt_tokens=min(byte_count(len(call.body_bytes())), prompt_bound(call)),
                 completion_tokens=completion)

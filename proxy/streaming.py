"""Streams: the passthrough codec, the translating codec, and the pump.

A *codec* turns upstream bytes into client bytes for one request:

- ``OpenAIPassthrough``: client and upstream both speak OpenAI. Complete SSE
  events are forwarded exactly as received; only the usage event is held back
  (the gateway always asks for it) and written at the end with the gateway's
  fields added, or dropped when the client did not ask for usage.
- ``TranslatingCodec``: a provider's ``StreamDecoder`` (upstream -> canonical
  chunks) joined to a dialect's encoder (canonical chunks -> client bytes).

``pump`` drives a codec: reads the upstream with its timeouts, writes to the
client, keeps reading (bounded) after the client hung up so usage is known,
and ends every stream with a proper terminator, an in-band error included.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import orjson

from . import onewrite
from .call import Usage
from .clientwrite import CLIENT_WRITE_TIMEOUT, ClientStalled, ClientWriter
from .errors import ProxyError, internal_error, style_of
from .inflight import shutdown_error
from .inflight import uncancel as _uncancel
from .logs import throttled
from .onewrite import ChunkWriter
from .provider import UNREADABLE, unreadable_answer
from .sse import CR, DONE, DONE_EVENT, LF, EventSplitter, data_event, load_event_json, parse_event, split_events
from .sse_usage import END_NOT_NULL
from .sse_usage import USAGE_OBJECT as _USAGE_OBJECT
from .sse_usage import splice_usage_fields as splice_usage_fields  # (pipeline imports it from here)
from .sse_usage import usage_object_at as _usage_object_at

if TYPE_CHECKING:
    from aiohttp import web

    from .call import Call
    from .provider import StreamDecoder
    from .upstream import UpstreamResponse

log = logging.getLogger("tollway")

class StreamCodec(Protocol):
    @property
    def usage(self) -> Usage | None:
        """The usage seen so far (None: none yet)."""

    @property
    def done(self) -> bool:
        """The upstream signalled the end of its stream: stop reading."""

    def feed(self, data: bytes) -> bytes:
        """Upstream bytes in, client bytes out (possibly empty)."""

    def end(self) -> bytes:
        """Upstream finished: the bytes still due before usage; raises
        ProxyError when the upstream stream was cut short."""

    def finish(self, call: Call) -> bytes:
        """After pricing: the usage event (if the client wants it) and the terminator."""

    def fail(self, error: ProxyError) -> bytes:
        """An in-band error and the terminator."""


class OpenAIPassthrough:
    """OpenAI upstream -> OpenAI client, byte for byte."""

    __slots__ = ("usage", "done", "_splitter", "_usage_event", "_usage_chunk")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.done = False
        self._splitter = EventSplitter()
        self._usage_event: bytes | None = None  # the held usage event, as received
        self._usage_chunk: dict | None = None

    def feed(self, data: bytes) -> bytes:
        # The usual read of a paced stream: one whole event of one line (``data: {...}`` and the
        # blank line; no \r, so no other line) that ends with ``}`` (so its data is no
        # ``[DONE]``) and holds no usage object, with nothing held before it: it passes as it is.
        # (Four C-level checks, ~0.4 us; through the splitter and the searches below, ~0.8 us.)
        if (data.endswith(b"}\n\n") and data.find(LF) == len(data) - 2 and CR not in data
                and not self._splitter.held and _maybe_usage_object(data) is None):
            return data
        return self.feed_general(data)

    def feed_general(self, data: bytes) -> bytes:
        """``feed`` without its path for one plain event (any read; tests hold the two to each other)."""
        complete = self._splitter.feed(data)
        if not complete:
            return b""
        # Fast path: no usage object and no terminator in these events. (Past the terminator,
        # which pump never feeds, events that name "[DONE]" anywhere pass nothing, as before.)
        # The events before the first of the two pass as they are; only the rest is split. A
        # terminator is looked for only before the first usage object: one after it is found
        # by the split (a one-read answer ends with both: its [DONE] is not searched for).
        usage_at = _usage_object_at(complete)
        if usage_at < 0:
            first = _done_at(complete, len(complete))
            if first < 0 and not (self.done and b"[DONE]" in complete):
                return complete
        else:
            first = _done_at(complete, usage_at)
            if first < 0:
                first = usage_at
        cut = 0 if self.done else _events_before(complete, first)
        out = [complete[:cut]] if cut else []
        for block in split_events(complete[cut:] if cut else complete):
            if self.done:
                break
            if block == DONE_EVENT or (block.find(DONE) >= 0 and parse_event(block)[1] == DONE):
                self.done = True
                break
            if _USAGE_OBJECT.search(block) is not None:
                chunk = load_event_json(_data_of(block))
                if chunk is None:  # a usage report that cannot be read (NaN, cut JSON): unknown usage, not sent
                    self.usage = None
                    continue
                if isinstance(chunk.get("usage"), dict):  # the last report counts; one unusable: unknown
                    self.usage = Usage.from_openai(chunk["usage"])
                if chunk.get("choices") == []:  # the final usage chunk: held
                    self._usage_event, self._usage_chunk = block, chunk
                    continue
            out.append(block)
        return b"".join(out)

    def end(self) -> bytes:
        if not self.done and self.usage is None:
            raise ProxyError(502, "upstream stream ended before it was complete", code="upstream_stream_cut")
        return b""

    def finish(self, call: Call) -> bytes:
        if not call.include_usage:
            return DONE_EVENT
        if self._usage_event is None or call.billing.usage_estimated:
            # The upstream sent none, or one that could not be used: the gateway's count, if it made one.
            return OpenAIEncoder().finish(call, call.billing.usage)
        if not call.billing.usage_extra:
            return self._usage_event + DONE_EVENT
        spliced = splice_usage_fields(_data_of(self._usage_event), call.billing.usage_extra)
        if spliced is None:
            chunk = self._usage_chunk
            assert chunk is not None  # held together with the event
            chunk["usage"].update(call.billing.usage_extra)
            spliced = orjson.dumps(chunk)
        return data_event(spliced) + DONE_EVENT

    def fail(self, error: ProxyError) -> bytes:
        return error.sse_event("openai") + DONE_EVENT


class ChunkEncoder(Protocol):
    """Canonical chunks -> client bytes, in a client dialect."""

    def encode(self, chunks: list[dict]) -> bytes: ...

    def finish(self, call: Call, usage: Usage | None) -> bytes: ...

    def fail(self, error: ProxyError) -> bytes: ...


class OpenAIEncoder:
    """Canonical chunks -> OpenAI SSE (the identity, plus the usage chunk)."""

    __slots__ = ("_head",)

    def __init__(self) -> None:
        self._head: dict | None = None

    def encode(self, chunks: list[dict]) -> bytes:
        if not chunks:
            return b""
        if self._head is None:
            first = chunks[0]
            self._head = {k: first.get(k) for k in ("id", "object", "created", "model")}
        return b"".join(data_event(orjson.dumps(c)) for c in chunks)

    def finish(self, call: Call, usage: Usage | None) -> bytes:
        if usage is None or not call.include_usage:
            return DONE_EVENT
        chunk = dict(self._head or {"object": "chat.completion.chunk", "created": int(time.time())})
        body = usage.to_openai()
        body.update(call.billing.usage_extra)
        chunk["choices"] = []
        chunk["usage"] = body
        return data_event(orjson.dumps(chunk)) + DONE_EVENT

    def fail(self, error: ProxyError) -> bytes:
        return error.sse_event("openai") + DONE_EVENT


class TranslatingCodec:
    """A provider's decoder joined to a dialect's encoder."""

    __slots__ = ("_decoder", "_encoder")

    def __init__(self, decoder: StreamDecoder, encoder: ChunkEncoder) -> None:
        self._decoder = decoder
        self._encoder = encoder

    @property
    def usage(self) -> Usage | None:
        return self._decoder.usage

    @property
    def done(self) -> bool:
        return self._decoder.done

    def feed(self, data: bytes) -> bytes:
        chunks = self._decoder.feed(data)
        return self._encoder.encode(chunks) if chunks else b""

    def end(self) -> bytes:
        return self._encoder.encode(self._decoder.finish())

    def finish(self, call: Call) -> bytes:
        billing = call.billing  # the gateway's count when it made one (the upstream's could not be used)
        return self._encoder.finish(call, billing.usage if billing.usage_estimated else self._decoder.usage)

    def fail(self, error: ProxyError) -> bytes:
        return self._encoder.fail(error)


def completion_to_chunks(completion: dict) -> list[dict]:
    """A whole chat.completion as the chunks a stream would have carried
    (role, content, tool calls, finish). Used to replay cached answers."""
    head = {"id": completion.get("id", "chatcmpl-replay"), "object": "chat.completion.chunk",
            "created": completion.get("created", int(time.time())), "model": completion.get("model", "")}
    chunks = []
    for choice in completion.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        chunks.append({**head, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}]})
        if message.get("content"):
            chunks.append({**head, "choices": [{"index": index, "delta": {"content": message["content"]},
                                                "finish_reason": None}]})
        for i, tool_call in enumerate(message.get("tool_calls") or []):
            delta = {"tool_calls": [{"index": i, "id": tool_call.get("id"), "type": "function",
                                     "function": tool_call.get("function") or {}}]}
            chunks.append({**head, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        chunks.append({**head, "choices": [{"index": index, "delta": {},
                                            "finish_reason": choice.get("finish_reason") or "stop"}]})
    return chunks


class DrainLimits(Protocol):
    @property
    def seconds(self) -> float: ...

    @property
    def max_bytes(self) -> int: ...


# Output bytes of one stream kept for a token estimate; past it they are only counted.
MAX_KEPT_BYTES = 16 * 1024 * 1024


async def pump(call: Call, resp: web.StreamResponse, upstream: UpstreamResponse, codec: StreamCodec,
               on_usage: Callable[[Call], Awaitable[None]], filters: tuple[Callable[[bytes], bytes], ...],
               drain: DrainLimits, client_write: float = math.inf,
               before_end: Callable[[Call], Awaitable[None]] | None = None) -> None:
    """Move one stream from upstream to client; always ends the client's stream.

    A client that takes no bytes for ``client_write`` seconds (or until the
    upstream's total deadline) is treated as gone (see ``clientwrite.py``).

    What the codec produced (sent, or drained after the client left) is kept
    by reference in ``call.billing.streamed``: when the stream does not end
    complete, its usage is unknown (``billing.usage`` None, what the upstream
    had said in ``billing.partial_usage``) and the pricing plugin counts that
    output instead, so output that went out is never free.

    ``before_end(call)`` runs right before the last bytes (the tail) are written, when
    ``call.response.settle_before_end`` asks for it (``answers.before_end``)."""
    writer = ClientWriter(resp, call.request, client_write)
    chunks = ChunkWriter(resp)
    due = upstream.deadline
    # A client gone before its head could be written (the caller saw it) is drained as one that
    # leaves mid-stream: from now, for ``drain.seconds``, so that the upstream's usage is known.
    drain_until = time.monotonic() + drain.seconds if call.response.client_gone else 0.0
    drained = 0
    error: ProxyError | None = None
    tail = b""
    kept = call.billing.streamed = []
    kept_bytes = 0
    complete = False
    # The output of an upstream answer that is all in, written with the tail in one write
    # (nothing to wait for upstream; onewrite.end_stream).
    held: list[bytes] = []
    # (the mock provider's answers: no; asked of the type: the property is not run for it)
    hold = onewrite.ENABLED and hasattr(type(upstream), "complete")
    try:
        while not codec.done:
            try:
                chunk = await upstream.read_chunk()
                if not chunk:
                    break
                try:
                    out = codec.feed(chunk)
                except UNREADABLE as exc:  # an event of a shape the codec cannot read
                    raise unreadable_answer(call.provider_name or "upstream", exc) from None
                if out:
                    if kept_bytes < MAX_KEPT_BYTES:
                        kept.append(out)
                        kept_bytes += len(out)
                    else:
                        call.billing.streamed_dropped += len(out)
                if call.response.client_gone:
                    drained += len(chunk)
                    if drained > drain.max_bytes or time.monotonic() > drain_until:
                        raise _DrainBoundReached
                    continue
                if out:
                    for f in filters:
                        out = f(out)
                    if call.timing.first_byte_at is None:
                        call.timing.first_byte_at = time.perf_counter()
                    if hold and upstream.complete:
                        held.append(out)
                    elif not chunks.write(out):  # (a plain call where aiohttp's write would not wait)
                        await writer.write(out, due)
            except (ConnectionError, asyncio.CancelledError) as exc:
                # The client hung up (a failed write, or a server that cancels the
                # handlers of lost connections): keep reading, bounded, so usage is known.
                if isinstance(exc, asyncio.CancelledError):
                    if call.response.shutdown:  # shutdown_timeout passed: end it as a cut, billed
                        _uncancel()
                        raise shutdown_error() from None
                    if call.response.client_gone:
                        raise  # cancelled again while draining: give up
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                if isinstance(exc, ClientStalled):
                    call.response.error_code = CLIENT_WRITE_TIMEOUT
                call.response.client_gone = True
                drain_until = time.monotonic() + drain.seconds
        try:
            tail = codec.end()
        except UNREADABLE as exc:
            raise unreadable_answer(call.provider_name or "upstream", exc) from None
        if tail:
            kept.append(tail)
        complete = True
    except _DrainBoundReached:
        call.response.error_code = "client_gone_drain_bound"
    except ProxyError as err:
        error = err
    finally:
        # After the codec's end (a stream's last event), only the body's terminator is due: the
        # connection waits for it and is reused (a stream's last event and the terminator often
        # come in separate reads; closing it then cost a new connection every few streams).
        upstream.release(settle=codec.done)
    # Usage hooks run once for every stream that started, however it ended.
    if complete:
        call.billing.usage = codec.usage
        call.billing.stream_complete = True
    else:
        call.billing.partial_usage = codec.usage
    try:
        await on_usage(call)
    except Exception as exc:  # a pricing bug must not leave the client's stream open
        throttled(log, logging.ERROR, "usage_failed", "tollway_usage failed", exc_info=True)
        error = error or (exc if isinstance(exc, ProxyError) else internal_error())
    if call.response.client_gone:
        return
    if error is not None:
        call.response.error = error
        tail = codec.fail(error.styled(style_of(call.request)))
    else:
        try:
            tail += codec.finish(call)
        except UNREADABLE as exc:  # the codec's state came from events it could not read
            call.response.error = unreadable_answer(call.provider_name or "upstream", exc)
            tail += codec.fail(call.response.error.styled(style_of(call.request)))
    try:
        try:
            for f in filters:
                tail = f(tail)
        except ProxyError as err:  # a plugin ended the stream at its end: in-band too, unfiltered
            call.response.error = err
            tail = codec.fail(err.styled(style_of(call.request)))
        if before_end is not None and call.response.settle_before_end:  # (asked for: else not even called)
            await before_end(call)
        await writer.write_all_eof(held, tail, due)
    except ConnectionError as exc:
        if isinstance(exc, ClientStalled):
            call.response.error_code = CLIENT_WRITE_TIMEOUT
        call.response.client_gone = True


class _DrainBoundReached(Exception):
    pass


async def replay(call: Call, resp: web.StreamResponse, encoder: ChunkEncoder, chunks: list[dict],
                 usage: Usage | None, before_end: Callable[[Call], Awaitable[None]] | None = None) -> None:
    """Write a complete answer (a cache hit) as a stream (``before_end`` as in ``pump``)."""
    try:
        call.timing.first_byte_at = time.perf_counter()
        await resp.write(encoder.encode(chunks))
        await asyncio.sleep(0)
        if before_end is not None and call.response.settle_before_end:
            await before_end(call)
        await resp.write(encoder.finish(call, usage))
        await resp.write_eof()
    except (ConnectionError, RuntimeError):
        call.response.client_gone = True


def _events_before(blob: bytes, index: int) -> int:
    """The length of the whole events in ``blob`` that end before ``index``, when
    ``split_events`` is sure to cut there too (a lone ``\\n\\n`` between two
    non-newline bytes); else 0 (then everything is split, as before)."""
    i = blob.rfind(b"\n\n", 0, index)
    if i <= 0 or blob[i - 1] in b"\r\n" or blob[i + 2] in b"\r\n":
        return 0
    return i + 2


def _done_at(blob: bytes, end: int) -> int:
    """Where the first ``[DONE]`` that ends a line begins in ``blob[:end]`` (whole events), or -1.
    (``end`` is ``len(blob)`` or where a usage object begins: a ``[DONE]`` line that begins before
    it ends before it too, its 7 bytes not being the object's ``"``.)

    Only one that ends a line can be a terminator's data (``parse_event`` reads it up to
    the line's ``\n`` or ``\r``; each event ends with a blank line): one a text holds
    (``"... [DONE]"``) does not stop the fast path. The longer needle also scans faster.

    In a long blob (an answer that came in one read) the search starts where a ``[DONE]``
    may first begin: its ``D``, ``O``, ``N`` and ``E`` are 1 to 4 bytes in, so none begins
    before the first of each letter less that (a ``memchr`` each, ~25x faster than the
    needle's search, whose skip loop is latency-bound); none at all when one is missing.
    OpenAI's chunks hold capitals only in their id and text; where those have none of the four
    (the bench's answer) they first come at the ``[DONE]``, and the search is ~10 bytes long
    (10.5 KB: 3.5 -> 1.3 us); an id with all four: +0.7 us."""
    start = 0
    if end > _BOUND_PAST:
        d = blob.find(_D, 0, end)
        if d < 0:
            return -1
        o = blob.find(_O, 0, end)
        if o < 0:
            return -1
        n = blob.find(_N, 0, end)
        if n < 0:
            return -1
        e = blob.find(_E, 0, end)
        if e < 0:
            return -1
        start = max(d - 1, o - 2, n - 3, e - 4, 0)
    at = blob.find(b"[DONE]\n", start, end)
    if CR in blob:  # (a search for a byte: the usual stream has no \r)
        cr = blob.find(b"[DONE]\r", start, end)
        if cr >= 0 and (at < 0 or cr < at):
            return cr
    return at


#: None: no usage object in the bytes searched (a ``ge"`` not followed by ``:null`` may begin one).
_maybe_usage_object = END_NOT_NULL.search
#: ``[DONE]``'s letters, as ints (``bytes.find`` of an int is a ``memchr``).
_D, _O, _N, _E = b"DONE"
#: Blobs longer than this have ``_done_at``'s search bounded first (four ``memchr``; shorter: not worth them).
_BOUND_PAST = 1024


def _data_of(block: bytes) -> bytes:
    """``parse_event(block)``'s data, without its line-by-line parse for the usual
    block, one ``data: `` line ended by ``\\n\\n`` (no other line, no ``\\r``)."""
    if block.startswith(b"data: ") and block.find(b"\n") == len(block) - 2 and CR not in block:
        return block[6:-2]
    return parse_event(block)[1]

"""``proxy.bodies.arrived`` (a body already in, taken at once) against aiohttp's own
``request.read()``: the same bytes or the same error, and the same state left on the
request and its stream, over generated bodies (one read or many, chunked framing, empty,
over ``client_max_size``, failed, still arriving, read before)."""

from __future__ import annotations

import asyncio
import random

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from proxy.bodies import arrived


class Protocol:
    def __init__(self) -> None:
        self.resumed = self.paused = 0
        self._reading_paused = False

    def resume_reading(self, resume_parser: bool = True) -> None:
        self.resumed += 1

    def pause_reading(self) -> None:
        self.paused += 1


def case(rng: random.Random) -> dict:
    pieces = [rng.randbytes(rng.choice([0, 1, 50, 700, 5000])) for _ in range(rng.choice([0, 1, 1, 1, 2, 3, 6]))]
    return {
        "pieces": pieces,
        "chunked": rng.random() < 0.2,
        "eof": rng.random() < 0.85,
        "error": rng.random() < 0.08,
        "max_size": rng.choice([0, 1024**2, 100, 5000, 9000]),
        "limit": rng.choice([2**16, 16, 1000]),
        "read_before": rng.random() < 0.05,
    }


_SHARED: dict = {}


def shared_mocks() -> dict:
    """The app, protocol, writer and transport mocks of one ``make_mocked_request``, for every
    request of a test: neither ``read()`` nor ``arrived`` touches them (only the payload and
    ``client_max_size``), and making them anew (specced mocks) took most of a case's time."""
    if not _SHARED:
        first = make_mocked_request("POST", "/v1/chat/completions")
        _SHARED.update(app=first.app, protocol=first.protocol, writer=first.writer, transport=first.transport)
    return _SHARED


def make(c: dict, loop) -> tuple[web.Request, StreamReader, Protocol]:
    protocol = Protocol()
    payload = StreamReader(protocol, c["limit"], loop=loop)
    if c["chunked"]:
        payload.begin_http_chunk_receiving()
    for piece in c["pieces"]:
        payload.feed_data(piece)
        if c["chunked"]:
            payload.end_http_chunk_receiving()
            payload.begin_http_chunk_receiving()
    if c["error"]:
        payload.set_exception(ValueError("broken framing"))
    elif c["eof"]:
        payload.feed_eof()
    request = make_mocked_request("POST", "/v1/chat/completions", payload=payload,
                                  client_max_size=c["max_size"], loop=loop, **shared_mocks())
    if c["read_before"]:
        request._read_bytes = b"read before"
    return request, payload, protocol


def state(request: web.Request, payload: StreamReader, protocol: Protocol, outcome) -> dict:
    return {"outcome": outcome, "read_bytes": request._read_bytes, "buffer": list(payload._buffer),
            "size": payload._size, "cursor": payload._cursor, "eof": payload._eof, "low": payload._low_water,
            "high": payload._high_water, "splits": list(payload._http_chunk_splits or ()),
            "resumed": protocol.resumed, "paused": protocol.paused}


async def outcome_of(read) -> object:
    try:
        return ("bytes", await read())
    except Exception as exc:  # noqa: BLE001 (compared: both ways must raise the same)
        return ("error", type(exc), str(exc))


async def test_arrived_is_what_read_answers():
    loop = asyncio.get_running_loop()
    rng = random.Random(1205)
    taken = 0
    for i in range(3000):
        c = case(rng)
        request, payload, protocol = make(c, loop)
        if not c["eof"] and not c["error"]:
            theirs = None  # (still arriving: read() would wait; arrived must not take it)
            assert arrived(request) is None
            continue
        theirs = state(request, payload, protocol, await outcome_of(request.read))
        request, payload, protocol = make(c, loop)

        async def ours(request: web.Request = request) -> bytes:
            raw = arrived(request)
            return raw if raw is not None else await request.read()

        took = request._read_bytes is None and c["eof"] and not c["error"]
        mine = state(request, payload, protocol, await outcome_of(ours))
        assert mine == theirs, (i, c)
        taken += took
    assert taken > 1500


async def test_a_whole_body_is_taken_without_read():
    request, payload, _ = make({"pieces": [b'{"a":', b"1}"], "chunked": False, "eof": True, "error": False,
                                "max_size": 1024, "limit": 2**16, "read_before": False},
                               asyncio.get_running_loop())
    assert arrived(request) == b'{"a":1}'
    assert request._read_bytes == b'{"a":1}' and payload.at_eof()

"""The upstream HTTP/1.1 client (proxy/http1.py, proxy/pool.py): framing, keep-alive, limits, TLS.

Framing is checked on a connection fed by hand (every way of cutting the
bytes must give the same body); the pool against real local servers.
"""

from __future__ import annotations

import asyncio
import random
import ssl

import pytest
import trustme
from aiohttp import web

from proxy import http1
from proxy.pool import ConnectionPool

ORIGIN = ("http", "127.0.0.1", 1)


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.paused = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


async def fed(pieces: list[bytes], limit: int = 10) -> tuple[http1.Connection, FakeTransport]:
    """A connection that sent a request and received ``pieces``, one data_received each."""
    pool = ConnectionPool(limit, connect_timeout=1)
    conn = http1.Connection(pool, ORIGIN)
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.send(b"GET / HTTP/1.1\r\n\r\n")
    for piece in pieces:
        conn.data_received(piece)
    return conn, transport


def cuts(data: bytes, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 9)
        out.append(data[i:i + n])
        i += n
    return out


CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"7\r\ndata: 1\r\n17;ext=x\r\n\n\ndata: {\"a\": \"\\r\\n\"}\n\n\r\n0\r\nX-Trailer: t\r\n\r\n")
CHUNKED_BODY = b'data: 1\n\ndata: {"a": "\\r\\n"}\n\n'
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: application/json\r\n\r\n{\"ok\":true}"


@pytest.mark.parametrize("raw, body", [(CHUNKED, CHUNKED_BODY), (LENGTH, b'{"ok":true}')])
async def test_every_cut_of_the_bytes_gives_the_same_body(raw, body):
    rng = random.Random(7)
    for _ in range(200):
        conn, transport = await fed(cuts(raw, rng))
        await conn.read_head()
        assert conn.status == 200
        assert conn.read_nowait() == body
        assert conn.at_eof() and conn.reusable and not transport.aborted


async def test_headers_are_parsed_on_demand_and_case_insensitive():
    conn, _ = await fed([b"HTTP/1.1 429 Too Many\r\nretry-after: 7\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n"])
    await conn.read_head()
    headers = http1.parse_headers(conn.raw_headers)
    assert conn.status == 429 and headers["Retry-After"] == "7" and headers.getall("X-A") == ["1", "2"]


async def test_interim_answers_are_skipped():
    conn, _ = await fed([b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n",
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"])
    await conn.read_head()
    assert conn.status == 200 and conn.read_nowait() == b"hi" and conn.at_eof()


async def test_a_body_without_length_ends_at_the_close_and_is_not_reused():
    conn, _ = await fed([b"HTTP/1.1 200 OK\r\n\r\npart one, ", b"part two"])
    await conn.read_head()
    assert conn.read_nowait() == b"part one, part two" and not conn.at_eof()
    conn.connection_lost(None)
    assert conn.at_eof() and not conn.reusable


@pytest.mark.parametrize("head, reusable", [
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiEXTRA", False),  # bytes nobody asked for
])
async def test_keep_alive_follows_the_answer(head, reusable):
    conn, _ = await fed([head])
    await conn.read_head()
    conn.read_nowait()
    assert conn.reusable is reusable


@pytest.mark.parametrize("raw, message", [
    (b"SPDY/3 200 OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 2x0 OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "character in Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "character in chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX", "LF after chunk data"),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switched protocols"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (http1.MAX_HEAD + 10), "larger than"),
])
async def test_broken_answers_raise_and_close_the_connection(raw, message):
    conn, transport = await fed([raw])
    with pytest.raises(http1.BadResponse, match=message):
        await conn.read_head()
        while not conn.at_eof():
            conn.read_nowait()
    assert transport.aborted and not conn.reusable


async def test_a_slow_reader_pauses_reading_until_it_catches_up():
    size = http1.HIGH_WATER * 2
    conn, transport = await fed([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size])
    await conn.read_head()
    conn.data_received(b"x" * (http1.HIGH_WATER + 1))
    assert transport.paused
    assert len(conn.read_nowait()) == http1.HIGH_WATER + 1 and not transport.paused


def test_request_bytes_and_header_injection():
    origin, host, target = http1.split_url("https://api.example.com/v1beta/models/m:generate?alt=sse")
    assert origin == ("https", "api.example.com", 443) and host == "api.example.com"
    assert target == "/v1beta/models/m:generate?alt=sse"
    assert http1.split_url("http://[::1]:8080/v1")[1] == "[::1]:8080"
    raw = http1.encode_request("POST", "h:81", "/v1/x", {"Authorization": "Bearer k"}, b"{}")
    assert raw == (b"POST /v1/x HTTP/1.1\r\nHost: h:81\r\nUser-Agent: tollway\r\nAuthorization: Bearer k\r\n"
                   b"Content-Length: 2\r\n\r\n{}")
    for bad, why in [({"X": "a\r\nEvil: 1"}, "CR, LF or NUL"), ({"X": "a\0b"}, "CR, LF or NUL"),
                     ({"X\nY": "a"}, "not a valid HTTP token"), ({"X: Y": "a"}, "not a valid HTTP token"),
                     ({"": "a"}, "not a valid HTTP token"), ({"content-LENGTH": "0"}, "frames the request"),
                     ({"Transfer-Encoding": "chunked"}, "frames the request"), ({"Host": "evil"}, "frames the"),
                     ({"Connection": "close"}, "frames the request")]:
        with pytest.raises(ValueError, match=why):
            http1.encode_request("POST", "h", "/", bad, b"")
    # An operator's User-Agent replaces the gateway's (one header, not two).
    raw = http1.encode_request("POST", "h", "/", {"user-agent": "mine/1"}, b"")
    assert raw.lower().count(b"user-agent") == 1 and b"user-agent: mine/1\r\n" in raw
    with pytest.raises(ValueError, match="not an http"):
        http1.split_url("ftp://example.com/")


# -- the pool, against real local servers ----------------------------------------------

class Counting:
    """An aiohttp server that counts the connections it saw and answers /slow slowly."""

    def __init__(self) -> None:
        self.peers: set = set()
        self.active = 0
        self.max_active = 0

    def app(self) -> web.Application:
        async def answer(request: web.Request) -> web.Response:
            self.peers.add(request.transport.get_extra_info("peername"))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                if request.path == "/slow":
                    await asyncio.sleep(0.05)
                elif request.path == "/hold":  # until the client goes (the handler is then cancelled)
                    await asyncio.sleep(30)
                return web.Response(body=await request.read())
            finally:
                self.active -= 1

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        return app


async def call(pool: ConnectionPool, url: str, body: bytes = b"ping", replayable: bool = False) -> bytes:
    origin, host, target = http1.split_url(url)
    conn = await pool.request(origin, http1.encode_request("POST", host, target, {}, body), replayable)
    try:
        data = b""
        while not conn.at_eof():
            data += conn.read_nowait()
            if not conn.at_eof():
                await conn.wait()
        return data + conn.read_nowait()
    finally:
        pool.release(conn)


async def test_connections_are_reused_and_limited(aiohttp_server):
    counting = Counting()
    server = await aiohttp_server(counting.app())
    pool = ConnectionPool(limit=2, connect_timeout=2)
    try:
        for i in range(5):
            assert await call(pool, str(server.make_url("/a")), b"n%d" % i) == b"n%d" % i
        assert len(counting.peers) == 1  # one keep-alive connection served all five
        answers = await asyncio.gather(*(call(pool, str(server.make_url("/slow")), b"%d" % i) for i in range(8)))
        assert answers == [b"%d" % i for i in range(8)]
        assert counting.max_active == 2 and len(counting.peers) == 2 and pool.open_count == 2
    finally:
        await pool.close()


async def test_idle_connections_expire(aiohttp_server):
    counting = Counting()
    server = await aiohttp_server(counting.app())
    pool = ConnectionPool(limit=4, connect_timeout=2, keepalive=0.05)
    try:
        await call(pool, str(server.make_url("/")))
        await asyncio.sleep(0.2)  # longer than keepalive: the sweep closed it
        assert pool.open_count == 0
        await call(pool, str(server.make_url("/")))
        assert len(counting.peers) == 2
    finally:
        await pool.close()


async def serve_then(after_first):
    """A server whose connections answer one request ("ok"), then read the
    next request and do ``after_first(writer)`` with it; returns (server, url, requests seen)."""
    seen = []

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(4)
        seen.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.readuntil(b"\r\n\r\n")  # the next request on this connection
        await reader.readexactly(4)
        seen.append(2)
        await after_first(writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/", seen


async def dropped(writer) -> None:
    pass  # read, then closed unanswered


async def half_a_head(writer) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-")
    await writer.drain()


@pytest.mark.parametrize("replayable", [True, False])
async def test_the_keep_alive_race_resends_only_a_replayable_request(replayable):
    """The upstream closes a reused connection without a byte of answer: it may
    have closed it while idle (the request never read) or read the request and
    died. Only a request that may run twice (GET, an Idempotency-Key) goes again."""
    server, url, seen = await serve_then(dropped)
    pool = ConnectionPool(limit=4, connect_timeout=2)
    try:
        assert await call(pool, url) == b"ok"
        if replayable:
            assert await call(pool, url, replayable=True) == b"ok"  # again, on a new connection
            assert seen == [1, 2, 1]
        else:
            with pytest.raises(http1.UpstreamClosed):
                await call(pool, url)
            assert seen == [1, 2]  # the upstream saw it once, and only once
        assert pool.open_count == (1 if replayable else 0)
    finally:
        await pool.close()
        server.close()


async def test_a_request_that_got_part_of_an_answer_is_never_resent():
    server, url, seen = await serve_then(half_a_head)
    pool = ConnectionPool(limit=4, connect_timeout=2)
    try:
        assert await call(pool, url) == b"ok"
        with pytest.raises(http1.UpstreamClosed):
            await call(pool, url, replayable=True)
        assert seen == [1, 2]
    finally:
        await pool.close()
        server.close()


async def test_a_request_never_written_goes_on_a_new_connection(aiohttp_server):
    """The connection closed under the request before a byte of it was written:
    sent again, POST or not."""
    counting = Counting()
    server = await aiohttp_server(counting.app())
    url = str(server.make_url("/"))
    pool = ConnectionPool(limit=4, connect_timeout=2)
    try:
        assert await call(pool, url) == b"ping"
        (idle,) = pool._idle[http1.split_url(url)[0]]

        def closed(data: bytes) -> None:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

        idle.transport.write = closed
        assert await call(pool, url, b"again") == b"again"
        assert len(counting.peers) == 2
    finally:
        await pool.close()


async def test_the_upstreams_keep_alive_timeout_is_honoured():
    async def handle(reader, writer):
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            await reader.readexactly(4)
            writer.write(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1, max=100\r\nContent-Length: 2\r\n\r\nok")

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    pool = ConnectionPool(limit=4, connect_timeout=2)
    try:
        assert await call(pool, url) == b"ok"
        (first,) = pool._idle[http1.split_url(url)[0]]
        assert first.keepalive == 0.0  # a second short of the upstream's 1 s
        await asyncio.sleep(0.01)
        assert await call(pool, url) == b"ok"
        (second,) = pool._idle[http1.split_url(url)[0]]
        assert second is not first and first.closed  # idle past the upstream's limit: not reused
    finally:
        await pool.close()
        server.close()


async def test_a_new_connection_closed_before_answering_is_an_error():
    async def close_at_once(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    pool = ConnectionPool(limit=4, connect_timeout=2)
    try:
        with pytest.raises(http1.UpstreamClosed):
            await call(pool, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
        assert pool.open_count == 0
    finally:
        await pool.close()
        server.close()


async def test_refused_connections_raise_cannot_connect_and_free_their_slot(unused_tcp_port):
    pool = ConnectionPool(limit=1, connect_timeout=2)
    for _ in range(3):
        with pytest.raises(http1.CannotConnect):
            await call(pool, f"http://127.0.0.1:{unused_tcp_port}/")
    assert pool.open_count == 0
    await pool.close()


async def test_https_with_a_verified_certificate(aiohttp_server):
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    counting = Counting()
    server = await aiohttp_server(counting.app(), ssl=server_ctx)
    url = f"https://localhost:{server.port}/v1/x"

    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    pool = ConnectionPool(limit=2, connect_timeout=2, ssl_context=trusted)
    try:
        assert await call(pool, url, b"secret") == b"secret"
        assert await call(pool, url, b"again") == b"again"
        assert len(counting.peers) == 1
    finally:
        await pool.close()

    system_trust = ConnectionPool(limit=2, connect_timeout=2)  # does not know the test CA
    try:
        with pytest.raises(http1.CannotConnect, match="CERTIFICATE_VERIFY_FAILED"):
            await call(system_trust, url)
    finally:
        await system_trust.close()


async def test_closing_the_pool_fails_waiters_and_aborts_connections(aiohttp_server):
    counting = Counting()
    server = await aiohttp_server(counting.app())
    pool = ConnectionPool(limit=1, connect_timeout=2)
    slow = asyncio.ensure_future(call(pool, str(server.make_url("/hold"))))
    while not counting.active:  # the held request is at the upstream (not still connecting)
        await asyncio.sleep(0.001)
    waiting = asyncio.ensure_future(call(pool, str(server.make_url("/"))))
    while not pool._waiters:  # the second request waits for the pool's one connection
        await asyncio.sleep(0.001)
    await pool.close()
    with pytest.raises(http1.UpstreamClosed):
        await slow
    with pytest.raises(http1.CannotConnect, match="closed"):
        await waiting


async def test_a_transport_closed_under_the_request_is_an_upstream_close():
    class Closed(FakeTransport):
        def write(self, data: bytes) -> None:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    pool = ConnectionPool(2, connect_timeout=1)
    conn = http1.Connection(pool, ORIGIN)
    conn.connection_made(Closed())
    with pytest.raises(http1.UpstreamClosed, match="before the request went out"):
        conn.send(b"GET / HTTP/1.1\r\n\r\n")
    assert not conn.reusable


# -- failures of the connect and of the body, as the gateway answers them -----------------

def upstream_client(connect: float = 2.0):
    from types import SimpleNamespace

    from proxy.upstream import UpstreamClient

    timeouts = SimpleNamespace(connect=connect, first_byte=2.0, idle=2.0, total=5.0)
    return UpstreamClient("up", SimpleNamespace(timeouts=timeouts, max_connections=4))


async def test_a_connect_longer_than_the_connect_timeout_answers_504(monkeypatch):
    from proxy import ProxyError
    from proxy.upstream import UpstreamRequest

    client = upstream_client(connect=0.05)
    await client.start()

    async def never_connects(*args, **kwargs):
        await asyncio.sleep(10)

    monkeypatch.setattr(client.loop, "create_connection", never_connects)
    try:
        with pytest.raises(ProxyError) as caught:
            await client.open(UpstreamRequest("http://10.255.255.1/v1/x", b"{}"))
        assert caught.value.status == 504 and caught.value.code == "upstream_timeout_connect"
        assert client.connections.open_count == 0
    finally:
        await client.close()


async def test_the_kernels_connect_timeout_is_unreachable_not_a_first_byte_timeout(monkeypatch):
    from proxy import ProxyError
    from proxy.upstream import UpstreamRequest

    client = upstream_client()
    await client.start()

    async def timed_out(*args, **kwargs):
        raise TimeoutError(110, "Connection timed out")

    monkeypatch.setattr(client.loop, "create_connection", timed_out)
    try:
        with pytest.raises(ProxyError) as caught:
            await client.open(UpstreamRequest("http://10.255.255.1/v1/x", b"{}"))
        assert caught.value.status == 502 and caught.value.code == "upstream_unreachable"
    finally:
        await client.close()


@pytest.mark.parametrize("whole", [True, False])  # the whole answer arrived, or more is still to come
async def test_an_answer_over_the_size_limit_is_refused(whole):
    from proxy import ProxyError
    from proxy.upstream import UpstreamRequest

    sent = b"x" * 5000
    length = len(sent) if whole else 10 * len(sent)

    async def big_answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length + sent)
        await writer.drain()
        await asyncio.sleep(1)  # the rest of a longer answer never comes

    server = await asyncio.start_server(big_answer, "127.0.0.1", 0)
    client = upstream_client()
    await client.start()
    try:
        answer = await client.open(UpstreamRequest(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/", b"{}"))
        await asyncio.sleep(0.05)  # let the bytes arrive
        with pytest.raises(ProxyError) as caught:
            await answer.read_all(limit=1000)
        assert caught.value.status == 502 and caught.value.code == "upstream_too_large"
        answer.release()
        # Read to its end, the connection is kept; cut short, it is closed.
        assert client.connections.open_count == (1 if whole else 0)
    finally:
        await client.close()
        server.close()

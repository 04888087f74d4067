"""The floor: the barest aiohttp + uvloop + orjson passthrough, what tollway is measured against.

``python -m benchmarks.floor --upstream http://127.0.0.1:PORT [--port 0]``
prints ``floor listening on http://127.0.0.1:PORT``. It parses the body once
(as any gateway must, to read the model), forwards the original bytes, and
streams the answer back as it arrives. No auth, no limits, no accounting.
"""

import argparse
import socket

import orjson
import uvloop
from aiohttp import ClientSession, TCPConnector, web


def make_app(upstream: str) -> web.Application:
    async def start(app: web.Application) -> None:
        app["session"] = ClientSession(connector=TCPConnector(limit=1000), auto_decompress=False)

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def chat(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        stream = orjson.loads(raw).get("stream") is True
        async with request.app["session"].post(upstream + request.path, data=raw,
                                               headers={"Content-Type": "application/json"}) as up:
            if not stream:
                return web.Response(status=up.status, body=await up.read(), content_type="application/json")
            resp = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description="the bare passthrough tollway is measured against")
    p.add_argument("--upstream", required=True, help="the upstream's root URL, e.g. http://127.0.0.1:9000")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    sock = socket.create_server((args.host, args.port), backlog=2048)
    print(f"floor listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    uvloop.install()
    web.run_app(make_app(args.upstream.rstrip("/")), sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    main()

"""Serve the mock upstream on a port chosen by the OS, and say which.

``python -m benchmarks.serve_mock [--ttft S] [--chunk-delay S] [--chunks N]
[--chunk-size N] [--delay S]`` prints ``mock listening on http://127.0.0.1:PORT``
once the socket is bound, so the harness never guesses a free port.
(``python -m benchmarks.mock_upstream --port P`` is the fixed-port way.)
"""

from __future__ import annotations

import argparse
import socket

from aiohttp import web

from .mock_upstream import MockSettings, make_app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="the mock upstream on an OS-chosen port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ttft", type=float, default=0.0)
    p.add_argument("--chunk-delay", type=float, default=0.0)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=8)
    p.add_argument("--delay", type=float, default=0.0)
    args = p.parse_args(argv)
    settings = MockSettings(ttft=args.ttft, chunk_delay=args.chunk_delay, chunks=args.chunks,
                            chunk_size=args.chunk_size, delay=args.delay)
    sock = socket.create_server((args.host, args.port), backlog=2048)
    print(f"mock listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    web.run_app(make_app(settings), sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    main()

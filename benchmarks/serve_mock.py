"""Serve the mock upstream on a port chosen by the OS, and say which.

``python -m benchmarks.serve_mock [--ttft S] [--chunk-delay S] [--chunks N]
[--chunk-size N] [--delay S]`` prints ``mock listening on http://127.0.0.1:PORT``
once the socket is bound, so the harness never guesses a free port.
It is ``python -m benchmarks.mock_upstream --port 0``.
"""

from __future__ import annotations

import sys

from .mock_upstream import main as serve_mock


def main(argv: list[str] | None = None) -> None:
    serve_mock(["--port", "0", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()

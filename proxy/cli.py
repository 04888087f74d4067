"""The ``tollway`` command: serve, check, and the commands plugins add (keys, usage, bench...)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .heap import settle_heap
from .inflight import GRACE_S
from .logs import display_prefix
from .plugins import BUILTINS, make_plugin_manager
from .schema import ConfigError
from .stopping import StopSignals, exit_by_deadline, ignore_until_exit, stop_limit, tell_stop_limit

if TYPE_CHECKING:
    from .gateway import Gateway

# For plugins' commands (tollway_commands): the rest is the command itself.
__all__ = ["add_config_arg", "gateway_command", "positive_int", "port_number", "workers_dir"]

DEFAULT_CONFIG = "config/tollway.yaml"
WORKERS_DIR_ENV = "TOLLWAY_WORKERS_DIR"
log = logging.getLogger("tollway")


def main(argv: Sequence[str] | None = None) -> int:
    # A gateway is an event loop: numeric libraries (the cache's numpy search)
    # must not start thread pools that fight it for the cores. Set before they load.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"tollway: {exc.label}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollway", description="A self-hosted LLM gateway.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway")
    add_config_arg(serve)
    serve.add_argument("--host", help="address to listen on (default: server.host)")
    serve.add_argument("--port", type=port_number, help="port to listen on (default: server.port)")
    serve.add_argument("--workers", type=positive_int, help="processes sharing the port (default: server.workers)")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a config file without serving")
    add_config_arg(check)
    check.set_defaults(func=cmd_check)

    migrate = sub.add_parser("migrate", help="bring the store's tables up to this version's schema, then exit")
    add_config_arg(migrate)
    migrate.set_defaults(func=gateway_command(migrate_store))

    reload = sub.add_parser("reload", help="make a running tollway serve read its config file again")
    add_config_arg(reload)
    reload.add_argument("--url", help="the running server (default: http://server.host:server.port of the config)")
    reload.set_defaults(func=cmd_reload)

    # The benchmark harness (benchmarks/) parses its own options; imported only when run.
    bench = sub.add_parser("bench", help="benchmark tollway against a bare floor (tollway bench -h)",
                           add_help=False, prefix_chars="\0")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)

    # Commands from the built-in plugins (keys, usage...) and installed ones.
    importable = [n for n in BUILTINS if _importable(BUILTINS[n])]
    try:
        pm = make_plugin_manager(importable)
    except ConfigError:
        pm = make_plugin_manager(())
    pm.hook.tollway_commands(subparsers=sub)
    return parser


def _importable(module: str) -> bool:
    """Whether a built-in plugin loads (for its commands); a broken one must not
    take every command down. A missing optional extra (the cache's numpy) is no
    news unless the config enables the plugin: loading that config says so."""
    try:
        importlib.import_module(module)
        return True
    except ImportError as exc:
        log.debug("built-in plugin %s cannot be loaded: %s", module, exc)
        return False
    except Exception as exc:
        log.warning("built-in plugin %s cannot be loaded: %s", module, exc)
        return False


def workers_dir() -> Path | None:
    """In a worker of ``tollway serve --workers N`` (N > 1): the directory the N workers
    share for this run (new at start, removed when it ends); None in a lone process."""
    shared = os.environ.get(WORKERS_DIR_ENV)
    return Path(shared) if shared else None


def add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=os.environ.get("TOLLWAY_CONFIG", DEFAULT_CONFIG),
                   help=f"the YAML config file (default: $TOLLWAY_CONFIG or {DEFAULT_CONFIG})")


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed."""
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def gateway_command(fn: Callable[[Gateway, argparse.Namespace], Awaitable[int]]
                    ) -> Callable[[argparse.Namespace], int]:
    """Wrap ``async fn(gateway, args) -> int`` as a CLI command: the config
    (``--config``) is loaded and the gateway's storage and plugins started,
    without serving, for the command's duration."""
    def run(args: argparse.Namespace) -> int:
        from .gateway import load_gateway

        gateway = load_gateway(args.config)

        async def go() -> int:
            await gateway.start(serving=False)
            try:
                return await fn(gateway, args)
            finally:
                await gateway.close()

        return run_async(go())

    return run


# -- check ----------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    from .gateway import load_gateway

    gateway = load_gateway(args.config)
    cfg = gateway.config
    for name in cfg.unset_env:
        print(f"warning: ${{{name}}} is not set; it reads as empty text", file=sys.stderr)
    for provider in gateway.providers.values():
        if (warning := provider.startup_warning()) is not None:
            print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: ok ({len(cfg.providers)} providers, {len(cfg.models)} models, "
          f"plugins: {', '.join(cfg.plugins.enabled) or 'none'})")
    return 0


# -- migrate --------------------------------------------------------------------------

async def migrate_store(gateway: Gateway, args: argparse.Namespace) -> int:
    """Starting the gateway without serving (``gateway_command``) has applied the migrations of
    the core and of every enabled plugin (each plugin's ``tollway_startup`` runs its own); the
    core's stored responses are opened here as ``serve`` opens them. Say where each component is."""
    from .store import schema_version

    await gateway.stored_responses.open(gateway.store)
    await gateway.stored_responses.close()
    rows = await gateway.store.fetchall("select component from tollway_schema order by component")
    versions = [f"{name} {await schema_version(gateway.store, name)}" for (name,) in rows]
    # (the store's kind, not its URL: a PostgreSQL URL may hold a password)
    print(f"tollway: the {gateway.store.kind} store's schema is up to date: {', '.join(versions)}")
    return 0


# -- reload ---------------------------------------------------------------------------

def cmd_reload(args: argparse.Namespace) -> int:
    """POST /admin/reload to the server the config file describes (its host, port and admin key)."""
    from .reload import ask_to_reload

    return ask_to_reload(args.config, args.url)


# -- bench ----------------------------------------------------------------------------

def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.cli import main as bench_main

    code: int = bench_main(args.bench_args)
    return code


# -- serve ----------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from .gateway import load_gateway

    # Until the server listens for it (a reload), a SIGHUP must not end the process (its default).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    overrides = {"host": args.host, "port": args.port, "workers": args.workers}
    gateway = load_gateway(args.config, server_overrides=overrides)  # validate before forking workers
    server = gateway.config.server
    host, port, workers = server.host, server.port, server.workers
    for name in gateway.config.unset_env:
        log.warning("${%s} is not set; it reads as empty text", name)
    if workers > 1 and not args.reuse_port:
        return serve_workers(args, host, port, workers, server.shutdown_timeout)
    code = run_async(serve_one(gateway, host, port, reuse_port=args.reuse_port))
    ignore_until_exit()  # again: closing the loop may have restored the default actions
    return code


async def serve_one(gateway: Gateway, host: str, port: int, reuse_port: bool = False) -> int:
    from aiohttp import web

    from .app import make_app
    from .connection import GatewayRunner
    from .reload import RELOADER_KEY, listen_for_sighup

    app = make_app(gateway, workers_parent=os.getppid() if reuse_port else None)
    # shutdown_timeout is applied by the app's on_shutdown (proxy/inflight.py), which stops and
    # bills what is still in flight; aiohttp's own wait after it is only a short backstop.
    runner = GatewayRunner(app, timeouts=gateway.config.server.timeouts, handle_signals=False, access_log=None,
                           handler_cancellation=False, shutdown_timeout=GRACE_S)
    await runner.setup()
    reloader = app[RELOADER_KEY]
    stop_listening = listen_for_sighup(reloader)
    # A SIGHUP that came while the server was starting (ignored then) is not lost: the file is read
    # once more, before the port opens, so that no request (nor /health/ready) comes before it. (Read
    # after the port opened, it raced an operator's first edit: that read could take the edit, and the
    # operator's own reload then answered "unchanged".)
    await reloader.on_signal(quiet=True)
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=2048)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        print(f"tollway: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    # A second SIGTERM while finishing (a supervisor repeating itself) changes nothing:
    # shutdown is bounded by server.shutdown_timeout anyway (proxy/stopping.py).
    stop = StopSignals()
    stop.listen()
    settle_heap()  # started: what start-up made is out of the collector's way (proxy/heap.py)
    if not reuse_port:
        print_banner(gateway, site_address(site, host, port))
    await stop.requested.wait()
    stop_listening()  # no reload while stopping
    print("tollway: stopping: finishing in-flight requests", file=sys.stderr, flush=True)
    shutdown_timeout = gateway.config.server.shutdown_timeout  # the reloaded value
    deadline = exit_by_deadline(shutdown_timeout)
    if reuse_port and (shared := workers_dir()) is not None:
        tell_stop_limit(shared, shutdown_timeout)  # the parent kills a worker still stopping after it, not before
    await runner.cleanup()
    deadline.cancel()
    ignore_until_exit()
    return 0


def site_address(site: object, host: str, port: int) -> tuple[str, int]:
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        sockname = server.sockets[0].getsockname()
        return host, sockname[1]
    return host, port


def print_banner(gateway: Gateway, address: tuple[str, int]) -> None:
    host, port = address
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base = f"http://{shown}:{port}"
    model = next(iter(gateway.config.models), "MODEL")
    keys = gateway.config.section("keys") or []
    first = next((k for k in keys if getattr(k, "key", None)), None)
    # Never the whole key: stdout is a log too. Its name and display prefix say which one to use.
    auth = ' -H "Authorization: Bearer $KEY"' if first else ""
    which = (f"\n       with KEY set to the key of {first.name!r} (keys: in the config; it starts "
             f"{display_prefix(first.key)}...)") if first else ""
    print(f"tollway listening on {base} ({len(gateway.config.models)} models: {', '.join(gateway.config.models)})\n"
          f"  OpenAI base_url: {base}/v1\n"
          f"  try: curl {base}/v1/chat/completions{auth} -H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hello\"}}]}}'"
          f"{which}",
          flush=True)


def serve_workers(args: argparse.Namespace, host: str, port: int, workers: int, shutdown_timeout: float) -> int:
    """N processes on one port (SO_REUSEPORT), kept running by proxy/supervisor.py: a worker
    that dies is replaced; SIGTERM/SIGINT/SIGHUP are passed on to each."""
    from .supervisor import WorkerSupervisor

    if port == 0:
        print("tollway: --workers needs a fixed --port", file=sys.stderr)
        return 2
    if not hasattr(socket, "SO_REUSEPORT"):
        print("tollway: --workers needs SO_REUSEPORT, which this system lacks", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(Path(args.config)), "--host", host,
           "--port", str(port), "--workers", str(workers), "--reuse-port"] + (["--verbose"] if args.verbose else [])
    # A directory the workers share for this run only (plugins keep files there that every
    # worker reads, e.g. the metrics of all workers): new and empty now, removed at the end.
    with tempfile.TemporaryDirectory(prefix="tollway-workers-") as shared:
        env = {**os.environ, WORKERS_DIR_ENV: shared}
        supervisor = WorkerSupervisor(cmd, env, workers, stop_timeout=stop_limit(shutdown_timeout),
                                      shared=Path(shared))
        print(f"tollway listening on http://{host}:{port} with {workers} workers", flush=True)
        return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())

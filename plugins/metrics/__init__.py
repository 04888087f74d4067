"""Metrics: ``GET /metrics`` in Prometheus' text format, with the official prometheus-client.

Turned on by its own YAML section (``metrics: {enabled: true, token: ...}``), guarded
by its own bearer token (``Authorization: Bearer TOKEN``, header only; not the admin
key). Each request is counted once, in ``tollway_finish``, into a plain-Python
``Tally`` (``tally.py``: a few additions, no lock), and each failed upstream attempt
when it fails (``tollway_attempt``); the counts reach the
prometheus-client metrics (``families.py``) at a scrape. With ``server.workers > 1``
prometheus-client runs in its multi-process mode (values in mmap files in the
directory the workers share, ``proxy.cli.workers_dir()``): each worker adds its
counts every ``flush_seconds`` and at exit, and a scrape, whichever worker answers
it, reads every worker's files. A worker that ended without stopping (kill -9) is
marked dead by the others (``sweep_dead_workers``), so its live gauges do not linger.
Gauges (ledger backlog, upstream connections, opt-in account credits) are read from
the gateway's state at the same moments.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy import Call, ConfigError, Gateway, ProxyError, Route, hookimpl
from proxy.background import stop_task
from proxy.cli import workers_dir
from proxy.logs import throttled
from proxy.processes import process_running

from ..accounts import ACCOUNTS
from .options import MetricsOptions
from .tally import Tally

if TYPE_CHECKING:
    from .families import Families

log = logging.getLogger("tollway.metrics")


class Plugin:
    def __init__(self) -> None:
        self.gateway: Gateway | None = None
        self.options = MetricsOptions()
        self.tally: Tally | None = None  # None: not counting
        self.families: Families | None = None
        self.registry: Any = None  # what a scrape renders
        self.multiprocess_dir: str | None = None
        self._flusher: asyncio.Task | None = None

    @hookimpl
    def tollway_config_schema(self) -> dict:
        return {"metrics": MetricsOptions}

    @hookimpl
    def tollway_config_check(self, config) -> None:
        options = config.section("metrics") or MetricsOptions()
        if not 0 < options.flush_seconds <= 3600:
            raise ConfigError("metrics.flush_seconds: must be more than 0 and at most 3600")

    @hookimpl
    def tollway_startup(self, gateway: Gateway):
        return self._start(gateway)

    async def _start(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.options = options = gateway.config.section("metrics") or MetricsOptions()
        if not options.enabled or not gateway.serving:
            return
        if not options.token:
            log.warning("metrics: metrics.token is empty, so GET /metrics refuses every scrape; set it "
                        "(e.g. token: ${TOLLWAY_METRICS_TOKEN})")
        shared = workers_dir() if gateway.config.server.workers > 1 else None
        if shared is not None:
            self.multiprocess_dir = str(shared / "metrics")
            os.makedirs(self.multiprocess_dir, exist_ok=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.multiprocess_dir
        from prometheus_client import CollectorRegistry, values

        from .families import Families

        if shared is not None:
            if values.ValueClass is values.MutexValue:
                raise ConfigError("metrics: prometheus_client was imported before the metrics plugin could put it "
                                  "in multi-process mode; with server.workers > 1 nothing else may import it first")
            from prometheus_client.multiprocess import MultiProcessCollector

            self.families = Families(None)
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=self.multiprocess_dir)
            self._flusher = _start_flusher(self, options.flush_seconds)
        else:
            self.registry = CollectorRegistry()
            self.families = Families(self.registry)
        self.tally = Tally()

    @hookimpl
    def tollway_shutdown(self, gateway: Gateway):
        return self._stop()

    async def _stop(self) -> None:
        await stop_task(self._flusher)
        self._flusher = None
        if self.families is not None and self.multiprocess_dir is not None:
            self.export()  # the last counts of this worker; its live gauges leave with it
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)
        self.tally = None

    @hookimpl
    async def tollway_finish(self, call: Call) -> None:
        tally = self.tally
        if tally is not None:
            tally.record(call)

    @hookimpl
    def tollway_attempt(self, call: Call, route: Route, error: ProxyError | None) -> None:
        tally = self.tally
        if error is not None and tally is not None:
            tally.failed_attempt(call, route.provider.name, error)

    def export(self) -> None:
        """Add what was counted since the last export to the metrics; read the gauges."""
        families = self.families
        if families is None or self.tally is None:
            return
        tally, self.tally = self.tally, Tally()
        families.add(tally)
        if self.multiprocess_dir is not None:
            for pid in sweep_dead_workers(self.multiprocess_dir):
                log.warning("metrics: worker %d ended without stopping (killed?); its live gauges are dropped, "
                            "its counts kept", pid)
        gateway = self.gateway
        for name, provider in gateway.providers.items():
            in_use, idle = provider.connections()
            families.child(families.connections, (name, "in_use")).set(in_use)
            families.child(families.connections, (name, "idle")).set(idle)
        accounts = gateway.services.get(ACCOUNTS)
        if accounts is not None:
            rows, lag = accounts.writer.backlog()
            families.ledger_queue.set(rows)
            families.ledger_lag.set(lag)
            if self.options.account_credits:
                for account in accounts.accounts.values():
                    if not account.unlimited:
                        families.child(families.credits, (account.id,)).set(max(account.available, 0))

    @hookimpl
    def tollway_routes(self, gateway: Gateway) -> list:
        options = gateway.config.section("metrics") or MetricsOptions()
        return [web.get("/metrics", self.scrape)] if options.enabled else []

    async def scrape(self, request: web.Request) -> web.Response:
        self._check_token(request)
        if self.registry is None:
            raise ProxyError(503, "the gateway is starting or stopping", code="not_ready")
        from prometheus_client.exposition import choose_encoder

        self.export()
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        # Rendering takes milliseconds per hundred label sets: in a thread, so the event
        # loop keeps serving requests between the thread's turns at the GIL.
        body = await asyncio.get_running_loop().run_in_executor(None, encode, self.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _check_token(self, request: web.Request) -> None:
        token = self.options.token
        if not token:
            raise ProxyError(403, "metrics are on but metrics.token is empty: set it (e.g. token: "
                                  "${TOLLWAY_METRICS_TOKEN}) and send 'Authorization: Bearer TOKEN'",
                             code="metrics_token_unset")
        scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not sent:
            raise ProxyError(401, "missing metrics token: send 'Authorization: Bearer METRICS_TOKEN' "
                                  "(metrics.token)", code="missing_metrics_token",
                             headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(sent.strip().encode(), token.encode()):
            raise ProxyError(401, "invalid metrics token", code="invalid_metrics_token",
                             headers={"WWW-Authenticate": "Bearer"})


def sweep_dead_workers(directory: str) -> list[int]:
    """Workers that ended without ``mark_process_dead`` (kill -9, a crash) leave their live
    gauges' files (``gauge_live*_PID.db``), which every scrape would go on adding: mark each
    such worker dead (its counters and histograms stay: what it counted happened). Returns
    the pids marked. A worker's files are looked at by the others every ``flush_seconds``."""
    from prometheus_client import multiprocess

    dead: set[int] = set()
    for name in os.listdir(directory):
        if name.startswith("gauge_live") and name.endswith(".db"):
            pid = name[:-3].rpartition("_")[2]
            if pid.isdigit() and not process_running(int(pid)):
                dead.add(int(pid))
    for pid in sorted(dead):
        multiprocess.mark_process_dead(pid, directory)
    return sorted(dead)


def _start_flusher(plugin: Plugin, every: float) -> asyncio.Task:
    async def run() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                plugin.export()
            except Exception:
                throttled(log, logging.ERROR, "metrics_flush", "metrics: could not write this worker's counts",
                          exc_info=True)

    return asyncio.get_running_loop().create_task(run(), name="tollway-metrics-flush")

"""Alerts: signed webhooks for what an operator must hear about before customers do.

Events (``proxy.Event``) come from any plugin through ``tollway_event``
(``gateway.emit``): e.g. ``deployment_opened`` / ``deployment_closed`` from a
plugin that keeps upstream health, and from this plugin's own look every ``check_seconds`` at the accounts
book: ``balance_low``, ``key_expiring`` and ``budget`` (``watch.py``). ``tollway_event`` only queues the event in memory
and wakes the sender: no I/O, so it may be called on a request's path.

The sender task writes queued events to the outbox in the store (``outbox.py``:
one row per event and webhook; SQLite and PostgreSQL), then delivers due rows:
a signed POST (``delivery.py``), retried with backoff until a 2xx, at least once.
Each event has an id that every retry repeats, for receivers to de-duplicate.
Rows outlive the process: a restart delivers what was pending.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from proxy import ConfigError, Event, Gateway, Snapshot, hookimpl
from proxy.background import stop_task
from proxy.logs import throttled
from proxy.schema import suggest

from ..accounts import ACCOUNTS
from .delivery import next_delay, send, where
from .options import EVENTS, AlertsOptions, Webhook
from .outbox import Delivery, Outbox
from .watch import look, read_budgets

log = logging.getLogger("tollway.alerts")
LEASE_MARGIN = 30.0  # seconds past a delivery's timeout before another instance may take it


class Plugin:
    def __init__(self) -> None:
        self.gateway: Gateway | None = None
        self.options = AlertsOptions()
        self.outbox: Outbox | None = None
        self.queued: list[Event] = []
        self.stored: dict[str, None] = {}  # ids of events this process wrote to the outbox
        self.sending: set[str] = set()  # deliveries claimed and not yet settled
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None

    @hookimpl
    def tollway_config_schema(self) -> dict:
        return {"alerts": AlertsOptions}

    @hookimpl
    def tollway_config_check(self, config) -> None:
        options: AlertsOptions = config.section("alerts") or AlertsOptions()
        for i, hook in enumerate(options.webhooks):
            where = f"alerts.webhooks[{i}]"
            if not hook.url.startswith(("http://", "https://")):
                raise ConfigError(f"{where}.url: must start with http:// or https://, got {hook.url!r}")
            if not hook.secret:
                raise ConfigError(f"{where}.secret: required (receivers check each alert's signature with it); "
                                  "e.g. secret: ${HOOK_SECRET}")
            for j, name in enumerate(hook.events):
                if name not in ("*", "deployment", *EVENTS) and "." not in name:
                    raise ConfigError(f"{where}.events[{j}]: unknown event {name!r}"
                                      f"{suggest(name, (*EVENTS, 'deployment'))} (known: {', '.join(EVENTS)}, "
                                      "deployment, *; a plugin's own as plugin.event)")
            if not 0 < hook.timeout <= 300:
                raise ConfigError(f"{where}.timeout: must be more than 0 and at most 300 seconds")
        for name in ("check_seconds", "poll_seconds"):
            if not 0 < getattr(options, name) <= 86400:
                raise ConfigError(f"alerts.{name}: must be more than 0 and at most 86400")
        retry = options.retry
        if retry.max_attempts < 1 or not 0 < retry.first_delay <= retry.max_delay:
            raise ConfigError("alerts.retry: max_attempts must be at least 1 and 0 < first_delay <= max_delay")
        if options.balance_below is not None and options.balance_below < 0:
            raise ConfigError("alerts.balance_below: must not be negative")

    @hookimpl
    def tollway_startup(self, gateway: Gateway):
        return self._start(gateway)

    async def _start(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.options = options = gateway.config.section("alerts") or AlertsOptions()
        if not options.enabled or not gateway.serving:
            return
        self.outbox = Outbox(gateway.store)
        await self.outbox.open()
        self._wake = asyncio.Event()
        self._session = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._send_loop(), name="tollway-alerts-send"),
                       loop.create_task(self._watch_loop(), name="tollway-alerts-watch")]

    @hookimpl
    def tollway_reload(self, snapshot: Snapshot):
        """``alerts:`` takes effect at once: the webhooks (a delivery still due to a URL no longer
        listed is given up, saying so), the events each wants, thresholds and timings. Turning
        ``enabled`` on or off starts or stops the sender (what is queued stays in the outbox)."""
        options: AlertsOptions = snapshot.config.section("alerts") or AlertsOptions()
        running = self._wake is not None

        def apply():
            self.options = options
            if self.gateway is None or not self.gateway.serving:
                return None
            if options.enabled and not running:
                return self._start(self.gateway)
            if not options.enabled and running:
                return self._stop()
            return None

        return apply

    @hookimpl
    def tollway_shutdown(self, gateway: Gateway):
        return self._stop()

    async def _stop(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        self._tasks = []
        if self.outbox is not None and self.sending:
            try:  # cut short by the stop: due again now, not when their lease ends
                await self.outbox.release(list(self.sending), time.time())
            except Exception:
                log.warning("alerts: %d deliveries cut short by the stop are due again in %g s",
                            len(self.sending), LEASE_MARGIN)
            self.sending.clear()
        if self.outbox is not None and self.queued:
            try:
                await self._write_queued()  # what was emitted but not yet stored: the next start sends it
            except Exception:
                log.exception("alerts: %d alerts could not be stored at shutdown and are lost", len(self.queued))
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._wake = None

    @hookimpl
    def tollway_event(self, gateway: Gateway, event: Event) -> None:
        if self._wake is None:
            return
        if any(hook.wants(event.name) for hook in self.options.webhooks):
            self.queued.append(event)
            self._wake.set()

    # -- background ------------------------------------------------------------------
    async def _watch_loop(self) -> None:
        while True:
            accounts = self.gateway.services.get(ACCOUNTS)
            if accounts is not None:
                try:
                    await read_budgets(accounts)  # (the fleet's totals, not this instance's view of them)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    throttled(log, logging.WARNING, "alerts_budgets", "alerts: the budgets' totals could not be "
                              "read; looking at them as this instance last saw them", exc_info=True)
                for event in look(accounts, self.options):
                    self.gateway.emit(event)
            await asyncio.sleep(self.options.check_seconds)

    async def _send_loop(self) -> None:
        wake = self._wake
        while True:
            try:
                async with asyncio.timeout(self.options.poll_seconds):
                    await wake.wait()
            except TimeoutError:
                pass
            wake.clear()
            try:
                await self._write_queued()
                await self._deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                throttled(log, logging.ERROR, "alerts_send", "alerts: the outbox failed; will retry", exc_info=True)

    async def _write_queued(self) -> None:
        events, self.queued = self.queued, []
        fresh = {e.id: e for e in events if e.id not in self.stored}  # the watcher finds the same ones again
        rows = [(e, hook.url) for e in fresh.values() for hook in self.options.webhooks if hook.wants(e.name)]
        try:
            await self.outbox.add(rows)
        except BaseException:
            self.queued[:0] = events  # kept for the next try
            raise
        if len(self.stored) > 100_000:
            self.stored.clear()  # only a shortcut: the outbox ignores an id it has
        self.stored.update(dict.fromkeys(fresh))

    async def _deliver_due(self) -> None:
        while True:
            now = time.time()
            lease = max((h.timeout for h in self.options.webhooks), default=10.0) + LEASE_MARGIN
            due = await self.outbox.claim(now, now + lease)
            if not due:
                return
            self.sending.update(d.id for d in due)
            await asyncio.gather(*(self._deliver(d) for d in due))

    async def _deliver(self, delivery: Delivery) -> None:
        await self._attempt(delivery)
        self.sending.discard(delivery.id)

    async def _attempt(self, delivery: Delivery) -> None:
        webhook = self._webhook(delivery.url)
        if webhook is None:
            await self.outbox.failed(delivery, "the webhook is no longer in alerts.webhooks")
            return
        error = await send(self._session, webhook, delivery)
        if error is None:
            await self.outbox.delivered(delivery, time.time())
            return
        delay = next_delay(self.options.retry, delivery.attempts)
        if delay is None:
            log.error("alerts: gave up on %s alert %s to %s after %d attempts: %s", delivery.event,
                      delivery.event_id, where(delivery.url), delivery.attempts, error)
            await self.outbox.failed(delivery, error)
        else:
            throttled(log, logging.WARNING, f"alerts:{delivery.url}", "alerts: %s to %s failed (%s); retrying in %g s",
                      delivery.event, where(delivery.url), error, delay)
            await self.outbox.retry(delivery, time.time() + delay, error)

    def _webhook(self, url: str) -> Webhook | None:
        return next((h for h in self.options.webhooks if h.url == url), None)

"""The ``alerts:`` section of the YAML."""

from __future__ import annotations

from dataclasses import dataclass, field

#: The events the gateway's own plugins emit (a third-party plugin's are named ``plugin.event``).
EVENTS = ("balance_low", "budget", "key_expiring", "deployment_opened", "deployment_closed")


@dataclass(frozen=True)
class Webhook:
    url: str  # http:// or https://
    secret: str  # signs each body: X-Tollway-Signature: sha256=HMAC-SHA256(secret, body)
    # Which events: names from EVENTS, "deployment" (both deployment_* events), a
    # third-party "plugin.event", or "*" (the default): every event.
    events: list[str] = field(default_factory=lambda: ["*"])
    timeout: float = 10.0  # seconds for the receiver to answer

    def wants(self, name: str) -> bool:
        return any(wanted in ("*", name) or name.startswith(wanted + "_") for wanted in self.events)


@dataclass(frozen=True)
class Retry:
    max_attempts: int = 12  # then the alert is given up (state 'failed', logged)
    first_delay: float = 1.0  # seconds before the second attempt; doubled after each failure
    max_delay: float = 3600.0


@dataclass(frozen=True)
class AlertsOptions:
    enabled: bool = True
    webhooks: list[Webhook] = field(default_factory=list)
    # balance_low: an account's spendable balance fell below this many USD (None: no such alerts).
    balance_below: float | None = None
    # key_expiring: a key expires within this many days (None: no such alerts).
    key_expiring_days: float | None = 7.0
    check_seconds: float = 60.0  # how often balances and key expiries are looked at
    poll_seconds: float = 1.0  # how often the outbox is read for due deliveries (and other instances' alerts)
    retry: Retry = field(default_factory=Retry)

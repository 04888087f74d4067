"""The ``routing:`` section of the YAML (defaults for every model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from proxy import ConfigError

Strategy = Literal["weighted", "least_busy", "latency", "cheapest"]


@dataclass(frozen=True)
class HealthOptions:
    """Each deployment's breaker (see ``health.py``). It opens when, over the last
    ``window`` seconds, at least ``min_requests`` requests were answered and the
    share of failures reached ``error_rate``; it stays open for ``cooldown``
    seconds (or the upstream's ``Retry-After`` when longer; doubled on every
    re-open in a row, up to ``max_cooldown``), then lets ``half_open_probes``
    real requests through: a success closes it, a failure opens it again."""

    window: float = 30.0
    min_requests: int = 5
    error_rate: float = 0.5
    cooldown: float = 10.0
    half_open_probes: int = 1
    max_cooldown: float = 300.0


@dataclass(frozen=True)
class BackoffOptions:
    """Seconds to wait before a retry: random (full jitter) up to
    ``base * 2 ** (attempt - 1)``, at most ``max``."""

    base: float = 0.05
    max: float = 1.0


@dataclass(frozen=True)
class RoutingOptions:
    strategy: Strategy = "weighted"
    retries: int = 2  # extra attempts before the first byte, on unbilled failures only
    # No new attempt starts this many seconds after the request arrived.
    deadline: float = 30.0
    # Retry a first-byte timeout too. Off by default: OpenAI, Anthropic and Gemini go on
    # with (and bill) a request whose client gave up; turn on for upstreams that do not bill.
    retry_timeouts: bool = False
    backoff: BackoffOptions = field(default_factory=BackoffOptions)
    health: HealthOptions = field(default_factory=HealthOptions)

    def check(self) -> None:
        if not 0 <= self.retries <= 10:
            raise ConfigError("routing.retries: must be from 0 to 10")
        if not 0 < self.deadline < 1e6:
            raise ConfigError("routing.deadline: must be a positive number of seconds")
        if not (0 <= self.backoff.base <= 60 and 0 <= self.backoff.max <= 60):
            raise ConfigError("routing.backoff: base and max must be from 0 to 60 seconds")
        h = self.health
        if not 0 < h.window <= 3600:
            raise ConfigError("routing.health.window: must be from 0 to 3600 seconds")
        if h.min_requests < 1:
            raise ConfigError("routing.health.min_requests: must be at least 1")
        if not 0 < h.error_rate <= 1:
            raise ConfigError("routing.health.error_rate: must be a share above 0, up to 1 (e.g. 0.5)")
        if not 0 <= h.cooldown <= h.max_cooldown <= 86400:
            raise ConfigError("routing.health.cooldown: must be from 0 to max_cooldown (at most 86400 seconds)")
        if h.half_open_probes < 1:
            raise ConfigError("routing.health.half_open_probes: must be at least 1")

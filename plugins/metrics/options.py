"""The ``metrics:`` section of the YAML."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricsOptions:
    # Serve GET /metrics (and count). false: the section is validated, nothing is served or counted.
    enabled: bool = True
    # The bearer token a scraper sends (Authorization: Bearer TOKEN); not the admin key.
    # Empty: every scrape is refused (403) until one is set.
    token: str | None = None
    # tollway_account_credits_remaining_micro_usd{account}: one series per credit account,
    # so off by default (a gateway with 100,000 accounts would make a scrape of 100,000 lines).
    account_credits: bool = False
    # With server.workers > 1: how often each worker writes its counts for the others
    # to read (a scrape sees the other workers' requests at most this late).
    flush_seconds: float = 1.0

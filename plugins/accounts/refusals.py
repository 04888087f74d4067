"""Why a request was refused for a limit: what the plugin that refused it says, for others to read.

A plugin that refuses a request over a limit (the rate limiter, quotas, budgets)
puts a ``Refusal`` in ``call.state[REFUSAL]`` before it raises its ``ProxyError``;
the metrics plugin counts refusals by it (``tollway_limit_refusals_total``), so
the values must be few and fixed (never a key or account id).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy import StateKey


@dataclass(frozen=True, slots=True)
class Refusal:
    scope: str  # whose limit: "key", "account", "model" (a key's per-model limit)...
    limit: str  # which: "rpm", "tpm", "rpd", "concurrency", "credits", "daily", "monthly"...


REFUSAL: StateKey[Refusal] = StateKey("accounts.refusal")

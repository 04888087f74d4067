"""Event: something an operator may want to hear about (a low balance, a budget spent,
an upstream taken out of rotation), told to every plugin through ``tollway_event``.

A plugin that sees one calls ``gateway.emit(Event(...))``; the ``alerts`` plugin
queues it for the webhooks that want it (never doing I/O there), others may log it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True, eq=False)
class Event:
    """``name``: what happened (``balance_low``, ``budget``, ``key_expiring``,
    ``deployment_opened``, ``deployment_closed``; a third-party plugin's own as
    ``plugin.event``). ``data``: JSON-able details. ``key``: the same key is the same
    event: emitted again (by another worker, or after a restart) it is delivered only
    once; None: every emission is a new event. ``id`` is derived from ``key`` (else
    random): receivers de-duplicate on it."""

    name: str
    data: dict[str, Any]
    key: str | None = None
    time: float = field(default_factory=time.time)
    id: str = field(init=False)

    def __post_init__(self) -> None:
        if self.key is not None:
            digest = hashlib.sha256(f"{self.name}\0{self.key}".encode()).hexdigest()[:32]
        else:
            digest = secrets.token_hex(16)
        object.__setattr__(self, "id", "evt_" + digest)

"""Deployments (the upstreams serving a model) and how one is chosen.

A ``Deployment`` is one upstream model on one provider (``provider/model``);
models that name the same one share it, and with it its load, its latency
and its limits. A ``ModelTable`` is one public model's list of them, each
with the model's weight for it and a prebuilt ``Route``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from proxy import Route

from .options import Strategy

__all__ = ["Deployment", "Entry", "ModelTable", "choose"]

LATENCY_ALPHA = 0.3  # weight of the newest time to first byte in the moving average


class Deployment:
    """One upstream's live numbers: requests in flight, latency, this minute's use."""

    __slots__ = ("name", "rpm", "tpm", "in_flight", "latency_s", "minute", "requests", "tokens")

    def __init__(self, name: str, rpm: int | None, tpm: int | None) -> None:
        self.name = name
        self.rpm = rpm
        self.tpm = tpm
        self.in_flight = 0
        self.latency_s: float | None = None  # moving average of the time to the answer's head
        self.minute = -1  # the minute (clock // 60) the counts below are for
        self.requests = 0
        self.tokens = 0

    def within_limits(self, now: float) -> bool:
        if self.rpm is None and self.tpm is None:
            return True
        if int(now // 60) != self.minute:
            return True
        return (self.rpm is None or self.requests < self.rpm) and (self.tpm is None or self.tokens < self.tpm)

    def _this_minute(self, now: float) -> None:
        minute = int(now // 60)
        if minute != self.minute:
            self.minute, self.requests, self.tokens = minute, 0, 0

    def count_request(self, now: float) -> None:
        if self.rpm is not None or self.tpm is not None:
            self._this_minute(now)
            self.requests += 1

    def count_tokens(self, now: float, tokens: int) -> None:
        if self.tpm is not None:
            self._this_minute(now)
            self.tokens += tokens

    def limits_reset_in(self, now: float) -> float:
        return 60.0 - now % 60 if not self.within_limits(now) else 0.0

    def observe_latency(self, seconds: float) -> None:
        avg = self.latency_s
        self.latency_s = seconds if avg is None else avg + LATENCY_ALPHA * (seconds - avg)


@dataclass(slots=True)
class Entry:
    """A deployment as one model uses it."""

    deployment: Deployment
    route: Route
    weight: float
    cost: float  # USD per 1M input + output tokens, for ``cheapest``


@dataclass(slots=True)
class ModelTable:
    name: str
    entries: list[Entry]
    strategy: Strategy
    fallbacks: tuple[str, ...]
    config: Any  # the model's ModelConfig (context window, capabilities, price)
    #: The model, then its fallbacks' tables (set once every table of the config is made).
    chain: tuple[ModelTable, ...] = ()
    #: The entry of a model with exactly one deployment (weight > 0): ``Router.pick``'s fast path.
    sole: Entry | None = None


def _weighted(entries: list[Entry]) -> Entry:
    if len(entries) == 1:
        return entries[0]
    total = sum(e.weight for e in entries)
    point = random.random() * total
    for e in entries:
        point -= e.weight
        if point < 0:
            return e
    return entries[-1]


def _lowest(entries: list[Entry], score: list[float]) -> Entry:
    best = min(score)
    return _weighted([e for e, s in zip(entries, score, strict=True) if s == best])


def choose(strategy: Strategy, entries: list[Entry]) -> Entry:
    """One of ``entries`` (all eligible, weight > 0) by the strategy; ties go by weight."""
    if len(entries) == 1 or strategy == "weighted":
        return _weighted(entries)
    if strategy == "least_busy":
        return _lowest(entries, [float(e.deployment.in_flight) for e in entries])
    if strategy == "latency":
        # Not yet measured counts as fastest, so every deployment gets measured.
        return _lowest(entries, [e.deployment.latency_s or 0.0 for e in entries])
    return _lowest(entries, [e.cost for e in entries])

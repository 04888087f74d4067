"""``auto`` and groups: which models a request may go to, in which order.

``auto: cheapest`` (a model entry with any name the operator picks) chooses per
request, among the models the caller may use, those that fit it, cheapest first
(the later ones are its failover): the context window holds the estimated
prompt plus the output cap, and the model's ``capabilities`` cover what the
request uses (``tools``, ``vision`` for images, ``json`` for a JSON
``response_format``; ``stream`` is assumed unless a model's list leaves it out).
A model that declares no ``capabilities`` serves plain text only.

A ``group`` lists other models: tried in the listed order (failover), or
ordered per request by the group's ``strategy``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from proxy.outputtext import prompt_text

from .deployments import ModelTable

__all__ = ["Fit", "fit_of", "order_group"]

DEFAULT_OUTPUT_CAP = 1024  # tokens assumed when a request sets no cap and the model declares none
CHARS_PER_TOKEN = 3  # a generous estimate of the prompt's tokens (a count would cost a tokenizer pass)
IMAGE_TYPES = frozenset(("image_url", "image", "input_image"))


class Fit:
    """What a request needs of a model: its capabilities, prompt size and output cap."""

    __slots__ = ("needs", "prompt_tokens", "output_cap")

    def __init__(self, needs: frozenset[str], prompt_tokens: int, output_cap: int | None) -> None:
        self.needs = needs
        self.prompt_tokens = prompt_tokens
        self.output_cap = output_cap

    def cap_for(self, config: Any) -> int:
        return self.output_cap or config.max_output_tokens or DEFAULT_OUTPUT_CAP

    def why_not(self, config: Any) -> str | None:
        """Why the model cannot serve the request, or None when it can."""
        caps = config.capabilities
        for need in sorted(self.needs):
            if need == "stream":
                if caps is not None and "stream" not in caps:
                    return "does not stream"
            elif caps is None or need not in caps:
                return f"lacks {need}"
        window = config.context_window
        if window is not None and self.prompt_tokens + self.cap_for(config) > window:
            return f"its context window of {window} tokens is too small"
        return None

    def cost(self, config: Any) -> float:
        price = config.price
        return price.input * self.prompt_tokens + price.output * self.cap_for(config)


def fit_of(body: dict) -> Fit:
    needs = set()
    if body.get("tools") or body.get("functions"):
        needs.add("tools")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        needs.add("json")
    if body.get("stream") is True:
        needs.add("stream")
    if _has_image(body.get("messages")):
        needs.add("vision")
    cap = next((body[k] for k in ("max_completion_tokens", "max_tokens")
                if isinstance(body.get(k), int) and not isinstance(body.get(k), bool) and body[k] > 0), None)
    return Fit(frozenset(needs), len(prompt_text(body)) // CHARS_PER_TOKEN + 1, cap)


def _has_image(messages: object) -> bool:
    if not isinstance(messages, list):
        return False
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in IMAGE_TYPES for p in content):
            return True
    return False


def order_group(strategy: str | None, members: Iterable[ModelTable]) -> list[ModelTable]:
    """A group's members in the order to try them."""
    tables = list(members)
    if strategy is None:
        return tables
    if strategy == "weighted":
        random.shuffle(tables)
        return tables

    def score(table: ModelTable) -> float:
        live = [e for e in table.entries if e.weight > 0] or table.entries
        if strategy == "least_busy":
            return min(e.deployment.in_flight for e in live)
        if strategy == "latency":
            return min(e.deployment.latency_s or 0.0 for e in live)
        return min(e.cost for e in live)

    return sorted(tables, key=score)

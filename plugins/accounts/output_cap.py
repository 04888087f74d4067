"""The output cap a metered request is held for, sent upstream when the client sent none.

A request without ``max_tokens`` (``max_completion_tokens``, the Responses API's
``max_output_tokens``) is held for the model's ``max_output_tokens``, else
``plugins.quotas.default_max_tokens`` (``estimate.output_bound``). Had the upstream
been left free to write more, what it wrote past the hold could not always be
billed: a budget is a hard cap, and a balance may not cover more; that output was
given away. So when the hold bounds the bill (a credit-metered account, or a key or
account with budgets), that same cap goes up in the field the client's dialect
names, and the upstream stops where the hold does. (Anthropic's Messages API
requires ``max_tokens``: its requests always carry their own cap.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .estimate import UNREAD, requested_output

if TYPE_CHECKING:
    from proxy import Call

#: The output cap's name in each dialect's body (``openai``: the route's provider's choice).
CAP_FIELDS = {"openai": "max_completion_tokens", "completions": "max_tokens", "responses": "max_output_tokens",
              "anthropic": "max_tokens"}


def send_output_cap(call: Call, default_cap: int, asked: int | None = UNREAD) -> None:
    """Write the cap the request is held for into its body, unless it names one (or has no
    output billed by the token: embeddings, images, audio). ``asked``: the client's own cap,
    when the caller already has it from ``requested_output``."""
    if asked == UNREAD:
        asked = requested_output(call)
    route = call.route
    field = CAP_FIELDS.get(call.dialect)
    if asked is not None or route is None or field is None or call.endpoint == "embeddings" \
            or call.billing.units is not None:
        return
    if call.dialect == "openai":  # an OpenAI-compatible server may know only the old name (its option says)
        field = getattr(route.provider, "max_tokens_field", field)
    body = call.body
    body[field] = route.config.max_output_tokens or default_cap  # each of n answers: output_bound holds n of them
    call.set_body(body)

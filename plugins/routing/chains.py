"""Which models a request may go to, in order: a group's members, ``auto``'s choices
(``auto.py``), and the client's own ``models`` list (OpenRouter's)."""

from __future__ import annotations

from typing import Any

from proxy import Call, ProxyError

from .auto import fit_of, order_group
from .deployments import ModelTable
from .router import Router

__all__ = ["clients_fallbacks", "virtual_chain"]

MAX_CLIENT_MODELS = 16


async def visible(router: Router, call: Call, names: list[str]) -> list[str]:
    """The models of ``names`` the caller may use (the ``tollway_visible_models`` hooks)."""
    for hook in router.gateway.hooks.visible_models:
        filtered = await hook(call, names)
        if filtered is not None:
            names = filtered
    return names


async def virtual_chain(router: Router, call: Call, config: Any) -> tuple[ModelTable, ...]:
    tables = router.tables
    if config.group is not None:
        return tuple(order_group(config.strategy, (tables[m] for m in config.group)))
    allowed = await visible(router, call, list(tables))
    if not allowed:
        raise ProxyError(403, f"{call.model!r} chooses among the models this API key may use, and it may use "
                              "none; ask the operator to allow some", param="model", code="model_not_allowed")
    fit = fit_of(call.body)
    fitting, refused = [], []
    for i, name in enumerate(allowed):
        model = tables[name].config
        why = fit.why_not(model)
        if why is None:
            fitting.append((fit.cost(model), i, name))
        else:
            refused.append(f"{name} {why}")
    if not fitting:
        raise ProxyError(400, f"no model {call.model!r} may choose fits this request: " + "; ".join(refused[:8]),
                         param="model", code="no_model_fits")
    return tuple(tables[name] for _, _, name in sorted(fitting))


async def clients_fallbacks(router: Router, call: Call, chain: tuple[ModelTable, ...]) -> tuple[ModelTable, ...]:
    """OpenRouter's ``models``: the client's own fallbacks, after ``model``, among models it may use."""
    body = call.body
    names = body.pop("models")
    call.set_body(body)  # not an upstream field
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) > MAX_CLIENT_MODELS:
        raise ProxyError(400, f"'models' must be a list of at most {MAX_CLIENT_MODELS} model names (tried in order "
                              "after 'model')", param="models", code="invalid_models")
    tables = router.tables
    unknown = [n for n in names if n not in tables]
    if unknown:
        raise ProxyError(400, f"'models' names {unknown[0]!r}, which is not a model with an upstream here "
                              "(groups and auto cannot be listed)", param="models", code="model_not_found")
    allowed = set(await visible(router, call, names))
    refused = [n for n in names if n not in allowed]
    if refused:
        raise ProxyError(403, f"this API key may not use model {refused[0]!r} (listed in 'models')",
                         param="models", code="model_not_allowed")
    seen = {t.name for t in chain}
    return (*chain, *(tables[n] for n in dict.fromkeys(names) if n not in seen))

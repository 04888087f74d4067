"""Who calls and what they ask for: a model call's ``authenticate`` and ``resolve`` steps.

``identify`` (awaitable) and ``identified`` (None when no hook implementation awaited, else
the coroutine for the rest: the pipeline's hot path awaits only then) set ``call.principal``
and ``call.route``; a body without "model" gets the caller's default (``default_model``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from .errors import ProxyError, bad_request
from .validate import validate_embeddings

if TYPE_CHECKING:
    from .call import Call, Route
    from .gateway import Gateway

__all__ = ["NO_MODEL", "default_model", "identified", "identify", "unknown_model"]


async def identify(gateway: Gateway, call: Call, resolve: bool = True) -> None:
    """Who calls: ``call.principal``, the first ``tollway_authenticate`` answer (a call that
    comes with its principal, a batch line, keeps it). With ``resolve``, what they ask for:
    the model a body without one names (``default_model``), and ``call.route``, the first
    ``tollway_resolve`` answer (none: 404)."""
    pending = identified(gateway, call, resolve)
    if pending is not None:
        await pending


def identified(gateway: Gateway, call: Call, resolve: bool = True) -> Awaitable[None] | None:
    """``identify``'s steps as far as they need no await: None when done, else the coroutine that
    does the rest (the hooks' callers hand their implementations' awaitables over: ``hookcallers``)."""
    if call.principal is None:
        principal = gateway.hooks.first_authenticate(call)
        if type(principal) is CoroutineType:
            return _authenticated_later(gateway, call, resolve, principal)
        if principal is not None:
            call.principal = principal
    if not resolve:
        return None
    return _resolved(gateway, call)


async def _authenticated_later(gateway: Gateway, call: Call, resolve: bool, pending: Awaitable[Any]) -> None:
    principal = await pending
    if principal is not None:
        call.principal = principal
    if resolve:
        rest = _resolved(gateway, call)
        if rest is not None:
            await rest


def _resolved(gateway: Gateway, call: Call) -> Awaitable[None] | None:
    """``call.route`` from the first ``tollway_resolve`` answer (none: 404); None when done, else
    the coroutine that does the rest."""
    if call.model is NO_MODEL:
        default_model(gateway, call)
    if call.dialect == "responses":  # continuing a stored response: the caller's own only
        return _resolved_after_continued(gateway, call)
    route = gateway.hooks.first_resolve(call)
    if type(route) is CoroutineType:
        return _routed_later(call, route)
    if route is None:
        raise unknown_model(call)
    call.route = route
    return None


async def _resolved_after_continued(gateway: Gateway, call: Call) -> None:
    await gateway.stored_responses.check_continued(call)
    route = gateway.hooks.first_resolve(call)
    _routed(call, await route if type(route) is CoroutineType else route)


async def _routed_later(call: Call, pending: Awaitable[Any]) -> None:
    _routed(call, await pending)


def _routed(call: Call, route: Route | None) -> None:
    if route is None:
        raise unknown_model(call)
    call.route = route


#: What the routes put in a body without "model" (a value no client can send: it is
#: told apart by identity), replaced once the caller is known (``default_model``).
NO_MODEL = "(default model)"


def default_model(gateway: Gateway, call: Call) -> None:
    """A request without "model": the caller's own default model (a principal's
    ``default_model``, e.g. an API key's), else ``server.default_model``, else 400."""
    model = getattr(call.principal, "default_model", None) or gateway.config.server.default_model
    body = call.body
    if model is None:  # the dialect's own answer to a body without "model"
        call.model = ""  # (as asked: none; the placeholder is no model's name to record)
        del body["model"]
        if call.endpoint == "embeddings":
            validate_embeddings(body)
        else:
            gateway.dialects[call.dialect].validate(body)
        raise bad_request("'model' is required: the name of a model from GET /v1/models", "model", "missing_model")
    body["model"] = call.model = model
    call.set_body(body)  # the bytes sent upstream name the model too


def unknown_model(call: Call) -> ProxyError:
    return ProxyError(404, f"model {call.model!r} does not exist; GET /v1/models lists the models you can use",
                      param="model", code="model_not_found")

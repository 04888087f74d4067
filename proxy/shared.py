"""What plugins share, under typed keys: per-request state and gateway services.

In the style of aiohttp's ``web.AppKey``: each shared thing has one key object,
defined next to the code that produces it. Producers and consumers import that
object, so a reader can find every one of them (search for the key's name),
and a type checker knows the type of what is stored under it.

Per-request state, in ``call.state`` (a dict; the key's type types the value)::

    RESERVATION: StateKey[Reservation] = StateKey("quotas.reservation")
    call.state[RESERVATION] = Reservation(...)      # the producer
    hold = call.state.get(RESERVATION)              # a consumer: Reservation | None

Gateway services, in ``gateway.services``: one object per gateway that several
plugins use (e.g. the accounts book). The key says how the object is opened;
the gateway opens it on first use and closes it when it stops::

    ACCOUNTS = ServiceKey("accounts", open_accounts)   # async open_accounts(gateway) -> Accounts
    book = await gateway.services.open(ACCOUNTS)        # in tollway_startup: opened once, shared
    book = gateway.services.get(ACCOUNTS)               # later: the open object, or None
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger("tollway")

T = TypeVar("T")


class StateKey(Generic[T]):
    """The typed name of one thing a plugin keeps in ``call.state``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name  # for repr only: keys compare by identity

    def __repr__(self) -> str:
        return f"<StateKey {self.name}>"


class State(dict[Any, Any]):
    """``call.state``: a plain dict at run time (no cost on the hot path); to a
    type checker, a mapping from ``StateKey[T]`` to ``T``."""

    __slots__ = ()

    if TYPE_CHECKING:
        def __getitem__(self, key: StateKey[T]) -> T: ...

        def __setitem__(self, key: StateKey[T], value: T) -> None: ...

        def get(self, key: StateKey[T], default: None = None) -> T | None: ...  # type: ignore[override]


class Closable(Protocol):
    async def close(self) -> None: ...


S = TypeVar("S", bound=Closable)


class ServiceKey(Generic[S]):
    """The typed name of a gateway service and how to open it:
    ``opener(gateway)`` (async) returns the object; its ``close()`` runs when
    the gateway stops."""

    __slots__ = ("name", "opener")

    def __init__(self, name: str, opener: Callable[[Gateway], Awaitable[S]]) -> None:
        self.name = name
        self.opener = opener

    def __repr__(self) -> str:
        return f"<ServiceKey {self.name}>"


class Services:
    """A gateway's shared objects. Each is opened once, by the first plugin that
    asks (``open``), and closed by the gateway after every ``tollway_shutdown``
    hook has run (the newest first), before storage closes. So no plugin owns
    another's object, and none closes it under the others."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._open: dict[ServiceKey[Any], Any] = {}
        self._locks: dict[ServiceKey[Any], asyncio.Lock] = {}

    async def open(self, key: ServiceKey[S]) -> S:
        """The service, opened now if no one has asked for it yet. An opener may open
        other services (one lock per service); a service opened by another's opener
        is closed after it (the newest first)."""
        service: S | None = self._open.get(key)
        if service is None:
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                service = self._open.get(key)
                if service is None:
                    service = self._open[key] = await key.opener(self._gateway)
        return service

    def get(self, key: ServiceKey[S]) -> S | None:
        """The service when it is open (None before start-up or after shutdown)."""
        service: S | None = self._open.get(key)
        return service

    def __getitem__(self, key: ServiceKey[S]) -> S:
        service: S = self._open[key]
        return service

    def __contains__(self, key: object) -> bool:
        return key in self._open

    async def close(self) -> None:
        """Close every open service, the newest first (a failure is logged; the rest still close)."""
        services, self._open = list(self._open.items()), {}
        for key, service in reversed(services):
            try:
                await service.close()
            except Exception:
                log.exception("service %r failed to close", key.name)

"""Every openai / anthropic SDK client a test makes is closed by the test's end.

An async SDK client left open is closed by the garbage collector, whenever it runs: openai's
(and anthropic's) httpx wrapper then schedules its ``aclose`` on whatever loop runs at that
moment, a later test's, while its connections belong to a loop already closed; asyncio logs
"Event loop is closed" with a traceback on the later test (a test that had logged nothing failed
its no-traceback check). ``SdkClients`` records each client made (its base classes' ``__init__``
wrapped for the session), holds it until the test ends (so none is collected mid-test), and
names the ones still open then: ``sdk_clients_closed`` (autouse) fails the test on them.

A test closes its clients with ``async with`` (``with`` for a sync one) or hands them to the
``close_at_end`` fixture. conftest imports the fixtures.
"""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import anthropic._base_client
import openai
import openai._base_client
import pytest

SDK_CLIENT_BASES: tuple[type, ...] = (
    openai._base_client.SyncAPIClient, openai._base_client.AsyncAPIClient,
    anthropic._base_client.SyncAPIClient, anthropic._base_client.AsyncAPIClient,
)
SDK_PACKAGES = tuple(Path(module.__file__).parent for module in (openai, anthropic))


def made_at() -> str:
    """``file:line`` of the code that made the client: the innermost frame outside the SDKs and
    this file (the test, its fixture or helper; a copy made by ``with_options`` names its caller)."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename)
        if path != Path(__file__) and not any(path.is_relative_to(package) for package in SDK_PACKAGES):
            return f"{path.name}:{frame.lineno}"
    return "?"


class SdkClients:
    """The SDK clients made since the last ``take_open``, each with where it was made."""

    def __init__(self) -> None:
        self.made: list[tuple[Any, str]] = []

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record every SDK client constructed inside the block."""
        originals = {base: base.__dict__["__init__"] for base in SDK_CLIENT_BASES}

        def recorder(original: Callable[..., None]) -> Callable[..., None]:
            def init(client: Any, *args: Any, **kwargs: Any) -> None:
                original(client, *args, **kwargs)
                self.made.append((client, made_at()))
            return init

        for base, original in originals.items():
            base.__init__ = recorder(original)  # type: ignore[misc]
        try:
            yield
        finally:
            for base, original in originals.items():
                base.__init__ = original  # type: ignore[misc]

    def take_open(self) -> list[str]:
        """Where each client made since the last call and still open was made; forgets them all."""
        still_open = [where for client, where in self.made if not client.is_closed()]
        self.made.clear()
        return still_open


SDK_CLIENTS = SdkClients()


@pytest.fixture(scope="session", autouse=True)
def record_sdk_clients() -> Iterator[SdkClients]:
    with SDK_CLIENTS.recording():
        yield SDK_CLIENTS


@pytest.fixture(autouse=True)
def sdk_clients_closed(record_sdk_clients: SdkClients) -> Iterator[None]:
    """Fails a test that leaves an SDK client open. Autouse: torn down after the test's own
    fixtures (``close_at_end`` among them, and fixtures that close their client after ``yield``)."""
    record_sdk_clients.take_open()
    yield
    if still_open := record_sdk_clients.take_open():
        pytest.fail("SDK clients left open (close them: `async with`, or the close_at_end fixture), made at "
                    + ", ".join(still_open), pytrace=False)


@pytest.fixture
async def close_at_end() -> AsyncIterator[Callable[[Any], Any]]:
    """``client = close_at_end(openai.AsyncOpenAI(...))``: the client, closed when the test ends
    (a sync client too; not in a test driving Playwright's sync API, whose loop this fixture's
    collides with: ``request.addfinalizer(client.close)`` there)."""
    clients: list[Any] = []

    def keep(client: Any) -> Any:
        clients.append(client)
        return client

    yield keep
    for client in reversed(clients):
        closing = client.close()
        if closing is not None:
            await closing

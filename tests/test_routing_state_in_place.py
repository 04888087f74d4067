"""The routing plugin makes a request's ``RoutingState`` with its fields set in place (no
dataclass ``__init__``: a Python frame less a request). Through the real server, the state a
request is routed with is held to what ``RoutingState(chain)`` makes: every field set, the
same defaults."""

from __future__ import annotations

import dataclasses

import aiohttp
from business import biz_config, chat

from plugins.routing import ROUTING, RoutingState
from proxy import hookimpl

KEY = "sk-test-routing-state-0001"


class _Seen:
    """Each request's routing state, as the first attempt is about to be made."""

    def __init__(self) -> None:
        self.states: list[tuple[type, dict]] = []

    @hookimpl(tryfirst=True)
    def tollway_attempt(self, call, route, error) -> None:  # noqa: ANN001
        state = call.state.get(ROUTING)
        if state is not None and not self.states:
            # (as made: before routing's own attempt hook moved it along)
            self.states.append((type(state), {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}))


async def test_the_routing_state_is_what_its_class_makes(start_gateway):
    seen = _Seen()
    running = await start_gateway(biz_config(keys=[{"name": "k", "key": KEY, "credits": 10.0}]), plugins=[seen])
    async with aiohttp.ClientSession() as s:
        status, _, body = await chat(s, running, KEY)
        assert status == 200, body
    assert len(seen.states) == 1
    cls, fields = seen.states[0]
    assert cls is RoutingState
    chain = fields["chain"]
    expected = {f.name: getattr(RoutingState(chain), f.name) for f in dataclasses.fields(RoutingState)}
    # what pick did to it before the attempt: the deployment tried and held
    assert fields["tried"] == [fields["holding"].name]
    expected["tried"], expected["holding"] = fields["tried"], fields["holding"]
    assert fields == expected
